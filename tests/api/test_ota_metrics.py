"""``qnect_ota_devices``: devices per OTA state of running and paused campaigns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from api.app import create_app
from api.metrics import OTA_DEVICES
from crypto.keys import parse_root_key
from device_registry.model import RegistryKeys
from device_registry.postgres import provision
from device_registry.postgres_ota import ota_state_counts


def _campaign(conn: psycopg.Connection[tuple[Any, ...]], status: str, version: str) -> int:
    artifact = conn.execute(
        "INSERT INTO firmware_artifacts (version, seq, models, min_version, size, sha256, "
        "manifest, signature, content, created_by) VALUES (%s, 1, '{plug}', '0.0.0', 1, %s, "
        "'{}', %s, 'x', 'test') RETURNING artifact_id",
        (version, bytes(32), bytes(64)),
    ).fetchone()
    assert artifact is not None
    row = conn.execute(
        "INSERT INTO ota_campaigns (name, artifact_id, model, from_min, from_max, waves, "
        "failure_threshold, status, created_by) VALUES ('c', %s, 'plug', '0.0.0', '9.9.9', "
        "'{100}', 0.1, %s, 'test') RETURNING campaign_id",
        (artifact[0], status),
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_counts_cover_active_campaigns_only(db_dsn: str, root_key_file: Path) -> None:
    """Running and paused campaigns count per state; finished ones do not."""
    keys = RegistryKeys.from_root_key(parse_root_key(root_key_file.read_text()))
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        devices = [c.device_id for c in provision(conn, keys, "plug", 6)]
        running = _campaign(conn, "running", "9.0.1")
        paused = _campaign(conn, "paused", "9.0.2")
        halted = _campaign(conn, "halted", "9.0.3")
        rows = [
            (running, devices[0], "downloading"),
            (running, devices[1], "downloading"),
            (running, devices[2], "succeeded"),
            (paused, devices[3], "offered"),
            (halted, devices[4], "failed"),
            (halted, devices[5], "cancelled"),
        ]
        for campaign, device, state in rows:
            conn.execute(
                "INSERT INTO ota_devices (campaign_id, device_id, wave, state) "
                "VALUES (%s, %s, 0, %s)",
                (campaign, device, state),
            )
    assert ota_state_counts(db_dsn) == {"downloading": 2, "succeeded": 1, "offered": 1}


def test_metrics_expose_the_counts_and_survive_a_failing_source() -> None:
    """One sample per state; a source that raises yields no samples, not a 500."""
    client = TestClient(create_app())
    try:
        OTA_DEVICES.source = lambda: {"downloading": 3, "failed": 1}
        OTA_DEVICES._at = -1e9  # drop the cache
        text = client.get("/metrics").text
        assert 'qnect_ota_devices{state="downloading"} 3.0' in text
        assert 'qnect_ota_devices{state="failed"} 1.0' in text

        def broken() -> dict[str, int]:
            raise OSError("database away")

        OTA_DEVICES.source = broken
        OTA_DEVICES._at = -1e9
        answer = client.get("/metrics")
        assert answer.status_code == 200
        assert "qnect_ota_devices{" not in answer.text
    finally:
        OTA_DEVICES.source = None
        OTA_DEVICES._at = -1e9
