"""The bridge survives operational damage: missing partitions, destroyed keys, revocation."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from broker_bridge.mqtt import BrokerAddress
from qnect.simulator import SimDevice, Tally
from tests.broker_bridge.stream import fleet
from tests.broker_bridge.test_e2e_ingest import _last_id, _quarantine_reason
from tests.fix_bridge import count
from tests.fix_mqtt import Broker

CACHE_TTL_S = 2.5  # workers see registry changes within their 2 s directory TTL


def _device(creds: list[dict[str, Any]], model: str, url: str) -> SimDevice:
    cred = next(c for c in creds if c["model"] == model)
    device = SimDevice(cred, BrokerAddress.parse(url), Tally(), random.Random(5))
    device.connect()
    return device


def _wait_confirmed(device: SimDevice, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while device.unconfirmed:
        assert time.monotonic() < deadline, "frames not confirmed"
        time.sleep(0.05)


def test_missing_partition_is_recreated_and_the_batch_stored(
    db_dsn: str, broker: Broker, root_key_file: Path, bridge_factory: Any
) -> None:
    """A dropped partition makes the batch fail once; the worker recreates it and stores all."""
    creds = fleet(db_dsn, root_key_file, 1)
    bridge_factory(workers=1)
    plug = _device(creds, "plug", broker.url)
    try:
        today = datetime.now(UTC).date()
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE telemetry_p{today:%Y%m%d}")
        for _ in range(5):
            plug.send("telemetry", plug.telemetry())
        _wait_confirmed(plug)
        assert count(db_dsn, "SELECT count(*) FROM telemetry") == 25
        assert count(db_dsn, "SELECT count(*) FROM quarantine") == 0
    finally:
        plug.close()


def test_destroyed_key_and_revocation_reject_without_stopping_the_worker(
    db_dsn: str, broker: Broker, root_key_file: Path, bridge_factory: Any
) -> None:
    """A shredded health key, a damaged root key and a revoked device each get their reason."""
    creds = fleet(db_dsn, root_key_file, 1)
    bridge_factory(workers=1)
    scale, plug = _device(creds, "scale", broker.url), _device(creds, "plug", broker.url)
    cleaner = _device(creds, "cleaner", broker.url)
    try:
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            conn.execute(
                "DELETE FROM data_keys WHERE key_class = 4 AND owner = "
                "(SELECT binding FROM devices WHERE device_id = %s)",
                (scale.device_id,),
            )
            conn.execute(
                "UPDATE devices SET status = 'revoked', root_key_wrapped = NULL "
                "WHERE device_id = %s",
                (plug.device_id,),
            )
            conn.execute(
                "UPDATE devices SET root_key_wrapped = 'garbage'::bytea WHERE device_id = %s",
                (cleaner.device_id,),
            )
        time.sleep(CACHE_TTL_S)
        for device, reason in (
            (scale, "no_health_consent"),
            (plug, "device_revoked"),
            (cleaner, "key_unavailable"),
        ):
            mark = _last_id(db_dsn)
            device.send("telemetry", device.telemetry())
            assert _quarantine_reason(db_dsn, device.device_id, mark) == [reason]
        other = _device(creds, "thermostat", broker.url)  # the worker still serves others
        other.send("telemetry", other.telemetry())
        _wait_confirmed(other)
        other.close()
    finally:
        for d in (scale, plug, cleaner):
            d.close()
