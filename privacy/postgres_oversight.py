"""The data-protection officer's reads on PostgreSQL: audit search and verification, DSR queue.

Owns the queries behind the DPO routes. The audit log and the request queue name staff and
subjects, so both are read through ``privacy.postgres_staff.staff_read`` under the caller's
purpose (``legal_compliance``) and reason, and the DPO's own reads are audited like anyone's.
A search by subject turns the subject id into its keyed pseudonym (the log stores no raw
subject ids); once a subject is erased its pseudonym key is gone and the search finds nothing,
by design. Verification is ``privacy.postgres_audit.verify`` on its own connection.
Does not own HTTP or the record of processing (``privacy.record``, pure).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from privacy.audit import VerifyReport, subject_ref
from privacy.categories import DataCategory as C
from privacy.errors import AuditUnavailable
from privacy.postgres import pseudonym_keys
from privacy.postgres_audit import verify
from privacy.postgres_gate import Actor, Gate
from privacy.postgres_staff import StaffView, staff_read

Conn = psycopg.Connection[Any]
_SYS = "system.operations"
_AUDIT = C.AUDIT.value

AUDIT_SEARCH = StaffView(
    "audit_events",
    "SELECT NULL, seq, ts, actor_type, actor_id, actor_roles, purpose, legal_basis, "
    "art9_condition, policy_version, action, resource, fields, masked_fields, denied_fields, "
    "categories, decision, result, row_count, reason, cardinality(subject_refs) "
    "FROM audit_events WHERE (%(actor)s::text IS NULL OR actor_id = %(actor)s) "
    "AND (%(purpose)s::text IS NULL OR purpose = %(purpose)s) "
    "AND (%(decision)s::text IS NULL OR decision = %(decision)s) "
    "AND (%(ref)s::bytea IS NULL OR subject_refs @> ARRAY[%(ref)s::bytea]) "
    "AND ts >= %(since)s AND ts < %(until)s "
    "AND (%(before)s::bigint IS NULL OR seq < %(before)s) "
    "ORDER BY seq DESC LIMIT %(limit)s",
    tuple(
        (name, _AUDIT)
        for name in (
            "seq",
            "ts",
            "actor_type",
            "actor_id",
            "actor_roles",
            "purpose",
            "legal_basis",
            "art9_condition",
            "policy_version",
            "action",
            "resource",
            "fields",
            "masked_fields",
            "denied_fields",
            "categories",
            "decision",
            "result",
            "row_count",
            "reason",
            "subjects",
        )
    ),
)

DSR_QUEUE = StaffView(
    "dsr_requests",
    "SELECT subject_id, request_id, subject_id, kind, status, received_at, due_at, "
    "completed_at, (status = 'open' AND due_at < now()) FROM dsr_requests "
    "WHERE (%(state)s = 'all' OR (%(state)s = 'open' AND status = 'open') "
    "OR (%(state)s = 'overdue' AND status = 'open' AND due_at < now())) "
    "AND (%(after)s::text IS NULL OR (due_at, request_id) > "
    "((SELECT due_at FROM dsr_requests WHERE request_id = %(after)s), %(after)s)) "
    "ORDER BY due_at, request_id LIMIT %(limit)s",
    (
        ("request_id", _SYS),
        ("subject_id", C.ACCOUNT.value),
        ("kind", _SYS),
        ("status", _SYS),
        ("received_at", _SYS),
        ("due_at", _SYS),
        ("completed_at", _SYS),
        ("overdue", _SYS),
    ),
)


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters of an audit search; ``before`` pages back by sequence number."""

    since: datetime
    until: datetime
    subject_id: str | None = None
    actor_id: str | None = None
    purpose: str | None = None
    decision: str | None = None
    before: int | None = None
    limit: int = 100


@dataclass(frozen=True, slots=True)
class Page:
    """Rows of one page and the cursor of the next (None at the end)."""

    rows: list[dict[str, object]]
    next_cursor: str | None


class PostgresOversight:
    """The DPO's audited reads; every method opens its own short connection."""

    def __init__(self, dsn: str, *, gate: Gate) -> None:
        self._dsn, self.gate = dsn, gate

    @contextmanager
    def _connect(self) -> Iterator[Conn]:
        try:
            with psycopg.connect(self._dsn, autocommit=True) as conn:
                yield conn
        except psycopg.OperationalError as exc:
            raise AuditUnavailable(type(exc).__name__) from exc

    def audit(self, actor: Actor, purpose: str, reason: str, query: AuditQuery) -> Page:
        """Audit events matching *query*, newest first (subjects only as a count)."""
        with self._connect() as conn:
            ref: bytes | None = None
            subjects: list[str] = []
            if query.subject_id is not None:
                subjects = [query.subject_id]
                keys = pseudonym_keys(conn, self.gate.keks, subjects)
                key = keys.get(query.subject_id)
                # No key: unknown or erased. A reference nobody has matches no event.
                ref = subject_ref(key, query.subject_id) if key else bytes(32)
            params = {
                "actor": query.actor_id,
                "purpose": query.purpose,
                "decision": query.decision,
                "ref": ref,
                "since": query.since,
                "until": query.until,
                "before": query.before,
                "limit": query.limit,
            }
            result = staff_read(
                conn, self.gate, actor, purpose, reason, AUDIT_SEARCH, params, subjects=subjects
            )
        seqs = [i for r in result.rows if isinstance(i := r.get("seq"), int)]
        more = len(result.rows) == query.limit and bool(seqs)
        return Page(result.rows, str(min(seqs)) if more else None)

    def requests(
        self, actor: Actor, purpose: str, reason: str, *, state: str, after: str | None, limit: int
    ) -> Page:
        """Data-subject requests by due date (``open``, ``overdue`` or ``all``)."""
        params = {"state": state, "after": after, "limit": limit}
        with self._connect() as conn:
            result = staff_read(conn, self.gate, actor, purpose, reason, DSR_QUEUE, params)
        more = len(result.rows) == limit and bool(result.rows)
        last = result.rows[-1].get("request_id") if more else None
        return Page(result.rows, str(last) if last else None)

    def verify(self) -> VerifyReport:
        """Check every audit row and seal (``privacy.postgres_audit.verify``)."""
        with self._connect() as conn:
            return verify(conn, self.gate.audit_keys)
