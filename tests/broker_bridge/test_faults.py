"""Faults injected with real parts under a live stream: nothing acknowledged is lost or doubled."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from qnect.local_broker import free_port
from tests.broker_bridge.stream import Stream, assert_complete, fleet
from tests.fix_mqtt import Broker
from tests.qnect.ops import get, wait_status

pytestmark = pytest.mark.fault

PG_RESTART = os.environ.get(
    "QNECT_TEST_PG_RESTART", "pg_ctlcluster --skip-systemctl-redirect 15 main restart"
)


def stored(dsn: str) -> int:
    """Frames stored so far (0 while the database is unreachable)."""
    try:
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            row = conn.execute("SELECT count(*) FROM frames").fetchone()
            return int(row[0]) if row else 0
    except psycopg.OperationalError:
        return 0


def wait_stored(dsn: str, at_least: int, stream: Stream, timeout: float = 120) -> None:
    """Wait until *at_least* frames are stored (the stream is still running)."""
    deadline = time.monotonic() + timeout
    while stored(dsn) < at_least:
        assert stream.is_alive(), "stream ended before the fault could be injected"
        assert time.monotonic() < deadline, "stream too slow"
        time.sleep(0.05)


def test_worker_sigkilled_ten_times_loses_and_doubles_nothing(
    db_dsn: str, broker: Broker, root_key_file: Path, bridge_factory: Any
) -> None:
    """SIGKILL of a bridge worker, 10 times during a 50k-frame stream: 0 lost, 0 duplicated."""
    creds = fleet(db_dsn, root_key_file, 40)
    bridge = bridge_factory(workers=2)
    stream = Stream(creds, broker.url, messages=250, seed=11, confirm_timeout_s=180)
    stream.start()
    killed = []
    for at in range(3_000, 48_000, 4_500):
        wait_stored(db_dsn, at, stream)
        killed.append(bridge.kill9_worker())
        bridge.wait_workers()  # the supervisor restarts it
    summary = stream.result()
    assert summary["sent"] >= 50_000
    assert len(set(killed)) == 10  # each kill hit a live (restarted) worker process
    assert_complete(db_dsn, creds, summary)


def test_postgres_restart_mid_stream_recovers_by_itself(
    db_dsn: str, broker: Broker, root_key_file: Path, bridge_factory: Any
) -> None:
    """PostgreSQL restarted under load: workers reconnect alone; 0 lost, 0 duplicated."""
    before = stored(db_dsn)
    creds = fleet(db_dsn, root_key_file, 40)
    bridge_factory(workers=2)
    stream = Stream(creds, broker.url, messages=100, seed=12, confirm_timeout_s=180)
    stream.start()
    wait_stored(db_dsn, before + 5_000, stream)
    subprocess.run(shlex.split(PG_RESTART), check=True, timeout=120)
    summary = stream.result()
    assert_complete_after(db_dsn, creds, summary, before)


def test_broker_killed_nine_loses_nothing_thanks_to_receipts(
    db_dsn: str, broker: Broker, root_key_file: Path, bridge_factory: Any
) -> None:
    """Mosquitto kill -9 and restart mid-stream: devices resend unconfirmed frames; 0 lost."""
    before = stored(db_dsn)
    creds = fleet(db_dsn, root_key_file, 40)
    bridge_factory(workers=2)
    stream = Stream(
        creds, broker.url, messages=100, seed=13, confirm_timeout_s=180, resend_after_s=5
    )
    stream.start()
    wait_stored(db_dsn, before + 5_000, stream)
    broker.kill9()
    time.sleep(1.0)
    broker.start()
    summary = stream.result()
    assert summary["reconnects"] > 0
    assert_complete_after(db_dsn, creds, summary, before)


def _earlier(dsn: str, creds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Credentials-like stubs (id and model) of devices provisioned by earlier tests."""
    mine = {c["device_id"] for c in creds}
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT device_id, model FROM devices").fetchall()
    return [{"device_id": d, "model": m} for d, m in rows if d not in mine]


def _bridge_via(bridge_factory: Any, dsn: str, workers: int = 2) -> Any:
    return bridge_factory(workers=workers, QNECT_DATABASE_URL=dsn)


def test_database_connections_cut_by_a_proxy_lose_nothing(
    db_dsn: str, broker: Broker, root_key_file: Path, bridge_factory: Any, pg_proxy: Any
) -> None:
    """A TCP proxy resets the workers' database connections 5 times mid-stream: 0 lost."""
    proxy, via = pg_proxy
    before = stored(db_dsn)
    creds = fleet(db_dsn, root_key_file, 40)
    _bridge_via(bridge_factory, via)
    stream = Stream(creds, broker.url, messages=100, seed=14, confirm_timeout_s=180)
    stream.start()
    cuts = 0
    for at in range(2_000, 17_000, 3_000):
        wait_stored(db_dsn, before + at, stream)
        cuts += proxy.cut()
    assert cuts >= 5
    summary = stream.result()
    assert_complete_after(db_dsn, creds, summary, before)


def test_slow_database_slows_intake_and_drops_nothing(
    db_dsn: str, broker: Broker, root_key_file: Path, bridge_factory: Any, pg_proxy: Any
) -> None:
    """25 ms added to every database reply: batches grow, the broker holds the rest, 0 lost."""
    proxy, via = pg_proxy
    before = stored(db_dsn)
    creds = fleet(db_dsn, root_key_file, 40)
    bridge = _bridge_via(bridge_factory, via, workers=1)
    proxy.delay_s = 0.025
    stream = Stream(creds, broker.url, messages=100, seed=15, confirm_timeout_s=240)
    stream.start()
    summary = stream.result()
    assert_complete_after(db_dsn, creds, summary, before)
    batches = [
        line for line in bridge.log_path.read_text().splitlines() if '"bridge.batch"' in line
    ]
    biggest = max(int(line.split('"messages": ')[1].split(",")[0]) for line in batches)
    assert biggest > 500  # backpressure: the slow commit let the backlog build up in the broker


def assert_complete_after(
    dsn: str, creds: list[dict[str, Any]], summary: dict[str, Any], before: int
) -> None:
    """``assert_complete`` for a module database that already held *before* frames."""
    summary = {**summary, "sent": summary["sent"] + before}
    summary["confirmed"] += before
    assert_complete(dsn, creds + _earlier(dsn, creds), summary)


def test_sigterm_mid_stream_acks_what_it_stored_and_a_new_bridge_takes_over(
    db_dsn: str, broker: Broker, root_key_file: Path, bridge_factory: Any
) -> None:
    """SIGTERM mid-stream: readiness drops first, exit 0 within 10 s; a new bridge resumes; 0 lost.

    Every frame is confirmed after the restart and stored exactly once.
    """
    before = stored(db_dsn)
    creds = fleet(db_dsn, root_key_file, 40)
    port = free_port()
    bridge = bridge_factory(workers=2, QNECT_METRICS_PORT=str(port))
    wait_status(f"http://127.0.0.1:{port}/readyz")
    stream = Stream(creds, broker.url, messages=100, seed=16, confirm_timeout_s=180)
    stream.start()
    wait_stored(db_dsn, before + 5_000, stream)
    assert bridge.proc is not None
    proc = bridge.proc
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    answers = set()
    while proc.poll() is None and time.monotonic() - started < 15:
        try:
            answers.add(get(f"http://127.0.0.1:{port}/readyz", timeout=1)[0])
        except OSError:
            answers.add(0)  # the endpoint is gone: the supervisor is exiting
        time.sleep(0.02)
    code = proc.wait(15)
    elapsed = time.monotonic() - started
    bridge.proc = None
    assert code == 0
    assert elapsed < 10, f"the bridge took {elapsed:.1f} s to stop"
    assert 503 in answers, answers
    assert stream.is_alive(), "the stream must still be running when the new bridge starts"
    bridge_factory(workers=2)
    assert_complete_after(db_dsn, creds, stream.result(), before)
    log = bridge.log_path.read_text()
    assert '"killed": 0' in log, "a worker had to be killed"
