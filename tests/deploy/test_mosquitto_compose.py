"""deploy/mosquitto/compose.conf: derived from the production config, and a real Mosquitto runs it.

The container paths are moved into a temporary directory (the only change), the broker serves
the dynsec admin over the TLS listener, and the compose health check tells a running broker
from a stopped one.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from broker_bridge.dynsec import set_default_access
from broker_bridge.mqtt import BrokerAddress
from broker_bridge.mqtt_admin import DynsecAdmin
from crypto.broker_secrets import BrokerSecrets
from qnect.local_broker import dynsec_plugin, free_port, init_dynsec_file, wait_listening
from qnect.local_tls import ensure_local_tls
from tests.deploy.conftest import DEPLOY, load_yaml

# Directives whose values are paths, addresses or destinations: allowed to differ.
LOCAL_VALUES = {
    "listener",
    "certfile",
    "keyfile",
    "cafile",
    "plugin",
    "plugin_opt_config_file",
    "persistence_location",
    "log_dest",
}


def _directives(path: Path) -> list[tuple[str, str]]:
    pairs = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            key, _, value = line.partition(" ")
            pairs.append((key, value.strip()))
    return pairs


def test_compose_config_differs_from_production_only_in_paths() -> None:
    """Compose config differs from production only in paths."""
    prod = _directives(DEPLOY / "mosquitto" / "mosquitto.conf")
    comp = _directives(DEPLOY / "mosquitto" / "compose.conf")
    assert [k for k, _ in prod] == [k for k, _ in comp]
    for (key, prod_value), (_, comp_value) in zip(prod, comp, strict=True):
        if key not in LOCAL_VALUES:
            assert prod_value == comp_value, key
    settings = dict(comp)
    assert settings["allow_anonymous"] == "false"
    assert settings["max_queued_messages"] == "0"
    assert settings["keyfile"] == "/run/secrets/mqtt_tls_key"


def _healthcheck_command(port: int) -> str:
    compose = load_yaml(DEPLOY / "compose.yaml")
    test = compose["services"]["mosquitto"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    command = str(test[1]).replace("$$", "$")
    assert "-p 1883 " in command
    return command.replace("-p 1883 ", f"-p {port} ")


def _run_check(command: str) -> int:
    return subprocess.run(["sh", "-c", command], check=False, timeout=10).returncode


@pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto not installed")
def test_compose_config_starts_serves_tls_and_passes_its_healthcheck(tmp_path: Path) -> None:
    """Compose config starts serves tls and passes its healthcheck."""
    text = (DEPLOY / "mosquitto" / "compose.conf").read_text()
    tls = ensure_local_tls(tmp_path / "certs")
    port, tls_port = free_port(), free_port()
    replaced = {
        r"^listener 1883$": f"listener {port} 127.0.0.1",
        r"^listener 8883$": f"listener {tls_port} 127.0.0.1",
        r"/mosquitto/certs/server\.crt": str(tls.cert),
        r"/run/secrets/mqtt_tls_key": str(tls.key),
        r"/mosquitto/certs/ca\.crt": str(tls.ca),
        r"/usr/lib/mosquitto_dynamic_security\.so": dynsec_plugin(),
        r"/mosquitto/data/": f"{tmp_path}/",
        r"^log_dest stdout$": f"log_dest file {tmp_path}/mosquitto.log",
    }
    for pattern, new in replaced.items():
        text, count = re.subn(pattern, new, text, flags=re.MULTILINE)
        assert count >= 1, pattern
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"user {getpass.getuser()}\n" + text)
    secrets = BrokerSecrets(os.urandom(32))
    init_dynsec_file(tmp_path / "dynsec.json", secrets.service("admin"))
    check = _healthcheck_command(port)
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL)
    try:
        wait_listening(proc, port, what="mosquitto", timeout_s=10)
        assert _run_check(check) == 0, "healthy broker reported unhealthy"
        address = BrokerAddress("127.0.0.1", tls_port, tls=True, ca_file=str(tls.ca))
        with DynsecAdmin(address, secrets.service("admin")) as admin:
            admin.run([set_default_access()])
    finally:
        proc.terminate()
        proc.wait(10)
    assert _run_check(check) != 0, "stopped broker reported healthy"
