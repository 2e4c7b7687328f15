"""Bridge fixtures: ``qnect bridge`` as a real subprocess tree, with helpers to kill workers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from qnect.bridge import worker_pids
from qnect.local_broker import free_port, wait_listening
from tests.fix_mqtt import Broker, SecureBroker

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Bridge:
    """A running ``qnect bridge`` supervisor."""

    env: dict[str, str]
    workers: int
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def start(self) -> None:
        """Start the supervisor and its workers."""
        assert self.log_path is not None
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "qnect", "bridge", "--workers", str(self.workers)],
                env=self.env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def worker_pids(self) -> list[int]:
        """PIDs of the live worker processes."""
        assert self.proc is not None
        return worker_pids(self.proc.pid)

    def wait_workers(self, timeout: float = 20) -> list[int]:
        """Wait until every worker process is up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self.worker_pids()
            if len(pids) >= self.workers:
                return pids
            time.sleep(0.1)
        raise TimeoutError("workers did not start")

    def kill9_worker(self) -> int:
        """SIGKILL one worker; the supervisor restarts it."""
        pid = self.wait_workers()[0]
        os.kill(pid, signal.SIGKILL)
        # SIGKILL is asynchronous: until the process is dead (a zombie, or reaped) it still
        # counts as a live worker, and the next wait_workers() would return it again.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                break
            if state == "Z":
                break
            time.sleep(0.01)
        return pid

    def stop(self) -> int:
        """SIGTERM the supervisor; returns its exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self.proc = None
        return code


def bridge_env(db_dsn: str, broker: Broker, root_key_file: Path, **extra: str) -> dict[str, str]:
    """Environment for qnect commands against the test services."""
    env = dict(os.environ)
    env.update(
        QNECT_DATABASE_URL=db_dsn,
        QNECT_MQTT_URL=broker.url,
        QNECT_ROOT_KEY_FILE=str(root_key_file),
        # Only the secure broker has dynamic security for the registry to keep in step.
        QNECT_BROKER_DYNSEC="true" if isinstance(broker, SecureBroker) else "false",
    )
    env.update(extra)
    return env


def _factory(db_dsn: str, broker: Broker, root_key_file: Path, tmp_path: Path) -> Iterator[Any]:
    made: list[Bridge] = []

    def make(workers: int = 1, **extra: str) -> Bridge:
        b = Bridge(bridge_env(db_dsn, broker, root_key_file, **extra), workers)
        b.log_path = tmp_path / f"bridge{len(made)}.log"
        b.start()
        b.wait_workers()
        made.append(b)
        return b

    yield make
    for b in made:
        if b.proc is not None:
            b.stop()


@pytest.fixture
def bridge_factory(
    db_dsn: str, broker: Broker, root_key_file: Path, tmp_path: Path
) -> Iterator[type[Bridge] | object]:
    """Make bridges against the module's database and open broker; stops them at the end."""
    yield from _factory(db_dsn, broker, root_key_file, tmp_path)


@pytest.fixture
def secure_bridge_factory(
    db_dsn: str, secure_broker: SecureBroker, root_key_file: Path, tmp_path: Path
) -> Iterator[type[Bridge] | object]:
    """Make bridges against the module's secure broker (they log in as ``bridge``)."""
    yield from _factory(db_dsn, secure_broker, root_key_file, tmp_path)


def count(dsn: str, query: str) -> int:
    """Run a scalar count query."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query.encode()).fetchone()
        return int(row[0]) if row else 0


def qnect(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the qnect CLI as a user would (not raising on failure)."""
    return subprocess.run(
        [sys.executable, "-m", "qnect", *args],
        env=env or dict(os.environ),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )


def qnect_json(*args: str, env: dict[str, str]) -> Any:
    """Run a qnect command that must succeed and return its last stdout line as JSON."""
    out = qnect(*args, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def api_process(env: dict[str, str]) -> Iterator[str]:
    """Run `qnect api` on a free loopback port; yields its base URL; SIGTERM must exit 0."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "qnect", "api", "--port", str(port)],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(proc, port, what="qnect api", timeout_s=20)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        code = proc.wait(10)
    assert code == 0, f"qnect api exited {code} on SIGTERM"
