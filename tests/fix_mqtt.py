"""Mosquitto fixtures: private brokers per test module.

* ``broker``: an *open* (anonymous) broker with the deploy queue settings, for pipeline tests
  that inject frames on any topic (hostile corpus, faults);
* ``secure_broker``: the deploy configuration itself (``deploy/mosquitto/local.conf``):
  dynamic security with one role per device, no anonymous access, a TLS listener for devices
  with certificates generated for the test; the bridge identity is synced in at start.

Each module starts its own ``mosquitto`` on free loopback ports, which also lets fault tests
kill and restart it. ``QNECT_TEST_MQTT_URL`` is not used for these.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from broker_bridge.dynsec import BRIDGE, LOADGEN, create_device, create_service, set_default_access
from broker_bridge.mqtt import BrokerAddress
from broker_bridge.mqtt_admin import DynsecAdmin
from crypto.broker_secrets import BrokerSecrets
from crypto.keys import parse_root_key
from qnect.local_broker import free_port, start_mosquitto
from qnect.local_tls import TlsFiles, ensure_local_tls

OPEN_CONFIG = Path(__file__).resolve().parent / "assets" / "mosquitto-open.conf"


@dataclass
class Broker:
    """A mosquitto process the tests own."""

    data_dir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = field(default=None)

    @property
    def url(self) -> str:
        """MQTT URL of the broker."""
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start (or restart) the broker on the same port and data directory."""
        self.proc = start_mosquitto(self.data_dir, self.port, config=OPEN_CONFIG)

    def kill9(self) -> None:
        """Kill the broker with SIGKILL (loses what it had not snapshotted)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        """Stop the broker gracefully."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@dataclass
class SecureBroker(Broker):
    """The deploy configuration: dynamic security, TLS for devices."""

    secrets: BrokerSecrets | None = None
    tls: TlsFiles | None = None
    tls_port: int = 0

    def start(self) -> None:
        """Start (or restart) with the secure template; the dynsec file survives restarts."""
        assert self.secrets is not None
        self.proc = start_mosquitto(
            self.data_dir,
            self.port,
            admin_password=self.secrets.service("admin"),
            tls=self.tls,
            tls_port=self.tls_port,
        )

    @property
    def address(self) -> BrokerAddress:
        """The internal listener, without credentials."""
        return BrokerAddress.parse(self.url)

    @property
    def device_url(self) -> str:
        """Where devices connect: TLS, trusting the test CA."""
        assert self.tls is not None
        return f"mqtts://127.0.0.1:{self.tls_port}?ca_file={self.tls.ca}"

    def admin(self) -> DynsecAdmin:
        """An admin connection."""
        assert self.secrets is not None
        return DynsecAdmin(self.address, self.secrets.service("admin"))

    def service_address(self, name: str) -> BrokerAddress:
        """The internal listener logged in as service *name*."""
        assert self.secrets is not None
        return self.address.with_login(name, self.secrets.service(name))

    def push(self, creds: Sequence[dict[str, Any]]) -> None:
        """Create devices at the broker with their own credentials."""
        commands = [c for d in creds for c in create_device(d["device_id"], d["mqtt_password"])]
        with self.admin() as admin:
            admin.run(commands)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A private, open Mosquitto with the deploy queue settings."""
    b = Broker(tmp_path_factory.mktemp("mosquitto"), free_port())
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def secure_broker(
    tmp_path_factory: pytest.TempPathFactory, root_key_file: Path
) -> Iterator[SecureBroker]:
    """A private Mosquitto with deploy/mosquitto/local.conf; bridge and loadgen synced in."""
    data = tmp_path_factory.mktemp("mosquitto-secure")
    secrets = BrokerSecrets(parse_root_key(root_key_file.read_text()))
    b = SecureBroker(data, free_port(), None, secrets, ensure_local_tls(data / "tls"), free_port())
    b.start()
    with b.admin() as admin:
        admin.run(
            [
                set_default_access(),
                *create_service(BRIDGE, secrets.service(BRIDGE)),
                *create_service(LOADGEN, secrets.service(LOADGEN)),
            ]
        )
    yield b
    b.stop()
