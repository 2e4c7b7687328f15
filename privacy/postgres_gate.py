"""The one read path for personal data: purpose decision, minimised fetch, audit, then return.

Owns ``Gate.read``: for an actor reading a view under a purpose it decides which fields may be
returned (``PurposeTable.decide``), excludes subjects whose consent, restriction or objection
forbid it before any of their data is fetched, selects and decrypts only the permitted fields
(unwrapping only the data keys they need), applies the purpose's transforms, and writes the
audit event in the same transaction as the read. The rows are returned only after that
transaction commits: if the audit write fails, the caller gets an error and no data
(fail closed). Refusals are audited too, in their own transaction.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import psycopg

from crypto.envelope import read_header
from crypto.errors import DecryptionFailed, MalformedFrame, UnsupportedVersion
from privacy import transforms
from privacy.audit import AuditEvent, AuditKeys, subject_ref
from privacy.errors import AccessDenied
from privacy.postgres import KekLookup, SubjectRecord, open_data_keys, pseudonym_keys
from privacy.postgres import subject_records as load_subjects
from privacy.postgres_audit import write_event
from privacy.purposes import Decision, PurposeTable, Verdict
from privacy.views import Row, View, ViewField

Conn = psycopg.Connection[Any]
MAX_ROWS = 10_000  # one read returns at most this many rows; page with since/until
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who reads: an end user, a staff member, a service."""

    kind: str  # subject|staff|service|system
    actor_id: str
    roles: frozenset[str]


@dataclass(frozen=True, slots=True)
class ReadResult:
    """What a read returned, and what it withheld (field names and reasons, never values)."""

    rows: list[dict[str, object]]
    verdict: Verdict
    fields: tuple[str, ...]
    masked: tuple[str, ...]
    denied: dict[str, str]
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> subjects
    undecryptable: int = 0
    audit_seq: int = 0


@dataclass(frozen=True, slots=True)
class Scope:
    """Whose data: explicit subjects, and a time range for series views."""

    subjects: Sequence[str]
    since: datetime = EPOCH
    until: datetime = datetime(9999, 1, 1, tzinfo=UTC)
    limit: int = MAX_ROWS
    # Extra query parameters of a view that narrows further (one device, one data point, a
    # bucket width); they can only narrow: the subjects still come from the decision above.
    params: Mapping[str, object] = field(default_factory=dict)


class Gate:
    """Purpose-bound, audited reads of personal data."""

    def __init__(
        self,
        *,
        keks: KekLookup,
        audit_keys: AuditKeys,
        purposes: PurposeTable,
        pseudonym_key: bytes,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.keks, self.audit_keys, self.purposes = keks, audit_keys, purposes
        self.pseudonym_key, self.clock = pseudonym_key, clock

    def read(
        self,
        conn: Conn,
        actor: Actor,
        purpose: str,
        view: View,
        scope: Scope,
        *,
        reason: str | None = None,
    ) -> ReadResult:
        """Read *view* for the subjects in *scope* under *purpose*.

        Raises:
            AccessDenied: the purpose is undeclared or the actor's roles may not use it
                (the refusal is audited before this is raised).
            AuditUnavailable: the audit event could not be written; nothing is returned.
        """
        decision = self.purposes.decide(purpose, actor.roles, view.categories)
        if decision.error:
            self._refuse(conn, actor, view, decision, scope, reason)
            raise AccessDenied(decision.error)
        with conn.transaction():
            result, event = self._read(conn, actor, view, decision, scope, reason)
            # AuditUnavailable from here rolls the read back: nothing leaves (fail closed).
            seq = write_event(conn, self.audit_keys, event)
        return ReadResult(
            result.rows,
            result.verdict,
            result.fields,
            result.masked,
            result.denied,
            result.excluded,
            result.undecryptable,
            seq,
        )

    def _read(
        self,
        conn: Conn,
        actor: Actor,
        view: View,
        decision: Decision,
        scope: Scope,
        reason: str | None,
    ) -> tuple[ReadResult, AuditEvent]:
        records = load_subjects(conn, scope.subjects)
        permitted: dict[str, tuple[str, ...]] = {}
        excluded: Counter[str] = Counter()
        for sid in scope.subjects:
            record = records.get(sid)
            fields, why = (
                decision.subject_fields(record.state) if record else ((), "unknown_subject")
            )
            if why:
                excluded[why] += 1
            else:
                permitted[sid] = fields
        rows, undecryptable, key_ids = self._fetch(conn, view, decision, permitted, scope)
        returned = tuple(f for f in decision.fields if any(f in r for r in rows))
        masked = tuple(f for f in returned if f in decision.transforms)
        verdict = decision.verdict if rows or not excluded else Verdict.DENY
        result = ReadResult(
            rows, verdict, returned, masked, dict(decision.denied), dict(excluded), undecryptable
        )
        event = self._event(
            actor,
            view,
            decision,
            records,
            scope,
            result=result,
            reason=reason,
            key_ids=key_ids,
            conn=conn,
        )
        return result, event

    def _fetch(
        self,
        conn: Conn,
        view: View,
        decision: Decision,
        permitted: dict[str, tuple[str, ...]],
        scope: Scope,
    ) -> tuple[list[dict[str, object]], int, tuple[str, ...]]:
        if not permitted:
            return [], 0, ()
        params = {
            **scope.params,
            "subjects": list(permitted),
            "since": scope.since,
            "until": scope.until,
            "limit": min(scope.limit, MAX_ROWS),
        }
        raw = conn.execute(view.query, params).fetchall()
        wanted = set().union(*permitted.values())
        sealed = [f for f in view.fields if f.sealed is not None and f.name in wanted]
        needed = {(f.sealed.owner(r), f.sealed.key_class) for r in raw for f in sealed if f.sealed}
        ciphers = open_data_keys(conn, self.keks, needed)
        rows: list[dict[str, object]] = []
        undecryptable = 0
        for r in raw:
            out: dict[str, object] = {"subject_id": r[0]}
            for f in view.fields:
                if f.name not in permitted[str(r[0])]:
                    continue
                value, ok = self._value(f, r, ciphers)
                undecryptable += not ok
                transform = decision.transforms.get(f.name)
                if transform is not None:
                    value = transforms.apply(
                        transform, value, key=self.pseudonym_key, purpose=decision.purpose
                    )
                out[f.name] = value
            rows.append(out)
        key_ids = tuple(sorted({f"{c.name.lower()}/{v}" for (_o, c, v) in ciphers}))
        return rows, undecryptable, key_ids

    @staticmethod
    def _value(f: ViewField, row: Row, ciphers: dict[Any, Any]) -> tuple[object, bool]:
        if f.sealed is None:
            return (f.render(row) if f.render else row[f.column]), True
        blob = row[f.column]
        if blob is None:
            return None, True
        try:
            header = read_header(bytes(blob))
            owner = f.sealed.owner(row)
            cipher = ciphers.get((owner, header.key_class, header.key_version))
            if cipher is None:  # destroyed (shredded) or never existed: stays closed
                return None, False
            plain = cipher.open(bytes(blob), f.sealed.context(row))
        except (DecryptionFailed, MalformedFrame, UnsupportedVersion):
            return None, False
        return f.sealed.decode(plain, row), True

    def _event(
        self,
        actor: Actor,
        view: View,
        decision: Decision,
        records: dict[str, SubjectRecord],
        scope: Scope,
        *,
        result: ReadResult,
        reason: str | None,
        key_ids: tuple[str, ...],
        conn: Conn,
    ) -> AuditEvent:
        refs = self._refs(conn, [s for s in scope.subjects if s in records])
        outcome = (
            "ok" if not result.undecryptable else f"error:undecryptable={result.undecryptable}"
        )
        if result.excluded:
            outcome += ";excluded=" + ",".join(
                f"{k}:{v}" for k, v in sorted(result.excluded.items())
            )
        return AuditEvent(
            event_id=uuid.uuid4(),
            ts=self.clock(),
            actor_type=actor.kind,
            actor_id=actor.actor_id,
            actor_roles=tuple(sorted(actor.roles)),
            purpose=decision.purpose,
            legal_basis=decision.legal_basis,
            art9_condition=decision.art9.condition if decision.art9 else None,
            policy_version=decision.policy_version,
            action="read",
            resource=view.name,
            fields=result.fields,
            masked_fields=result.masked,
            denied_fields=tuple(sorted(decision.denied)),
            categories=decision.categories,
            subject_refs=refs,
            decision=result.verdict.value,
            result=outcome,
            row_count=len(result.rows),
            reason=reason,
            key_ids=key_ids,
        )

    def _refs(self, conn: Conn, subject_ids: Sequence[str]) -> tuple[bytes, ...]:
        keys = pseudonym_keys(conn, self.keks, subject_ids)
        return tuple(subject_ref(keys[s], s) for s in subject_ids if s in keys)

    def _refuse(
        self,
        conn: Conn,
        actor: Actor,
        view: View,
        decision: Decision,
        scope: Scope,
        reason: str | None,
    ) -> None:
        result = ReadResult([], Verdict.DENY, (), (), dict(decision.denied))
        with conn.transaction():
            records = load_subjects(conn, scope.subjects)
            event = self._event(
                actor,
                view,
                decision,
                records,
                scope,
                result=result,
                reason=reason,
                key_ids=(),
                conn=conn,
            )
            write_event(conn, self.audit_keys, replace(event, result=f"denied:{decision.error}"))
