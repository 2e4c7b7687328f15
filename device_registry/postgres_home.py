"""The mobile app's view of a household on PostgreSQL: devices, state, shadow, history, rights.

Owns the household scoping of every app request: a caller sees the devices currently bound to
a member of their own household and nothing else. A device, request or other id outside that
scope is answered as if it did not exist (``NotVisible``), and the attempt is written to the
audit log as a deny event (``privacy.postgres_audit.write_event``) before the answer, so the
DPO sees probing for other households' ids. Reads of personal fields go through the privacy
gate (purpose ``provide_service``); data-subject rights through ``privacy.postgres_dsr.Rights``.
Does not own HTTP, tokens or the broker: the bridge workers deliver the desired state
(``postgres_shadow``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from crypto.keys import KekRing
from device_registry.app_views import CONSENTS, DEVICE_STATE, HISTORY, MY_DEVICES
from device_registry.errors import (
    NotVisible,
    PreconditionFailed,
    RegistryUnavailable,
    VersionConflict,
)
from device_registry.postgres_owners import release_device
from device_registry.postgres_pairing import PairingToken, issue_token
from privacy.audit import AuditEvent, AuditKeys, subject_ref
from privacy.postgres import pseudonym_keys
from privacy.postgres_audit import write_event
from privacy.postgres_dsr import ErasureReport, Rights
from privacy.postgres_gate import Actor, Gate, Scope
from privacy.purposes import PurposeTable
from privacy.views import View

Conn = psycopg.Connection[Any]
PURPOSE = "provide_service"
MAX_HISTORY_ROWS = 1000  # buckets per history answer; the route refuses wider requests first


@dataclass(frozen=True, slots=True)
class ShadowWrite:
    """The stored desired state after a change."""

    device_id: str
    model: str
    desired: dict[str, object]
    version: int


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """One data point of one device, bucketed."""

    device_id: str
    point: int
    bucket: str  # an interval PostgreSQL understands, from the route's allow-list
    since: datetime
    until: datetime


class PostgresHome:
    """Household-scoped reads and writes for the app."""

    def __init__(
        self,
        dsn: str,
        *,
        gate: Gate,
        rights: Rights,
        ring: KekRing,
        audit_keys: AuditKeys,
        purposes: PurposeTable,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._dsn, self.gate, self.rights, self.ring = dsn, gate, rights, ring
        self.audit_keys, self.purposes, self.clock = audit_keys, purposes, clock
        self._layout: str | None = None

    @contextmanager
    def _connect(self) -> Iterator[Conn]:
        try:
            with psycopg.connect(self._dsn, autocommit=True) as conn:
                yield conn
        except psycopg.OperationalError as exc:
            raise RegistryUnavailable(type(exc).__name__) from exc

    # -- scoping and audit -------------------------------------------------------------

    def _members(self, conn: Conn, actor: Actor, subject_id: str) -> list[str]:
        rows = conn.execute(
            "SELECT m.subject_id FROM subjects s JOIN subjects m USING (household_id) "
            "WHERE s.subject_id = %s AND s.status = 'active' ORDER BY 1",
            (subject_id,),
        ).fetchall()
        if not rows:  # erased (or erasure pending) while the access token still lived
            self._deny(conn, actor, "subjects", None)
            raise NotVisible("no such subject")
        return [str(r[0]) for r in rows]

    def _owner(self, conn: Conn, actor: Actor, subject_id: str, device_id: str, res: str) -> str:
        """The device's owner if they share the caller's household; else audit and refuse."""
        row = conn.execute(
            "SELECT b.subject_id, (o.household_id = s.household_id AND s.status = 'active') "
            "FROM bindings b JOIN subjects o ON o.subject_id = b.subject_id "
            "JOIN subjects s ON s.subject_id = %s "
            "WHERE b.device_id = %s AND b.unbound_at IS NULL",
            (subject_id, device_id),
        ).fetchone()
        if row is None or not row[1]:
            self._deny(conn, actor, res, str(row[0]) if row else None)
            raise NotVisible("device")
        return str(row[0])

    def _deny(self, conn: Conn, actor: Actor, resource: str, target: str | None) -> None:
        """A deny event: who tried which kind of resource, and whose it was (as a pseudonym)."""
        self._event(conn, actor, resource, "read", target, decision="deny", result="denied:scope")

    def _event(
        self,
        conn: Conn,
        actor: Actor,
        resource: str,
        action: str,
        target: str | None,
        *,
        decision: str = "allow",
        result: str = "ok",
        fields: tuple[str, ...] = (),
    ) -> None:
        refs: tuple[bytes, ...] = ()
        if target is not None:
            keys = pseudonym_keys(conn, self.ring, [target])
            refs = (subject_ref(keys[target], target),) if target in keys else ()
        rule = self.purposes.decide(PURPOSE, actor.roles, {})
        event = AuditEvent(
            event_id=uuid.uuid4(),
            ts=self.clock(),
            actor_type=actor.kind,
            actor_id=actor.actor_id,
            actor_roles=tuple(sorted(actor.roles)),
            purpose=PURPOSE,
            legal_basis=rule.legal_basis,
            art9_condition=None,
            policy_version=self.purposes.policy_version,
            action=action,
            resource=resource,
            fields=fields,
            masked_fields=(),
            denied_fields=(),
            categories=(),
            subject_refs=refs,
            decision=decision,
            result=result,
            row_count=0,
        )
        with conn.transaction():
            write_event(conn, self.audit_keys, event)

    def _read(self, conn: Conn, actor: Actor, view: View, scope: Scope) -> list[dict[str, object]]:
        rows = self.gate.read(conn, actor, PURPOSE, view, scope).rows
        for row in rows:
            row.pop("subject_id", None)  # household members' ids are not the app's business
        return rows

    # -- devices -----------------------------------------------------------------------

    def devices(self, actor: Actor, subject_id: str) -> list[dict[str, object]]:
        """The devices bound to members of the caller's household."""
        with self._connect() as conn:
            members = self._members(conn, actor, subject_id)
            return self._read(conn, actor, MY_DEVICES, Scope(members))

    def state(self, actor: Actor, subject_id: str, device_id: str) -> dict[str, object]:
        """Presence, latest values and the shadow of one of the household's devices."""
        with self._connect() as conn:
            owner = self._owner(conn, actor, subject_id, device_id, "app_device_state")
            scope = Scope([owner], params={"device_id": device_id})
            rows = self._read(conn, actor, DEVICE_STATE, scope)
        if not rows:  # the owner restricted processing or objected: the gate withheld it
            raise NotVisible("withheld")
        return rows[0]

    def model(self, actor: Actor, subject_id: str, device_id: str) -> str:
        """The model of one of the household's devices (no personal data)."""
        with self._connect() as conn:
            self._owner(conn, actor, subject_id, device_id, "device_shadows")
            row = conn.execute("SELECT model FROM devices WHERE device_id = %s", (device_id,))
            return str(row.fetchone()[0])  # type: ignore[index]  # the binding implies the device

    def set_desired(
        self,
        actor: Actor,
        subject_id: str,
        device_id: str,
        patch: Mapping[str, object],
        *,
        expected: int,
        precondition: bool,
    ) -> ShadowWrite:
        """Merge *patch* into the desired state if the version is still *expected*.

        ``None`` values remove a key. The version increases by one; confirmation is reset
        until the device reports the new values (``device_shadow_confirm`` trigger).

        Raises:
            NotVisible: not a device of the caller's household (audited).
            VersionConflict: the version moved on (``PreconditionFailed`` if from If-Match).
        """
        with self._connect() as conn:
            owner = self._owner(conn, actor, subject_id, device_id, "device_shadows")
            with conn.transaction():
                conn.execute(
                    "INSERT INTO device_shadows (device_id) VALUES (%s) ON CONFLICT DO NOTHING",
                    (device_id,),
                )
                desired, version = conn.execute(
                    "SELECT desired, version FROM device_shadows WHERE device_id = %s FOR UPDATE",
                    (device_id,),
                ).fetchone() or ({}, 0)
                if version != expected:
                    raise (PreconditionFailed if precondition else VersionConflict)(int(version))
                merged = {k: v for k, v in {**desired, **patch}.items() if v is not None}
                conn.execute(
                    "UPDATE device_shadows SET desired = %s, version = version + 1, "
                    "desired_at = %s, confirmed_at = NULL WHERE device_id = %s",
                    (Jsonb(merged), self.clock(), device_id),
                )
                model = conn.execute(
                    "SELECT model FROM devices WHERE device_id = %s", (device_id,)
                ).fetchone()
            self._event(conn, actor, "device_shadows", "write", owner, fields=tuple(sorted(patch)))
        return ShadowWrite(device_id, str(model[0]) if model else "", merged, int(version) + 1)

    def history(
        self, actor: Actor, subject_id: str, query: HistoryQuery
    ) -> list[dict[str, object]]:
        """Buckets (count, avg, min, max) of one plain data point of a household device."""
        with self._connect() as conn:
            self._owner(conn, actor, subject_id, query.device_id, "app_history")
            members = self._members(conn, actor, subject_id)
            if self._layout is None:
                row = conn.execute("SELECT kind FROM storage_layout").fetchone()
                self._layout = str(row[0]) if row else "native"
            scope = Scope(
                members,
                since=query.since,
                until=query.until,
                limit=MAX_HISTORY_ROWS,
                params={"device_id": query.device_id, "point": query.point, "bucket": query.bucket},
            )
            return self._read(conn, actor, HISTORY[self._layout], scope)

    # -- pairing -----------------------------------------------------------------------

    def pairing_token(self, actor: Actor, subject_id: str) -> PairingToken:
        """A pairing token for the caller in their own household."""
        with self._connect() as conn:
            self._members(conn, actor, subject_id)
            row = conn.execute(
                "SELECT household_id FROM subjects WHERE subject_id = %s", (subject_id,)
            ).fetchone()
            return issue_token(conn, subject_id, str(row[0]) if row else "", now=self.clock())

    def unpair(self, actor: Actor, subject_id: str, device_id: str) -> None:
        """Release a household device: its data stays with the old binding, the state clears."""
        with self._connect() as conn:
            owner = self._owner(conn, actor, subject_id, device_id, "bindings")
            with conn.transaction():
                release_device(conn, self.ring, device_id)
                conn.execute(
                    "UPDATE device_state SET latest = '{}' WHERE device_id = %s", (device_id,)
                )
                conn.execute("DELETE FROM device_shadows WHERE device_id = %s", (device_id,))
            self._event(conn, actor, "bindings", "unpair", owner)

    # -- consents and rights -----------------------------------------------------------

    def consents(self, actor: Actor, subject_id: str) -> list[dict[str, object]]:
        """The caller's consents in force (latest grant or withdrawal per key)."""
        with self._connect() as conn:
            self._members(conn, actor, subject_id)
            return self._read(conn, actor, CONSENTS, Scope([subject_id]))

    def consent(self, actor: Actor, subject_id: str, key: str, kind: str) -> None:
        """Grant or withdraw one consent (``Rights.consent``; audited there)."""
        with self._connect() as conn:
            self.rights.consent(conn, actor, subject_id, key, kind, "app")

    def export(self, actor: Actor, subject_id: str) -> tuple[str, dict[str, object]]:
        """Art. 15/20: a request id and the export document."""
        with self._connect() as conn:
            request_id = self.rights.open_request(conn, subject_id, "export")
            return request_id, self.rights.export(conn, actor, subject_id, request_id)

    def restrict(self, actor: Actor, subject_id: str, *, restricted: bool) -> str:
        """Art. 18: restrict (or lift the restriction); returns the request id."""
        with self._connect() as conn:
            kind = "restrict" if restricted else "unrestrict"
            request_id = self.rights.open_request(conn, subject_id, kind)
            self.rights.restrict(
                conn, actor, subject_id, restricted=restricted, request_id=request_id
            )
            return request_id

    def erase(self, actor: Actor, subject_id: str) -> ErasureReport:
        """Art. 17: erase the caller (their account goes with their subject row)."""
        with self._connect() as conn:
            request_id = self.rights.open_request(conn, subject_id, "erase")
            return self.rights.erase(conn, actor, subject_id, request_id)

    def request(self, actor: Actor, subject_id: str, request_id: str) -> dict[str, object]:
        """One of the caller's own data-subject requests."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT kind, status, received_at, due_at, completed_at FROM dsr_requests "
                "WHERE request_id = %s AND subject_id = %s",
                (request_id, subject_id),
            ).fetchone()
            if row is None:
                owner = conn.execute(
                    "SELECT subject_id FROM dsr_requests WHERE request_id = %s", (request_id,)
                ).fetchone()
                target = str(owner[0]) if owner and owner[0] else None
                self._deny(conn, actor, "dsr_requests", target)
                raise NotVisible("request")
        keys = ("kind", "status", "received_at", "due_at", "completed_at")
        return {"request_id": request_id, **dict(zip(keys, row, strict=True))}
