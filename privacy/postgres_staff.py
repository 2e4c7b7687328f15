"""Staff reads of tables keyed by device or request, not by subject, under the gate's rules.

``Gate.read`` serves views reached through the bindings of named subjects. Operators and the
DPO also read lists whose rows may or may not belong to somebody: quarantine rows by reason
(device ids, some owned, some not), the queue of data-subject requests, the audit log. Owns
``staff_read`` for those: the same purpose decision (``PurposeTable.decide`` for the actor's
roles and the fields' categories), the same exclusions per owner (restriction, objection,
consent), the purpose's transforms, and one audit event (purpose, reason, fields returned,
masked and denied, the owners as keyed pseudonyms) written in the transaction of the read, so
nothing leaves unless the event committed. Refusals are audited in their own transaction.
Also owns ``staff_event`` for staff actions that change state (revocation) or probe unknown ids.
Does not own the queries (callers hand in a ``StaffView``) or HTTP.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, LiteralString

import psycopg

from privacy import transforms
from privacy.audit import AuditEvent, subject_ref
from privacy.errors import AccessDenied
from privacy.postgres import pseudonym_keys, subject_records
from privacy.postgres_audit import write_event
from privacy.postgres_gate import Actor, Gate
from privacy.purposes import Decision, Verdict

Conn = psycopg.Connection[Any]


@dataclass(frozen=True, slots=True)
class StaffView:
    """A staff query: column 0 is the row's owner (a subject id, or NULL), then the fields."""

    resource: str  # what the audit event names
    query: LiteralString  # named parameters only
    fields: tuple[tuple[str, str], ...]  # (name, data category) of columns 1..n


@dataclass(frozen=True, slots=True)
class StaffResult:
    """Rows as the purpose allows them, and what was withheld (names and reasons only)."""

    rows: list[dict[str, object]]
    masked: tuple[str, ...]
    denied: dict[str, str]
    withheld_rows: int  # rows whose owner's restriction, objection or consent withheld fields


def staff_read(
    conn: Conn,
    gate: Gate,
    actor: Actor,
    purpose: str,
    reason: str,
    view: StaffView,
    params: Mapping[str, object],
    *,
    subjects: Sequence[str] = (),
) -> StaffResult:
    """Run *view* for a staff member under *purpose*, minimised and audited.

    Args:
        conn: an autocommit connection (the read and its event share one transaction).
        gate: supplies the purpose table, the audit keys and the pseudonym key.
        actor: the staff member (their roles decide which purposes they may invoke).
        purpose: the purpose the caller declared.
        reason: the caller's justification (ticket id), stored in the audit event.
        view: the query and its fields' categories.
        params: the query's parameters.
        subjects: subjects the request is about beyond the rows' owners (a search by subject).

    Returns:
        The rows with only the permitted fields, transformed as the purpose says.

    Raises:
        AccessDenied: undeclared purpose or a role that may not use it (audited first).
        AuditUnavailable: the event could not be written; nothing is returned.
    """
    decision = gate.purposes.decide(purpose, actor.roles, dict(view.fields))
    if decision.error:
        with conn.transaction():
            refs = _refs(conn, gate, subjects)
            event = _event(actor, view.resource, decision, refs, reason=reason, ts=gate.clock())
            write_event(conn, gate.audit_keys, event)
        raise AccessDenied(decision.error)
    with conn.transaction():
        raw = conn.execute(view.query, dict(params)).fetchall()
        owners = sorted({str(r[0]) for r in raw if r[0] is not None})
        records = subject_records(conn, owners)
        rows, withheld = _minimise(gate, decision, view, raw, records)
        returned = tuple(f for f in decision.fields if any(f in r for r in rows))
        masked = tuple(f for f in returned if f in decision.transforms)
        refs = _refs(conn, gate, [*owners, *subjects])
        event = _event(
            actor,
            view.resource,
            decision,
            refs,
            reason=reason,
            ts=gate.clock(),
            returned=returned,
            masked=masked,
            rows=len(rows),
            withheld=withheld,
        )
        write_event(conn, gate.audit_keys, event)
    return StaffResult(rows, masked, dict(decision.denied), withheld)


def _minimise(
    gate: Gate, decision: Decision, view: StaffView, raw: Sequence[Any], records: Mapping[str, Any]
) -> tuple[list[dict[str, object]], int]:
    rows: list[dict[str, object]] = []
    withheld = 0
    for r in raw:
        allowed: Sequence[str] = decision.fields
        if r[0] is not None:
            record = records.get(str(r[0]))
            allowed, why = decision.subject_fields(record.state) if record else ((), "unknown")
            # An excluded owner's row still shows its non-personal columns (counts, times).
            if why:
                withheld += 1
                allowed = [n for n, c in view.fields if not c.startswith("user.")]
                allowed = [n for n in allowed if n in decision.fields]
        out: dict[str, object] = {}
        for i, (name, _category) in enumerate(view.fields, start=1):
            if name not in allowed:
                continue
            value = r[i]
            transform = decision.transforms.get(name)
            if transform is not None:
                value = transforms.apply(
                    transform, value, key=gate.pseudonym_key, purpose=decision.purpose
                )
            out[name] = value
        rows.append(out)
    return rows, withheld


def _refs(conn: Conn, gate: Gate, subject_ids: Sequence[str]) -> tuple[bytes, ...]:
    unique = sorted(set(subject_ids))
    keys = pseudonym_keys(conn, gate.keks, unique)
    return tuple(subject_ref(keys[s], s) for s in unique if s in keys)


def _event(
    actor: Actor,
    resource: str,
    decision: Decision,
    refs: tuple[bytes, ...],
    *,
    reason: str,
    ts: datetime,
    returned: tuple[str, ...] = (),
    masked: tuple[str, ...] = (),
    rows: int = 0,
    withheld: int = 0,
) -> AuditEvent:
    if decision.error:
        verdict, result = Verdict.DENY.value, f"denied:{decision.error}"
    else:
        verdict = decision.verdict.value if rows or not withheld else Verdict.DENY.value
        result = "ok" if not withheld else f"ok;withheld_rows={withheld}"
    return AuditEvent(
        event_id=uuid.uuid4(),
        ts=ts,
        actor_type=actor.kind,
        actor_id=actor.actor_id,
        actor_roles=tuple(sorted(actor.roles)),
        purpose=decision.purpose,
        legal_basis=decision.legal_basis,
        art9_condition=None,
        policy_version=decision.policy_version,
        action="read",
        resource=resource,
        fields=returned,
        masked_fields=masked,
        denied_fields=tuple(sorted(decision.denied)),
        categories=decision.categories,
        subject_refs=refs,
        decision=verdict,
        result=result,
        row_count=rows,
        reason=reason,
    )


def staff_event(
    conn: Conn,
    gate: Gate,
    actor: Actor,
    *,
    purpose: str,
    reason: str | None,
    action: str,
    resource: str,
    subjects: Sequence[str] = (),
    decision: str = "allow",
    result: str = "ok",
) -> None:
    """Record a staff action, or a refused probe of an unknown id, in its own transaction."""
    rule = gate.purposes.decide(purpose, actor.roles, {})
    with conn.transaction():
        event = AuditEvent(
            event_id=uuid.uuid4(),
            ts=gate.clock(),
            actor_type=actor.kind,
            actor_id=actor.actor_id,
            actor_roles=tuple(sorted(actor.roles)),
            purpose=purpose,
            legal_basis=rule.legal_basis,
            art9_condition=None,
            policy_version=gate.purposes.policy_version,
            action=action,
            resource=resource,
            fields=(),
            masked_fields=(),
            denied_fields=(),
            categories=(),
            subject_refs=_refs(conn, gate, subjects),
            decision=decision,
            result=result,
            row_count=0,
            reason=reason,
        )
        write_event(conn, gate.audit_keys, event)
