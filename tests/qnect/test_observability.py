"""Metrics and logs after a simulated run: the series of deploy/metrics.md, no personal data.

One module-wide run: ``qnect bridge --workers 2`` with ``QNECT_METRICS_PORT``, ``qnect api``,
and a fleet of 200 devices streaming with 5 % bad frames through the real Mosquitto and
PostgreSQL. The tests read the two /metrics endpoints, ``qnect stats`` and the captured logs.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from privacy.audit import AuditEvent, AuditKeys
from privacy.postgres_audit import write_event
from qnect.api_server import build_app
from qnect.local_broker import free_port
from qnect.settings import Settings
from tests.broker_bridge.stream import Stream, assert_complete, fleet
from tests.fix_bridge import Bridge, bridge_env, qnect_json
from tests.fix_mqtt import Broker
from tests.qnect.ops import (
    Samples,
    api_process,
    by_label,
    families,
    scrape,
    total,
    wait_status,
)

BRIDGE_SERIES = {
    "qnect_ingest_frames_total",
    "qnect_batch_size_bucket",
    "qnect_batch_size_sum",
    "qnect_batch_size_count",
    "qnect_commit_seconds_bucket",
    "qnect_commit_seconds_sum",
    "qnect_commit_seconds_count",
    "qnect_inbox_depth",
    "qnect_broker_reconnects_total",
    "qnect_devices_online",
    "qnect_key_cache_hits_total",
    "qnect_key_cache_misses_total",
    "qnect_audit_events_total",
}
FLEET_EMAIL = "fleet-owner@example.com"  # tests.broker_bridge.stream.fleet's scale owner
SIM_IP, SIM_SSID = "192.168.1.23", "home-net"  # what the simulator's info frames report


@dataclass
class Run:
    """What the module's run left behind."""

    env: dict[str, str]
    metrics: str
    api: str
    creds: list[dict[str, Any]]
    summary: dict[str, Any]
    logs: list[Path]


@pytest.fixture(scope="module")
def run(
    db_dsn: str, broker: Broker, root_key_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Run]:
    """The bridge and the API up, the fleet streamed and confirmed."""
    logs = tmp_path_factory.mktemp("logs")
    port = free_port()
    env = bridge_env(db_dsn, broker, root_key_file, QNECT_METRICS_PORT=str(port))
    bridge = Bridge(env, 2, log_path=logs / "bridge.log")
    bridge.start()
    bridge.wait_workers()
    metrics = f"http://127.0.0.1:{port}"
    wait_status(f"{metrics}/readyz")
    try:
        with api_process(env, logs / "api.log") as (api, _proc):
            creds = fleet(db_dsn, root_key_file, 40)
            stream = Stream(
                creds, broker.url, messages=30, bad_fraction=0.05, seed=21, confirm_timeout_s=120
            )
            stream.start()
            summary = stream.result()
            yield Run(env, metrics, api, creds, summary, [logs / "bridge.log", logs / "api.log"])
    finally:
        assert bridge.stop() == 0


def _settled(run: Run) -> tuple[dict[str, Any], Samples]:
    """``qnect stats`` and a bridge scrape once the last batch's counts are in."""
    deadline = time.monotonic() + 15
    while True:
        stats = qnect_json("stats", "--json", env=run.env)
        samples = scrape(f"{run.metrics}/metrics")
        accepted = total(samples, "qnect_ingest_frames_total", result="accepted")
        rejected = total(samples, "qnect_ingest_frames_total", result="rejected")
        if (accepted, rejected) == (stats["accepted"], stats["rejected_total"]):
            return stats, samples
        assert time.monotonic() < deadline, (stats, accepted, rejected)
        time.sleep(0.2)


def test_bridge_metrics_expose_every_series_and_match_qnect_stats(run: Run, db_dsn: str) -> None:
    """Bridge /metrics has every contracted series; accepted and rejects match `qnect stats`."""
    assert_complete(db_dsn, run.creds, run.summary)
    stats, samples = _settled(run)
    assert {name for name, _ in samples} >= BRIDGE_SERIES
    assert stats["accepted"] == run.summary["sent"] - run.summary["sent_bad"]
    rejects = by_label(samples, "qnect_ingest_frames_total", "reason", result="rejected")
    assert {k: v for k, v in rejects.items() if v} == stats["rejected"]
    assert set(stats["rejected"]) >= {"bad_tag", "malformed_frame", "oversized"}
    # Both workers report; every batch was counted once, its frames and its commit.
    batches = by_label(samples, "qnect_batch_size_count", "worker")
    assert set(batches) == {"0", "1"}
    assert all(n > 0 for n in batches.values())
    assert total(samples, "qnect_commit_seconds_count") >= sum(batches.values())
    assert total(samples, "qnect_batch_size_sum") >= stats["accepted"] + stats["rejected_total"]
    hits = total(samples, "qnect_key_cache_hits_total")
    misses = total(samples, "qnect_key_cache_misses_total")
    assert misses >= len(run.creds)  # every device was loaded once at least
    assert hits > misses  # most lookups of a 30-frame stream are answered from the cache
    assert total(samples, "qnect_inbox_depth") == 0  # everything acknowledged
    assert total(samples, "qnect_broker_reconnects_total") == 0
    assert total(samples, "qnect_devices_online") == len(run.creds)
    assert set(by_label(samples, "qnect_audit_events_total", "decision")) == {
        "allow",
        "partial",
        "deny",
    }


def test_label_values_come_from_fixed_sets(run: Run) -> None:
    """No label carries a device id or anything else from a frame."""
    _, samples = _settled(run)
    text = json.dumps([[name, list(labels)] for name, labels in samples])
    assert not any(c["device_id"] in text for c in run.creds)
    allowed = {"result", "reason", "worker", "decision", "le", "state"}
    assert {k for _, labels in samples for k, _ in labels} <= allowed
    results = by_label(samples, "qnect_ingest_frames_total", "result")
    assert set(results) <= {"accepted", "rejected", "duplicate"}


def test_api_metrics_expose_audit_events_and_ota_states(run: Run) -> None:
    """The API's /metrics: audit events by decision, the OTA gauge declared (no OTA yet)."""
    samples = scrape(f"{run.api}/metrics")
    assert set(by_label(samples, "qnect_audit_events_total", "decision")) == {
        "allow",
        "partial",
        "deny",
    }
    assert {"qnect_audit_events", "qnect_ota_devices"} <= families(f"{run.api}/metrics")
    assert wait_status(f"{run.api}/readyz") == '{"status":"ready"}'


def test_audit_events_written_in_the_api_process_are_counted(
    db_dsn: str, root_key_file: Path
) -> None:
    """An audit event written by the API's process shows in its /metrics under its decision."""
    settings = Settings(database_url=SecretStr(db_dsn), root_key_file=root_key_file)
    with TestClient(build_app(settings)) as client:
        before = total(_parse(client.get("/metrics").text), "qnect_audit_events_total")
        event = AuditEvent(
            event_id=uuid.uuid4(),
            ts=datetime.now(UTC),
            actor_type="staff",
            actor_id="support-1",
            actor_roles=("support",),
            purpose="customer_support",
            legal_basis="contract",
            art9_condition=None,
            policy_version="test",
            action="read",
            resource="devices",
            fields=(),
            masked_fields=(),
            denied_fields=("mac",),
            categories=(),
            subject_refs=(),
            decision="deny",
            result="denied",
            row_count=0,
            reason="test",
            key_ids=(),
        )
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            write_event(conn, AuditKeys.from_root(settings.root_key()), event)
        after = _parse(client.get("/metrics").text)
    assert total(after, "qnect_audit_events_total", decision="deny") >= 1
    assert total(after, "qnect_audit_events_total") == before + 1


def _parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _personal_values(run: Run, root_key_file: Path) -> set[str]:
    values = {FLEET_EMAIL, SIM_IP, SIM_SSID, root_key_file.read_text().strip()}
    for c in run.creds:
        mac = c["mac"]
        bare = re.sub(r"[^0-9a-fA-F]", "", mac)
        values |= {mac, mac.lower(), mac.upper(), bare.lower(), bare.upper()}
        values |= {c["root_key"], c["mqtt_password"]}
    return values


def test_logs_are_json_lines_without_personal_data(run: Run, root_key_file: Path) -> None:
    """Every bridge and API log line is JSON; none holds a MAC, IP, SSID, email, key or payload."""
    _settled(run)
    lines = [line for path in run.logs for line in path.read_text().splitlines() if line]
    events = [json.loads(line) for line in lines]  # every line is structured
    names = {e["event"] for e in events}
    assert {"bridge.batch", "bridge.worker_started", "bridge.metrics_serving"} <= names
    text = "\n".join(lines)
    leaked = sorted(v for v in _personal_values(run, root_key_file) if v and v in text)
    assert not leaked, leaked
    assert not any(key in e for e in events for key in ("payload", "body", "password", "dsn"))
    assert not re.search(r"\b(?:\d{1,3}\.){3}\d{1,3}\b", text), "an IP address in the logs"
