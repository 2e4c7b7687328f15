"""Rate limits end to end: a flushed offline buffer is accepted, a live flood is limited."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg

from tests.broker_bridge.stream import fleet
from tests.broker_bridge.test_robustness import _device, _wait_confirmed
from tests.fix_bridge import bridge_env, qnect_json
from tests.fix_mqtt import SecureBroker

BUFFERED = 600  # ten minutes of readings at 1 Hz
FLOOD = 300


def _frames(dsn: str, device_id: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM frames WHERE device_id = %s", (device_id,))
        return int(row.fetchone()[0])  # type: ignore[index]


def _limited(dsn: str, device_id: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(occurrences), 0) FROM quarantine "
            "WHERE device_id = %s AND reason = 'rate_limited'",
            (device_id,),
        )
        return int(row.fetchone()[0])  # type: ignore[index]


def test_buffered_backlog_is_accepted_while_a_flood_is_limited(
    db_dsn: str, secure_broker: SecureBroker, root_key_file: Path, secure_bridge_factory: Any
) -> None:
    """A device back after 10 minutes offline flushes all; a flooding device sees rate_limited."""
    creds = fleet(db_dsn, root_key_file, 1)
    secure_broker.push(creds)
    limits = {"QNECT_RATE_LIVE_PER_S": "5", "QNECT_RATE_LIVE_BURST": "20"}
    secure_bridge_factory(workers=1, **limits)
    returning = _device(creds, "plug", secure_broker.device_url)
    flooder = _device(creds, "thermostat", secure_broker.device_url)
    try:
        connected_ms = int(time.time() * 1000)
        for i in range(BUFFERED):  # stamped before this connection: backlog
            stamp = connected_ms - 2_000 - (BUFFERED - i) * 1_000
            returning.send("telemetry", returning.telemetry(), ts_ms=stamp)
        _wait_confirmed(returning, timeout=60)
        started = time.monotonic()
        for _ in range(FLOOD):
            flooder.send("telemetry", flooder.telemetry())
        elapsed = time.monotonic() - started
        flood_id = flooder.device_id
        deadline = time.monotonic() + 20
        while _frames(db_dsn, flood_id) + _limited(db_dsn, flood_id) < FLOOD:
            assert time.monotonic() < deadline, "flood not fully accounted for"
            time.sleep(0.1)
        allowed_at_most = 20 + 5 * (time.monotonic() - started + elapsed) + 5
        assert 20 <= _frames(db_dsn, flood_id) <= allowed_at_most
    finally:
        returning.close()
        flooder.close()
    assert _frames(db_dsn, returning.device_id) == BUFFERED
    with psycopg.connect(db_dsn) as conn:
        quarantined = conn.execute(
            "SELECT count(*) FROM quarantine WHERE device_id = %s", (returning.device_id,)
        ).fetchone()
    assert quarantined == (0,)
    env = bridge_env(db_dsn, secure_broker, root_key_file)
    stats = qnect_json("stats", "--device", flooder.device_id, "--json", env=env)
    assert stats["rejected"]["rate_limited"] == _limited(db_dsn, flooder.device_id) > 0
    assert stats["rate_limited_by_limit"] == {"live": stats["rejected"]["rate_limited"]}
