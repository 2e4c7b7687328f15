"""Device root-key rotation over the downlink, through the real Mosquitto and PostgreSQL."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import psycopg

from broker_bridge.mqtt import BrokerAddress
from crypto import device_keys
from qnect.simulator import SimDevice, Tally
from tests.broker_bridge.stream import Stream, assert_complete, fleet
from tests.fix_bridge import REPO, bridge_env, count, qnect, qnect_json
from tests.fix_mqtt import SecureBroker

GRACE_S = 3.0  # short, so the test can watch the old key expire


def wait_for(query: str, dsn: str, expected: int, timeout: float = 30) -> None:
    """Wait until a count query returns *expected*."""
    deadline = time.monotonic() + timeout
    while (got := count(dsn, query)) != expected:
        assert time.monotonic() < deadline, f"{query!r} stayed {got}, not {expected}"
        time.sleep(0.1)


def by_version(dsn: str, version: int) -> int:
    """Devices with at least one stored frame of a session under root-key *version*."""
    query = (
        "SELECT count(DISTINCT f.device_id) FROM frames f JOIN device_sessions s "
        "USING (device_id, epoch) WHERE s.drk_version = "
    )
    return count(dsn, query + str(int(version)))


def test_fleet_rotation_during_a_live_stream_rejects_nothing(
    db_dsn: str, secure_broker: SecureBroker, root_key_file: Path, secure_bridge_factory: Any
) -> None:
    """200 devices rotate mid-stream: no reject, all on version 2, every frame stored once."""
    creds = fleet(db_dsn, root_key_file, 40)
    secure_broker.push(creds)  # every device connects with its own credentials, over TLS
    secure_bridge_factory(workers=2)
    stream = Stream(
        creds, secure_broker.device_url, messages=150, rate=2000, seed=11, confirm_timeout_s=120
    )
    stream.start()
    wait_for("SELECT count(*) FROM device_state WHERE online", db_dsn, 200)
    env = bridge_env(db_dsn, secure_broker, root_key_file)
    started = time.monotonic()
    result = qnect_json("keys", "rotate", "--all", "--batch", "100", env=env)
    took = time.monotonic() - started
    assert result == {"total": 200, "rotated": 200, "pending": 0, "skipped": 0}
    assert stream.is_alive(), f"the stream ended before the rotation did ({took:.1f} s)"
    summary = stream.result()
    assert_complete(db_dsn, creds, summary)
    with psycopg.connect(db_dsn) as conn:
        rejects = conn.execute(
            "SELECT kind, reason, detail, count(*) FROM quarantine GROUP BY 1, 2, 3"
        ).fetchall()
    assert rejects == []
    assert count(db_dsn, "SELECT count(*) FROM devices WHERE drk_version = 2") == 200
    # Kept decrypt-only for the grace period (an hour by default), not destroyed yet.
    assert count(db_dsn, "SELECT count(*) FROM devices WHERE drk_prev_wrapped IS NOT NULL") == 200
    # Rotated mid-stream: every device has frames stored under sessions of both keys.
    assert by_version(db_dsn, 1) == 200
    assert by_version(db_dsn, 2) == 200
    current = count(
        db_dsn,
        "SELECT count(*) FROM devices d JOIN device_sessions s "
        "ON s.device_id = d.device_id AND s.epoch = d.current_epoch WHERE s.drk_version = 2",
    )
    assert current == 200, "a device did not re-key under its new root key"


def _frame(device: SimDevice, keys: device_keys.SessionKeys, counter: int) -> bytes:
    body = msgpack.packb({"t": int(time.time() * 1000), "d": device.telemetry()})
    return device_keys.seal_frame(
        keys.up,
        epoch=keys.epoch,
        counter=counter,
        plaintext=body,
        device_id=device.device_id,
        topic=device.topic("telemetry"),
    )


def _reason(dsn: str, device_id: str, reason: str) -> str:
    return (
        f"SELECT count(*) FROM quarantine WHERE device_id = '{device_id}' "  # noqa: S608
        f"AND reason = '{reason}'"
    )


def test_old_root_key_is_unusable_after_the_grace_period(
    db_dsn: str, secure_broker: SecureBroker, root_key_file: Path, secure_bridge_factory: Any
) -> None:
    """Old-key session frames pass in the grace, then drk_destroyed; old-key kx: drk_superseded."""
    cred = next(c for c in fleet(db_dsn, root_key_file, 1) if c["model"] == "plug")
    secure_broker.push([cred])
    secure_bridge_factory(workers=1, QNECT_DRK_GRACE_S=str(GRACE_S))
    device = SimDevice(
        cred, BrokerAddress.parse(secure_broker.device_url), Tally(), random.Random(5)
    )
    device.connect()
    old = device.sessions[device.epoch]
    old_kx_key = device_keys.kx_key(bytes.fromhex(cred["root_key"]), device.device_id)
    env = bridge_env(db_dsn, secure_broker, root_key_file)
    with subprocess.Popen(
        [sys.executable, "-m", "qnect", "keys", "rotate", "--device", device.device_id],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    ) as rotate:
        while rotate.poll() is None:  # the device's main loop: answer the offer, re-key
            device.rekey_step()
            time.sleep(0.02)
        out, _ = rotate.communicate()
    assert json.loads(out.splitlines()[-1])["rotated"] == 1
    committed = time.monotonic()
    device.send("telemetry", device.telemetry())  # adopts the session under the new key
    assert device.drk_version == 2
    assert device.epoch > old.epoch

    # Within the grace: a frame of the session under the old key is still accepted.
    device.publish(device.topic("telemetry"), _frame(device, old, 1_000_000))
    wait_for(
        f"SELECT count(*) FROM frames WHERE device_id = '{device.device_id}' "  # noqa: S608
        f"AND epoch = {old.epoch} AND counter = 1000000",
        db_dsn,
        1,
    )
    time.sleep(max(0.0, committed + GRACE_S + 0.5 - time.monotonic()))

    # After it: the old key opens nothing, though its blob is not yet destroyed.
    device.publish(device.topic("telemetry"), _frame(device, old, 1_000_001))
    wait_for(_reason(db_dsn, device.device_id, "drk_destroyed"), db_dsn, 1)
    request = device_keys.encode_kx_request(
        old_kx_key,
        device.device_id,
        drk_version=1,
        ts_ms=int(time.time() * 1000),
        cid=1,
        device_nonce=bytes(range(16)),
    )
    device.publish(device.topic("kx"), request)
    wait_for(_reason(db_dsn, device.device_id, "drk_superseded"), db_dsn, 1)

    assert qnect_json("keys", "destroy-expired", env=env)["destroyed"] >= 1
    with psycopg.connect(db_dsn) as conn:
        row = conn.execute(
            "SELECT drk_version, drk_prev_version, drk_prev_wrapped IS NULL, drk_next_version "
            "FROM devices WHERE device_id = %s",
            (device.device_id,),
        ).fetchone()
    assert row == (2, 1, True, None)

    # The new key keeps working.
    device.send("telemetry", device.telemetry())
    wait_for(
        f"SELECT count(*) FROM frames f JOIN device_sessions s USING (device_id, epoch) "  # noqa: S608
        f"WHERE f.device_id = '{device.device_id}' AND s.drk_version = 2",
        db_dsn,
        2,
    )
    device.close()
    assert qnect("keys", "rotate", "--device", "x", "--model", "plug", env=env).returncode == 2
