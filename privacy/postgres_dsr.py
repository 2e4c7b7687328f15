"""Data-subject rights on PostgreSQL: export, rectification, restriction, consent, erasure.

Owns the ``dsr_requests`` queue and ``erasure_tombstones``, and the order of operations that
makes each right hold: every operation runs in one transaction with its audit event, so either
both happen or neither does. Reads for an export go through the gate (purpose
``legal_compliance``), so the export itself shows up in "who read my data".
Does not own device keys: releasing a device from its owner is the registry's
(``Rights.release_device``, injected).

Erasure follows research/privacy-crypto.md 5.2: restrict, delete the subject's rows (series by
binding, plain telemetry by ownership period), release their devices, destroy every data key of
the subject and its bindings (ciphertext left in compressed chunks, WAL or backups becomes
unreadable), delete the account, keep a keyed-hash tombstone that a restored backup re-applies.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from crypto.envelope import FieldCipher, FieldContext
from crypto.keys import NONCE_BYTES, Kek, KeyClass
from privacy.audit import AuditEvent, AuditKeys, subject_ref
from privacy.errors import UnknownSubject
from privacy.postgres import (
    KekLookup,
    Rand,
    add_data_key,
    destroy_data_keys,
    open_data_keys,
    pseudonym_keys,
    record_consent,
    subject_records,
)
from privacy.postgres_audit import events_for_subject, write_event
from privacy.postgres_gate import Actor, Gate, Scope
from privacy.purposes import PurposeTable
from privacy.views import View

Conn = psycopg.Connection[Any]
DUE_AFTER = timedelta(days=30)  # Art. 12(3): one month to answer
PURPOSE = "legal_compliance"
SEALED_BY_BINDING: tuple[LiteralString, ...] = (
    "health_readings",
    "location_readings",
    "media_readings",
    "device_info",
)
BY_OWNERSHIP_PERIOD: tuple[LiteralString, ...] = ("telemetry", "presence_events")
HEALTH_CONSENT = "health"
READS_SHOWN = 1000  # newest audit events listed in an export; older ones on request


@dataclass(frozen=True, slots=True)
class ErasureReport:
    """What an erasure removed (counts only)."""

    request_id: str
    rows_deleted: int
    keys_destroyed: int
    devices_released: int


class Rights:
    """The data-subject rights, each audited in its own transaction."""

    def __init__(
        self,
        *,
        gate: Gate,
        views: Mapping[str, View],
        keks: KekLookup,
        wrapping_kek: Callable[[Conn], Kek],
        audit_keys: AuditKeys,
        purposes: PurposeTable,
        tombstone_key: bytes,
        release_device: Callable[[Conn, str], object],
        rand: Rand,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.gate, self.views, self.keks, self.wrapping_kek = gate, views, keks, wrapping_kek
        self.audit_keys, self.purposes, self.tombstone_key = audit_keys, purposes, tombstone_key
        self.release_device, self.rand, self.clock = release_device, rand, clock

    def open_request(self, conn: Conn, subject_id: str, kind: str) -> str:
        """Queue a request with its statutory due date; returns the request id."""
        request_id = "r" + self.rand(12).hex()
        conn.execute(
            "INSERT INTO dsr_requests (request_id, subject_id, kind, received_at, due_at) "
            "VALUES (%s, %s, %s, %s, %s)",
            (request_id, subject_id, kind, self.clock(), self.clock() + DUE_AFTER),
        )
        return request_id

    def _close(self, conn: Conn, request_id: str | None) -> None:
        if request_id is not None:
            conn.execute(
                "UPDATE dsr_requests SET status = 'done', completed_at = %s WHERE request_id = %s",
                (self.clock(), request_id),
            )

    def _audit(
        self,
        conn: Conn,
        actor: Actor,
        subject_id: str,
        action: str,
        resource: str,
        fields: tuple[str, ...] = (),
        *,
        reason: str | None = None,
        refs: tuple[bytes, ...] | None = None,
        rows: int = 0,
    ) -> int:
        if refs is None:
            keys = pseudonym_keys(conn, self.keks, [subject_id])
            refs = (subject_ref(keys[subject_id], subject_id),) if subject_id in keys else ()
        event = AuditEvent(
            event_id=uuid.uuid4(),
            ts=self.clock(),
            actor_type=actor.kind,
            actor_id=actor.actor_id,
            actor_roles=tuple(sorted(actor.roles)),
            purpose=PURPOSE,
            legal_basis="legal_obligation",
            art9_condition=None,
            policy_version=self.purposes.policy_version,
            action=action,
            resource=resource,
            fields=fields,
            masked_fields=(),
            denied_fields=(),
            categories=(),
            subject_refs=refs,
            decision="allow",
            result="ok",
            row_count=rows,
            reason=reason,
            key_ids=(),
        )
        return write_event(conn, self.audit_keys, event)

    def _require(self, conn: Conn, subject_id: str) -> None:
        if subject_id not in subject_records(conn, [subject_id]):
            raise UnknownSubject(subject_id)

    def export(
        self, conn: Conn, actor: Actor, subject_id: str, request_id: str | None = None
    ) -> dict[str, object]:
        """Art. 15/20: everything held about the subject, as portable JSON-ready data.

        Raises:
            UnknownSubject: no such subject.
        """
        self._require(conn, subject_id)
        out: dict[str, object] = {"format": "qnect-export/v1", "subject_id": subject_id}
        scope = Scope([subject_id])
        for name, view in self.views.items():
            result = self.gate.read(conn, actor, PURPOSE, view, scope, reason=request_id)
            out[name] = [_portable(r) for r in result.rows]
        with conn.transaction():
            out["consents"] = [
                {"key": k, "kind": kind, "at": at.isoformat(), "source": src}
                for k, kind, at, src in conn.execute(
                    "SELECT consent_key, kind, at, source FROM consent_events "
                    "WHERE subject_id = %s ORDER BY seq",
                    (subject_id,),
                )
            ]
            keys = pseudonym_keys(conn, self.keks, [subject_id])
            ref = subject_ref(keys[subject_id], subject_id)
            out["reads_of_my_data"] = [
                _portable(_reader(r.event)) for r in events_for_subject(conn, ref, READS_SHOWN)
            ]
            self._audit(conn, actor, subject_id, "export", "subject", tuple(self.views))
            self._close(conn, request_id)
        return out

    def rectify(
        self,
        conn: Conn,
        actor: Actor,
        subject_id: str,
        *,
        email: str | None = None,
        name: str | None = None,
        request_id: str | None = None,
    ) -> None:
        """Art. 16: replace profile fields, sealed under the subject's newest profile key."""
        with conn.transaction():
            self._require(conn, subject_id)
            ciphers = open_data_keys(conn, self.keks, [(subject_id, KeyClass.PROFILE)])
            cipher = max(ciphers.values(), key=lambda c: c.data_key.version)
            changed = []
            for column, value in (("email_enc", email), ("name_enc", name)):
                if value is None:
                    continue
                blob = _seal(cipher, "subjects", column, subject_id, value, self.rand)
                conn.execute(
                    sql.SQL("UPDATE subjects SET {} = %s WHERE subject_id = %s").format(
                        sql.Identifier(column)
                    ),
                    (blob, subject_id),
                )
                changed.append(column.removesuffix("_enc"))
            self._audit(conn, actor, subject_id, "rectify", "subjects", tuple(changed))
            self._close(conn, request_id)

    def restrict(
        self,
        conn: Conn,
        actor: Actor,
        subject_id: str,
        *,
        restricted: bool = True,
        request_id: str | None = None,
    ) -> None:
        """Art. 18: only legal compliance may read a restricted subject's data."""
        with conn.transaction():
            self._require(conn, subject_id)
            conn.execute(
                "UPDATE subjects SET restricted = %s WHERE subject_id = %s",
                (restricted, subject_id),
            )
            action = "restrict" if restricted else "unrestrict"
            self._audit(conn, actor, subject_id, action, "subjects", ("restricted",))
            self._close(conn, request_id)

    def consent(
        self, conn: Conn, actor: Actor, subject_id: str, key: str, kind: str, source: str
    ) -> None:
        """Record a consent event; health consent creates or shreds the health data keys.

        Granting explicit health consent gives each of the subject's current bindings a health
        data key (ingestion stores scale readings only under one). Withdrawing it destroys
        those keys and deletes the health readings: Art. 9 data without its condition goes.
        """
        with conn.transaction():
            self._require(conn, subject_id)
            record_consent(
                conn,
                subject_id,
                key,
                kind,
                policy_version=self.purposes.policy_version,
                source=source,
            )
            bindings = _bindings(conn, subject_id, current_only=kind == "grant")
            rows = destroyed = 0
            if key == HEALTH_CONSENT and kind == "grant":
                kek = self.wrapping_kek(conn)
                for b in bindings:
                    if not _has_active(conn, b, KeyClass.HEALTH):
                        add_data_key(conn, kek, b, KeyClass.HEALTH, self.rand)
            elif key == HEALTH_CONSENT and kind == "withdraw":
                destroyed = destroy_data_keys(conn, bindings, [KeyClass.HEALTH])
                rows = conn.execute(
                    "DELETE FROM health_readings WHERE binding = ANY(%s)", (bindings,)
                ).rowcount
            self._audit(
                conn, actor, subject_id, f"consent_{kind}", "consent_events", (key,), rows=rows
            )
            if destroyed:
                self._audit(conn, actor, subject_id, "key_destroy", "data_keys", ("health",))

    def erase(
        self, conn: Conn, actor: Actor, subject_id: str, request_id: str | None = None
    ) -> ErasureReport:
        """Art. 17: remove the subject and make any copy of their data unreadable.

        Raises:
            UnknownSubject: no such subject (or already erased).
        """
        with conn.transaction():
            self._require(conn, subject_id)
            keys = pseudonym_keys(conn, self.keks, [subject_id])
            refs = (subject_ref(keys[subject_id], subject_id),) if subject_id in keys else ()
            conn.execute(
                "UPDATE subjects SET status = 'erasure_pending', restricted = true "
                "WHERE subject_id = %s",
                (subject_id,),
            )
            bindings = _bindings(conn, subject_id, current_only=False)
            rows = self._delete_rows(conn, subject_id, bindings)
            released = self._release(conn, subject_id)
            destroyed = destroy_data_keys(conn, [subject_id, *bindings])
            conn.execute("SELECT set_config('qnect.erasing', %s, true)", (subject_id,))
            conn.execute("DELETE FROM consent_events WHERE subject_id = %s", (subject_id,))
            conn.execute(
                "UPDATE dsr_requests SET subject_id = NULL WHERE subject_id = %s", (subject_id,)
            )
            conn.execute("DELETE FROM subjects WHERE subject_id = %s", (subject_id,))
            request = request_id or "r" + self.rand(12).hex()
            conn.execute(
                "INSERT INTO erasure_tombstones (subject_hash, request_id) VALUES (%s, %s) "
                "ON CONFLICT DO NOTHING",
                (self.tombstone(subject_id), request),
            )
            self._audit(conn, actor, subject_id, "erase", "subject", refs=refs, rows=rows)
            self._close(conn, request_id)
        return ErasureReport(request, rows, destroyed, released)

    def _delete_rows(self, conn: Conn, subject_id: str, bindings: list[str]) -> int:
        rows = 0
        devices = [
            str(r[0])
            for r in conn.execute(
                "SELECT DISTINCT device_id FROM bindings WHERE binding = ANY(%s)", (bindings,)
            )
        ]
        for table in SEALED_BY_BINDING:
            # device_id is the compression segment key: filtering on it lets TimescaleDB
            # delete from compressed chunks without decompressing everything.
            rows += conn.execute(
                sql.SQL("DELETE FROM {} WHERE device_id = ANY(%s) AND binding = ANY(%s)").format(
                    sql.Identifier(table)
                ),
                (devices, bindings),
            ).rowcount
        for table in BY_OWNERSHIP_PERIOD:
            rows += conn.execute(
                sql.SQL(
                    "DELETE FROM {} t USING bindings b "
                    "WHERE b.subject_id = %s AND t.device_id = b.device_id "
                    "AND t.ts >= b.bound_at AND (b.unbound_at IS NULL OR t.ts < b.unbound_at)"
                ).format(sql.Identifier(table)),
                (subject_id,),
            ).rowcount
        return rows

    def _release(self, conn: Conn, subject_id: str) -> int:
        devices = [
            str(r[0])
            for r in conn.execute(
                "SELECT device_id FROM bindings WHERE subject_id = %s AND unbound_at IS NULL",
                (subject_id,),
            )
        ]
        for device_id in devices:
            conn.execute("UPDATE device_state SET latest = '{}' WHERE device_id = %s", (device_id,))
            self.release_device(conn, device_id)
        return len(devices)

    def tombstone(self, subject_id: str) -> bytes:
        """The keyed hash that proves an erasure without keeping the id."""
        return hmac.new(self.tombstone_key, subject_id.encode(), hashlib.sha256).digest()

    def reapply_tombstones(self, conn: Conn, actor: Actor) -> list[str]:
        """Erase again any subject a restored backup brought back; returns their ids."""
        subjects = [str(r[0]) for r in conn.execute("SELECT subject_id FROM subjects")]
        hashes = {self.tombstone(s): s for s in subjects}
        found = conn.execute(
            "SELECT subject_hash FROM erasure_tombstones WHERE subject_hash = ANY(%s)",
            (list(hashes),),
        ).fetchall()
        again = [hashes[bytes(r[0])] for r in found]
        for subject_id in again:
            self.erase(conn, actor, subject_id)
        return again


def _reader(event: AuditEvent) -> dict[str, object]:
    """What the subject may see of an event about them (not other subjects' pseudonyms)."""
    return {
        "ts": event.ts,
        "actor_type": event.actor_type,
        "actor_id": event.actor_id,
        "actor_roles": list(event.actor_roles),
        "purpose": event.purpose,
        "legal_basis": event.legal_basis,
        "action": event.action,
        "resource": event.resource,
        "fields": list(event.fields),
        "masked_fields": list(event.masked_fields),
        "decision": event.decision,
    }


def _bindings(conn: Conn, subject_id: str, *, current_only: bool) -> list[str]:
    query: LiteralString = "SELECT binding FROM bindings WHERE subject_id = %s"
    if current_only:
        query += " AND unbound_at IS NULL"
    return [str(r[0]) for r in conn.execute(query, (subject_id,))]


def _has_active(conn: Conn, owner: str, key_class: KeyClass) -> bool:
    row = conn.execute(
        "SELECT 1 FROM data_keys WHERE owner = %s AND key_class = %s AND state = 'active'",
        (owner, int(key_class)),
    ).fetchone()
    return row is not None


def _seal(cipher: FieldCipher, table: str, column: str, row: str, value: str, rand: Rand) -> bytes:
    return cipher.seal(value.encode(), FieldContext(table, column, row), nonce=rand(NONCE_BYTES))


def _portable(row: Mapping[str, object] | object) -> object:
    """JSON-ready: datetimes as ISO 8601, bytes as hex."""
    if isinstance(row, Mapping):
        return {str(k): _portable(v) for k, v in row.items()}
    if isinstance(row, datetime):
        return row.isoformat()
    if isinstance(row, (bytes, memoryview)):
        return bytes(row).hex()
    if isinstance(row, (list, tuple)):
        return [_portable(v) for v in row]
    return row
