"""Mosquitto fixtures: a private broker per test module with the deploy configuration.

Tests need the broker configuration of ``deploy/`` (unlimited queue for the bridge session,
Receive Maximum honoured), so each module starts its own ``mosquitto`` on a free loopback port,
which also lets fault tests kill and restart it. ``QNECT_TEST_MQTT_URL`` is not used for these.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from qnect.local_broker import free_port, start_mosquitto


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
        self.proc = start_mosquitto(self.data_dir, self.port)

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


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A private Mosquitto with deploy/mosquitto/local.conf."""
    b = Broker(tmp_path_factory.mktemp("mosquitto"), free_port())
    b.start()
    yield b
    b.stop()
