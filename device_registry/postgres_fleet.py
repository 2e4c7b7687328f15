"""The operators' and support staff's view of the fleet on PostgreSQL.

Owns the staff side of the registry behind the operator and support routes: batch
provisioning (credentials leave only in the return value; the database keeps wrapped keys),
staging root-key rotations and their progress, revocation (audited with the caller's reason),
the quarantine by reason and device (paged, through ``privacy.postgres_staff.staff_read`` so
device ids linkable to an owner are read under a declared purpose and audited), ingest counts
(aggregates, no personal data), and support reads of a device or account through the gate.
An unknown device or subject id is answered as ``NotVisible`` and leaves a deny event.
Does not own HTTP or the broker: pushing new identities to the broker is the caller's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from device_registry.errors import NotVisible, RegistryUnavailable
from device_registry.model import RegistryKeys
from device_registry.postgres import Credentials, provision
from device_registry.postgres_identity import revoke_device
from device_registry.postgres_rekey import RotationProgress, RotationScope, progress, stage
from device_registry.views import ACCOUNT, DEVICES
from privacy.categories import DataCategory as C
from privacy.postgres_gate import Actor, Gate, Scope
from privacy.postgres_staff import StaffResult, StaffView, staff_event, staff_read

Conn = psycopg.Connection[Any]
SECURITY = "security"
_SYS = "system.operations"

QUARANTINE = StaffView(
    "quarantine",
    "SELECT b.subject_id, q.id, q.device_id, q.reason, q.detail, q.kind, q.size, q.occurrences, "
    "q.received_at, q.last_seen_at FROM quarantine q "
    "LEFT JOIN bindings b ON b.device_id = q.device_id AND b.unbound_at IS NULL "
    "WHERE (%(reason)s::text IS NULL OR q.reason = %(reason)s) "
    "AND (%(device_id)s::text IS NULL OR q.device_id = %(device_id)s) "
    "AND (%(before)s::bigint IS NULL OR q.id < %(before)s) "
    "ORDER BY q.id DESC LIMIT %(limit)s",
    (
        ("id", _SYS),
        ("device_id", C.DEVICE_REF),
        ("reason", _SYS),
        ("detail", _SYS),
        ("kind", _SYS),
        ("size", _SYS),
        ("occurrences", _SYS),
        ("received_at", _SYS),
        ("last_seen_at", _SYS),
    ),
)


@dataclass(frozen=True, slots=True)
class QuarantinePage:
    """One page of quarantine rows, newest first; ``next_before`` continues it."""

    rows: list[dict[str, object]]
    masked: tuple[str, ...]
    denied: dict[str, str]
    next_before: int | None


@dataclass(frozen=True, slots=True)
class Revoked:
    """What revoking did in the registry."""

    device_id: str
    revoked: bool  # it was active until now (False: it had been revoked before)


class PostgresFleet:
    """Staff operations on the fleet; every method opens its own short connection."""

    def __init__(self, dsn: str, *, keys: RegistryKeys, gate: Gate) -> None:
        self._dsn, self.keys, self.gate = dsn, keys, gate

    @contextmanager
    def _connect(self) -> Iterator[Conn]:
        try:
            with psycopg.connect(self._dsn, autocommit=True) as conn:
                yield conn
        except psycopg.OperationalError as exc:
            raise RegistryUnavailable(type(exc).__name__) from exc

    # -- provisioning, rotation, revocation --------------------------------------------

    def provision(self, model: str, count: int) -> list[Credentials]:
        """*count* new devices of *model*; their credentials exist only in the return value."""
        with self._connect() as conn:
            return provision(conn, self.keys, model, count)

    def stage_rotation(self, scope: RotationScope, *, limit: int) -> tuple[int, datetime]:
        """Stage next root keys for connected devices of *scope*: (how many, the run's start)."""
        with self._connect() as conn:
            row = conn.execute("SELECT statement_timestamp()").fetchone()
            since: datetime = row[0] if row else datetime.now().astimezone()
            return stage(conn, self.keys.ring, scope, since=since, limit=limit), since

    def rotation_progress(self, scope: RotationScope, *, since: datetime) -> RotationProgress:
        """Totals of *scope* for the rotation run that started at *since*."""
        with self._connect() as conn:
            return progress(conn, scope, since=since)

    def revoke(self, actor: Actor, device_id: str, reason: str) -> Revoked:
        """Revoke a device in the registry (its frames refused, its root keys destroyed).

        Raises:
            NotVisible: no such device (a deny event is written).
        """
        with self._connect() as conn:
            row = conn.execute(
                "SELECT d.status, b.subject_id FROM devices d LEFT JOIN bindings b "
                "ON b.device_id = d.device_id AND b.unbound_at IS NULL WHERE d.device_id = %s",
                (device_id,),
            ).fetchone()
            if row is None:
                self._deny(conn, actor, "devices", reason)
                raise NotVisible("device")
            done = revoke_device(conn, device_id)
            owners = [str(row[1])] if row[1] else []
            staff_event(
                conn,
                self.gate,
                actor,
                purpose=SECURITY,
                reason=reason,
                action="revoke",
                resource="devices",
                subjects=owners,
                result="ok" if done else "ok;already_revoked",
            )
        return Revoked(device_id, done)

    def _deny(self, conn: Conn, actor: Actor, resource: str, reason: str | None) -> None:
        purpose = SECURITY if "operator" in actor.roles else "customer_support"
        staff_event(
            conn,
            self.gate,
            actor,
            purpose=purpose,
            reason=reason,
            action="read",
            resource=resource,
            decision="deny",
            result="denied:unknown_id",
        )

    # -- ingest health -------------------------------------------------------------------

    def quarantine(
        self,
        actor: Actor,
        purpose: str,
        reason: str,
        *,
        reject_reason: str | None,
        device_id: str | None,
        before: int | None,
        limit: int,
    ) -> QuarantinePage:
        """Quarantine rows (ids, reason, sizes, counts; never payloads), newest first."""
        params = {
            "reason": reject_reason,
            "device_id": device_id,
            "before": before,
            "limit": limit,
        }
        with self._connect() as conn:
            result: StaffResult = staff_read(
                conn, self.gate, actor, purpose, reason, QUARANTINE, params
            )
        ids = [i for r in result.rows if isinstance(i := r.get("id"), int)]
        more = len(result.rows) == limit and bool(ids)
        return QuarantinePage(result.rows, result.masked, result.denied, min(ids) if more else None)

    def stats(self) -> dict[str, object]:
        """Accepted frames, rejected messages per reason, devices by status (aggregates)."""
        with self._connect() as conn:
            accepted = conn.execute("SELECT count(*) FROM frames").fetchone()
            rejected = {
                str(r): int(n)
                for r, n in conn.execute(
                    "SELECT reason, sum(occurrences) FROM quarantine GROUP BY 1 ORDER BY 1"
                )
            }
            devices = {
                str(s): int(n)
                for s, n in conn.execute(
                    "SELECT status, count(*) FROM devices GROUP BY 1 ORDER BY 1"
                )
            }
            online = conn.execute("SELECT count(*) FROM device_state WHERE online").fetchone()
        return {
            "accepted": int(accepted[0]) if accepted else 0,
            "rejected": rejected,
            "rejected_total": sum(rejected.values()),
            "devices": devices,
            "online": int(online[0]) if online else 0,
        }

    # -- support -------------------------------------------------------------------------

    def support_device(
        self, actor: Actor, purpose: str, reason: str, device_id: str
    ) -> dict[str, object]:
        """A device and its owner's account, as *purpose* allows (gate-read, audited).

        Raises:
            NotVisible: no such device, or nobody owns it (a deny event is written).
            AccessDenied: the purpose refuses this actor (audited by the gate).
        """
        with self._connect() as conn:
            row = conn.execute(
                "SELECT subject_id FROM bindings WHERE device_id = %s AND unbound_at IS NULL",
                (device_id,),
            ).fetchone()
            if row is None:
                self._deny(conn, actor, "devices", reason)
                raise NotVisible("device")
            scope = Scope([str(row[0])])
            devices = self.gate.read(conn, actor, purpose, DEVICES, scope, reason=reason).rows
            account = self.gate.read(conn, actor, purpose, ACCOUNT, scope, reason=reason).rows
        device = next((d for d in devices if d.get("device_id") == device_id), None)
        if device is None:  # restricted or objected: the gate withheld the owner's rows
            raise NotVisible("withheld")
        return {"device": _public(device), "account": _public(account[0]) if account else None}

    def support_account(
        self, actor: Actor, purpose: str, reason: str, subject_id: str
    ) -> dict[str, object]:
        """An account and its devices, as *purpose* allows (gate-read, audited).

        Raises:
            NotVisible: no such subject, or the gate withheld it (audited by the gate).
        """
        with self._connect() as conn:
            scope = Scope([subject_id])
            account = self.gate.read(conn, actor, purpose, ACCOUNT, scope, reason=reason).rows
            if not account:
                raise NotVisible("account")
            devices = self.gate.read(conn, actor, purpose, DEVICES, scope, reason=reason).rows
        return {"account": _public(account[0]), "devices": [_public(d) for d in devices]}


def _public(row: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in row.items() if k != "subject_id"}
