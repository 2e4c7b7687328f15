"""Bridge workers seal the audit log on their own, without a cron job."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from crypto.keys import parse_root_key
from privacy.audit import AuditEvent, AuditKeys
from privacy.postgres_audit import verify, write_event


def _event() -> AuditEvent:
    return AuditEvent(
        event_id=uuid.uuid4(),
        ts=datetime.now(UTC),
        actor_type="staff",
        actor_id="dpo-1",
        actor_roles=("dpo",),
        purpose="legal_compliance",
        legal_basis="legal_obligation",
        art9_condition=None,
        policy_version="test",
        action="read",
        resource="account",
        fields=("email",),
        masked_fields=(),
        denied_fields=(),
        categories=("user.contact.email",),
        subject_refs=(),
        decision="allow",
        result="ok",
        row_count=1,
    )


def test_a_running_bridge_seals_pending_audit_events(
    db_dsn: str, root_key_file: Path, bridge_factory: Any
) -> None:
    """Events written before the bridge starts are sealed by a worker within seconds."""
    keys = AuditKeys.from_root(parse_root_key(root_key_file.read_text()))
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        for _ in range(5):
            write_event(conn, keys, _event())
        time.sleep(2.1)  # the sealer leaves events younger than 2 s to settle
        bridge_factory(workers=1)
        deadline = time.monotonic() + 20
        while conn.execute("SELECT count(*) FROM audit_seals").fetchone() == (0,):
            assert time.monotonic() < deadline, "no seal written by the worker"
            time.sleep(0.2)
        report = verify(conn, keys)
    assert report.ok
    assert report.sealed_rows == 5
