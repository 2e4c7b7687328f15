"""End-to-end ingest through the real Mosquitto and PostgreSQL: completeness, rejects, secrecy."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import msgpack
import psycopg
import pytest

from broker_bridge.mqtt import BrokerAddress
from crypto.envelope import read_header
from qnect.simulator import SimDevice, Tally
from tests.broker_bridge.stream import Stream, assert_complete, fleet
from tests.fix_bridge import bridge_env, count, qnect, qnect_json
from tests.fix_mqtt import Broker


def test_fleet_of_200_arrives_completely_and_bad_frames_are_quarantined(
    db_dsn: str, broker: Broker, root_key_file: Path, bridge_factory: Any
) -> None:
    """200 devices x 50 frames, 5% bad: good ones stored once, bad ones quarantined by reason."""
    creds = fleet(db_dsn, root_key_file, 40)
    bridge_factory(workers=2)
    stream = Stream(
        creds, broker.url, messages=50, bad_fraction=0.05, seed=7, confirm_timeout_s=120
    )
    stream.start()
    summary = stream.result()
    assert summary["devices"] == 200
    assert summary["sent"] >= 200 * 52
    assert_complete(db_dsn, creds, summary)
    env = bridge_env(db_dsn, broker, root_key_file)
    stats = qnect_json("stats", "--json", env=env)
    assert stats["accepted"] == summary["sent"] - summary["sent_bad"]
    assert stats["rejected"] == summary["bad_by_reason"]
    assert set(summary["bad_by_reason"]) >= {"bad_tag", "replay", "malformed_frame", "oversized"}
    one = next(c["device_id"] for c in creds)
    counts = qnect_json("stats", "--json", "--device", one, env=env)
    assert counts["device_id"] == one
    assert counts["accepted"] == count(
        db_dsn,
        f"SELECT count(*) FROM frames WHERE device_id = '{one}'",  # noqa: S608
    )
    # No plaintext personal data in quarantine: no MAC of any device appears in any column.
    with psycopg.connect(db_dsn) as conn:
        rows = conn.execute("SELECT device_id, kind, reason, detail FROM quarantine").fetchall()
    text = json.dumps(rows)
    assert not any(c["mac"] in text for c in creds)


def test_personal_fields_are_ciphertext_and_metrics_are_numbers(db_dsn: str) -> None:
    """Health, location, media and network fields are envelopes; plain metrics are numbers."""
    with psycopg.connect(db_dsn) as conn:
        for table in ("health_readings", "location_readings", "media_readings", "device_info"):
            rows = conn.execute(f"SELECT enc FROM {table} LIMIT 50").fetchall()  # noqa: S608
            assert rows, f"{table} is empty"
            for (enc,) in rows:
                header = read_header(bytes(enc))  # a v1 envelope, not a msgpack value
                assert header.key_version == 1
                with pytest.raises(ValueError):
                    msgpack.unpackb(bytes(enc))
        types = conn.execute(
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_name = 'telemetry' AND column_name = 'value'"
        ).fetchone()
        assert types == ("double precision",)
        sample = conn.execute("SELECT value FROM telemetry LIMIT 1").fetchone()
        assert sample is not None
        assert isinstance(sample[0], float)


def _connected(cred: dict[str, Any], url: str) -> SimDevice:
    device = SimDevice(cred, BrokerAddress.parse(url), Tally(), __import__("random").Random(1))
    device.connect()
    return device


def _quarantine_reason(dsn: str, device_id: str, after: int, timeout: float = 15) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with psycopg.connect(dsn) as conn:
            rows = conn.execute(
                "SELECT reason FROM quarantine WHERE device_id = %s AND id > %s ORDER BY id",
                (device_id, after),
            ).fetchall()
        if rows:
            return [r[0] for r in rows]
        time.sleep(0.1)
    return []


def _last_id(dsn: str) -> int:
    return count(dsn, "SELECT coalesce(max(id), 0) FROM quarantine")


def test_tampered_frames_get_their_own_reasons(
    db_dsn: str, broker: Broker, root_key_file: Path, bridge_factory: Any
) -> None:
    """Replay, flipped bit, another device's topic and a stale epoch are rejected distinctly."""
    creds = fleet(db_dsn, root_key_file, 1)
    bridge_factory(workers=1, QNECT_EPOCH_GRACE_S="0")
    a, b = _connected(creds[0], broker.url), _connected(creds[1], broker.url)
    try:
        body = msgpack.packb({"t": int(time.time() * 1000), "d": a.telemetry()})
        _, frame = a.seal("telemetry", body)
        topic = a.topic("telemetry")

        def expect(payload: bytes, on_topic: str, device_id: str, reason: str) -> None:
            mark = _last_id(db_dsn)
            a.publish(on_topic, payload)
            assert _quarantine_reason(db_dsn, device_id, mark) == [reason]

        a.publish(topic, frame)
        # Wait for *this* frame: earlier tests of the module left other frames in the table,
        # and a replay sent while the original is still in flight is not yet a replay.
        stored_a = f"SELECT count(*) FROM frames WHERE device_id = '{a.device_id}'"  # noqa: S608
        deadline = time.monotonic() + 15
        while count(db_dsn, stored_a) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        expect(frame, topic, a.device_id, "replay")
        flipped = bytearray(frame)
        flipped[-3] ^= 0x01
        expect(bytes(flipped), topic, a.device_id, "bad_tag")
        _, other = a.seal("telemetry", body)
        expect(other, b.topic("telemetry"), b.device_id, "key_mismatch")
        _, stale = a.seal("telemetry", body)
        a.reconnect()  # new key exchange: epoch + 1; grace 0 makes the old epoch stale at once
        time.sleep(2.5)  # other workers see another worker's re-key within the 2 s cache TTL
        expect(stale, topic, a.device_id, "stale_epoch")
    finally:
        a.close()
        b.close()


def test_simulate_and_stats_commands_agree(
    db_dsn: str, broker: Broker, root_key_file: Path, bridge_factory: Any, tmp_path: Path
) -> None:
    """The CLI contract: provision → simulate --json → stats --json add up."""
    env = bridge_env(db_dsn, broker, root_key_file)
    before = count(db_dsn, "SELECT count(*) FROM frames")
    rejected_before = count(db_dsn, "SELECT coalesce(sum(occurrences), 0) FROM quarantine")
    creds = tmp_path / "creds.json"
    qnect_json("migrate", env=env)
    made = qnect(
        "device", "provision", "--model", "thermostat", "--count", "5", "--out", str(creds), env=env
    )
    assert made.returncode == 0, made.stderr
    assert creds.stat().st_mode & 0o077 == 0
    bridge = bridge_factory(workers=1)
    summary = qnect_json(
        "simulate",
        "--credentials",
        str(creds),
        "--messages",
        "20",
        "--bad-fraction",
        "0.2",
        "--json",
        env=env,
    )
    stats = qnect_json("stats", "--json", env=env)
    assert stats["accepted"] - before == summary["sent"] - summary["sent_bad"]
    assert stats["rejected_total"] - rejected_before == summary["sent_bad"]
    assert summary["confirmed"] == summary["sent"] - summary["sent_bad"]
    assert bridge.stop() == 0  # SIGTERM: finish and ack the batch in hand, exit 0
