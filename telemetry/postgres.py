"""PostgreSQL sink of the ingest pipeline: one transaction per batch.

Writes, in order: key exchanges (new epochs), the frame ledger (``INSERT … ON CONFLICT DO
NOTHING`` from a COPY-filled staging table, which is what makes redelivery idempotent on
(device, epoch, counter)), then COPYs of the rows of new frames only, the latest device state
and quarantine rows. Nothing is acknowledged to the broker until this commits.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from device_registry.postgres_ota import OtaAnswer, apply_reports
from device_registry.postgres_rekey import Commit, commit_rotations
from device_registry.sessions import SessionRecord
from privacy.audit import AuditKeys
from privacy.postgres_audit import seal_pending
from privacy.retention import RetentionClass
from telemetry.errors import StorageFailed, Unavailable
from telemetry.pipeline import (
    SEALED_TABLES,
    AcceptedFrame,
    Inbound,
    KeyExchange,
    Outcome,
    Reject,
    utc_from_ms,
)
from telemetry.postgres_layout import compress_due, drop_expired, ensure_ahead, failed_jobs

# Every wait on the database is bounded: a statement, a lock or a silent peer turns into an
# OperationalError the worker retries, never a worker stuck while its batch stays unacked.
CONNECT_OPTIONS: dict[str, Any] = {
    "connect_timeout": 5,
    "options": "-c statement_timeout=30000 -c lock_timeout=10000"
    " -c idle_in_transaction_session_timeout=60000",
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 15000,
}

_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS frames_in (
    ts timestamptz, device_id text, epoch bigint, counter bigint, kind smallint,
    received_at timestamptz
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS state_in (
    device_id text, last_seen timestamptz, last_ts timestamptz, latest jsonb, firmware text,
    rssi smallint, online boolean, presence_epoch bigint, since timestamptz
) ON COMMIT DELETE ROWS
"""
_STATE_TYPES = [
    "text",
    "timestamptz",
    "timestamptz",
    "jsonb",
    "text",
    "int2",
    "bool",
    "int8",
    "timestamptz",
]
# received_at is when the row is written (clock_timestamp, a few ms before COMMIT), so
# publish-to-storage latency can be read from the ledger.
_LEDGER = """
INSERT INTO frames (ts, device_id, epoch, counter, kind, received_at)
SELECT ts, device_id, epoch, counter, kind, clock_timestamp() FROM frames_in
ORDER BY device_id, epoch, counter
ON CONFLICT DO NOTHING RETURNING device_id, epoch, counter
"""
_KX = """
WITH bump AS (
    UPDATE devices SET current_epoch = current_epoch + 1
    WHERE device_id = %(d)s AND status = 'active' AND NOT EXISTS (
        SELECT 1 FROM device_sessions WHERE device_id = %(d)s AND device_nonce = %(nd)s)
    RETURNING current_epoch
)
INSERT INTO device_sessions
    (device_id, epoch, device_nonce, server_nonce, cid, drk_version, established_at)
SELECT %(d)s, current_epoch, %(nd)s, %(ns)s, %(cid)s, %(v)s, %(now)s FROM bump
RETURNING epoch
"""
_SUPERSEDE = """
UPDATE device_sessions SET superseded_at = %(now)s
WHERE device_id = %(d)s AND epoch < %(e)s AND superseded_at IS NULL
"""
_STATE = """
INSERT INTO device_state AS s
    (device_id, last_seen, last_ts, latest, firmware, rssi, online, presence_epoch, since)
SELECT * FROM state_in ORDER BY device_id
ON CONFLICT (device_id) DO UPDATE SET
    last_seen = greatest(s.last_seen, excluded.last_seen),
    last_ts = greatest(s.last_ts, excluded.last_ts),
    latest = CASE WHEN excluded.last_ts IS NULL THEN s.latest
                  WHEN s.last_ts IS NULL OR excluded.last_ts >= s.last_ts
                  THEN s.latest || excluded.latest ELSE excluded.latest || s.latest END,
    firmware = coalesce(excluded.firmware, s.firmware),
    rssi = coalesce(excluded.rssi, s.rssi),
    -- Presence is ordered by session epoch, then time: a late "offline" of session n never
    -- overrides "online" of session n+1.
    online = CASE WHEN excluded.presence_epoch IS NOT NULL AND (s.presence_epoch IS NULL
                  OR (excluded.presence_epoch, excluded.since) >= (s.presence_epoch, s.since))
                  THEN excluded.online ELSE s.online END,
    since = CASE WHEN excluded.presence_epoch IS NOT NULL AND (s.presence_epoch IS NULL
                  OR (excluded.presence_epoch, excluded.since) >= (s.presence_epoch, s.since))
                  THEN excluded.since ELSE s.since END,
    presence_epoch = greatest(s.presence_epoch, excluded.presence_epoch)
"""
_QUARANTINE = """
INSERT INTO quarantine (digest, received_at, last_seen_at, device_id, kind, reason, detail, size,
                        epoch, counter)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (digest) DO UPDATE SET last_seen_at = excluded.last_seen_at,
    occurrences = quarantine.occurrences + %s
"""


@dataclass(slots=True)
class Written:
    """What the database made of a batch."""

    stored: list[AcceptedFrame] = field(default_factory=list)  # new frames
    duplicates: list[AcceptedFrame] = field(default_factory=list)  # already stored before
    sessions: list[tuple[KeyExchange, SessionRecord]] = field(default_factory=list)
    kx_rejects: list[Reject] = field(default_factory=list)
    rotated: list[Commit] = field(default_factory=list)  # root-key rotations committed
    ota: list[OtaAnswer] = field(default_factory=list)  # chunks and cancels to send


@dataclass(slots=True)
class _State:
    last_seen: datetime
    last_ts: datetime | None = None
    latest: dict[str, object] = field(default_factory=dict)
    firmware: str | None = None
    rssi: int | None = None
    online: bool | None = None
    presence_epoch: int | None = None
    since: datetime | None = None

    def presence(self, *, online: bool, epoch: int, at: datetime) -> None:
        if self.presence_epoch is None or (epoch, at) >= (self.presence_epoch, self.since or at):
            self.online, self.presence_epoch, self.since = online, epoch, at


class TelemetryStore:
    """Writes pipeline outcomes over one connection (owned by the caller)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn  # autocommit: each write() is one explicit transaction
        conn.execute(_STAGING)

    def write(self, batch: Sequence[Inbound], outcome: Outcome, *, now: datetime) -> Written:
        """Store one batch atomically; returns what was new, duplicate, and the new sessions."""
        written = Written()
        with self.conn.transaction(), self.conn.cursor() as cur:
            # Before the key exchanges: one under the new root key creates a session under it.
            commits = [
                Commit(r.device_id, r.from_version, r.to_version, utc_from_ms(r.until_ms))
                for r in outcome.rotations
            ]
            written.rotated = commit_rotations(cur, commits)
            self._key_exchanges(cur, outcome.key_exchanges, batch, now, written)
            frames = outcome.accepted + outcome.duplicates_seen
            new = self._ledger(cur, frames, now)
            for frame in frames:
                (written.stored if frame.key in new else written.duplicates).append(frame)
                new.discard(frame.key)  # a second copy in the same batch is a duplicate
            self._rows(cur, written.stored, now)
            self._state(cur, written, outcome, now)
            written.ota = apply_reports(cur, outcome.ota, now=now)
            self._quarantine(cur, batch, outcome.rejects + written.kx_rejects, written, now)
        return written

    def _key_exchanges(
        self,
        cur: psycopg.Cursor[Any],
        exchanges: list[KeyExchange],
        batch: Sequence[Inbound],
        now: datetime,
        written: Written,
    ) -> None:
        for kx in sorted(exchanges, key=lambda k: k.device_id):
            req = kx.request
            params = {
                "d": kx.device_id,
                "nd": req.device_nonce,
                "ns": kx.server_nonce,
                "cid": req.cid,
                "v": req.drk_version,
                "now": now,
            }
            row = cur.execute(_KX, params).fetchone()
            if row is None:
                size = len(batch[kx.index].payload)
                written.kx_rejects.append(
                    Reject(kx.index, kx.device_id, "kx", "kx_replay", "device nonce reused", size)
                )
                continue
            cur.execute(_SUPERSEDE, {"d": kx.device_id, "e": row[0], "now": now})
            record = SessionRecord(
                kx.device_id,
                int(row[0]),
                req.device_nonce,
                kx.server_nonce,
                req.cid,
                None,
                req.drk_version,
            )
            written.sessions.append((kx, record))

    def _ledger(
        self, cur: psycopg.Cursor[Any], frames: list[AcceptedFrame], now: datetime
    ) -> set[tuple[str, int, int]]:
        if not frames:
            return set()
        with cur.copy("COPY frames_in FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["timestamptz", "text", "int8", "int8", "int2", "timestamptz"])
            for f in frames:
                copy.write_row((utc_from_ms(f.ts_ms), f.device_id, f.epoch, f.counter, f.kind, now))
        cur.execute(_LEDGER, binary=True)
        return {(r[0], r[1], r[2]) for r in cur.fetchall()}

    def _rows(self, cur: psycopg.Cursor[Any], frames: list[AcceptedFrame], now: datetime) -> None:
        plain = [
            (utc_from_ms(f.ts_ms), f.device_id, code, value)
            for f in frames
            for code, value in f.plain
        ]
        _copy(cur, "telemetry", "ts, device_id, point, value", plain)
        sealed: dict[str, list[tuple[object, ...]]] = {}
        for f in frames:
            ts = utc_from_ms(f.ts_ms)
            for retention, code, blob in f.sealed:
                table = (
                    "device_info"
                    if retention is RetentionClass.NETWORK
                    else SEALED_TABLES[retention]
                )
                sealed.setdefault(table, []).append(
                    (ts, f.device_id, f.binding, f.epoch, f.counter, code, blob)
                )
        for table, rows in sealed.items():
            _copy(cur, table, "ts, device_id, binding, epoch, counter, point, enc", rows)
        presence = [
            (utc_from_ms(f.ts_ms), f.device_id, f.epoch, f.online, "status")
            for f in frames
            if f.online is not None
        ]
        _copy(cur, "presence_events", "ts, device_id, epoch, online, source", presence)
        del now

    def _state(
        self, cur: psycopg.Cursor[Any], written: Written, outcome: Outcome, now: datetime
    ) -> None:
        states: dict[str, _State] = {}
        for f in written.stored:
            st = states.setdefault(f.device_id, _State(now))
            ts = utc_from_ms(f.ts_ms)
            if f.latest and (st.last_ts is None or ts >= st.last_ts):
                st.latest.update(f.latest)
                st.last_ts = ts
            st.firmware = f.firmware or st.firmware
            st.rssi = f.rssi if f.rssi is not None else st.rssi
            if f.online is not None:
                st.presence(online=f.online, epoch=f.epoch, at=ts)
        for _, session in written.sessions:
            states.setdefault(session.device_id, _State(now)).presence(
                online=True, epoch=session.epoch, at=now
            )
        presence = [(w.device_id, w.epoch, now) for w in outcome.wills]
        for device_id, epoch, at in presence:
            states.setdefault(device_id, _State(now)).presence(online=False, epoch=epoch, at=at)
        _copy(
            cur,
            "presence_events",
            "ts, device_id, epoch, online, source",
            [(now, s.device_id, s.epoch, True, "key_exchange") for _, s in written.sessions]
            + [(at, d, e, False, "will") for d, e, at in presence],
        )
        if not states:
            return
        # Binary COPY into a staging table costs a fraction of binding nine arrays.
        with cur.copy("COPY state_in FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(_STATE_TYPES)
            for device_id in sorted(states):
                st = states[device_id]
                copy.write_row(
                    (
                        device_id,
                        st.last_seen,
                        st.last_ts,
                        Jsonb(st.latest),
                        st.firmware,
                        st.rssi,
                        st.online,
                        st.presence_epoch,
                        st.since,
                    )
                )
        cur.execute(_STATE)

    def _quarantine(
        self,
        cur: psycopg.Cursor[Any],
        batch: Sequence[Inbound],
        rejects: list[Reject],
        written: Written,
        now: datetime,
    ) -> None:
        replays = [
            Reject(
                f.index,
                f.device_id,
                _KIND_NAME[f.kind],
                "replay",
                "frame already stored",
                len(batch[f.index].payload),
                f.epoch,
                f.counter,
            )
            for f in written.duplicates
            if not batch[f.index].dup  # a broker redelivery is not an attack: no reject
        ]
        params = []
        for r in rejects + replays:
            msg = batch[r.index]
            digest = hashlib.sha256(msg.topic.encode() + b"\0" + msg.payload).digest()
            params.append(
                (
                    digest,
                    now,
                    now,
                    r.device_id,
                    r.kind,
                    r.code,
                    r.detail[:200],
                    r.size,
                    r.epoch,
                    r.counter,
                    0 if msg.dup else 1,
                )
            )
        if params:
            cur.executemany(_QUARANTINE, params)


_KIND_NAME = {1: "telemetry", 2: "status", 3: "info"}


# Binary COPY needs each column's type; these are the types of the series tables' columns.
_COLUMN_TYPES = {
    "ts": "timestamptz",
    "device_id": "text",
    "binding": "text",
    "epoch": "int8",
    "counter": "int8",
    "point": "int2",
    "value": "float8",
    "enc": "bytea",
    "online": "bool",
    "source": "text",
}


def _copy(
    cur: psycopg.Cursor[Any], table: str, columns: str, rows: Sequence[tuple[object, ...]]
) -> None:
    if not rows:
        return
    names = columns.split(", ")
    query = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, names))
    )
    with cur.copy(query) as copy:
        copy.set_types([_COLUMN_TYPES[n] for n in names])
        for row in rows:
            copy.write_row(row)


class Database:
    """One worker's connection: opened lazily, dropped on failure, errors translated."""

    def __init__(self, dsn: str, audit_keys: AuditKeys | None = None) -> None:
        """Connect lazily to *dsn*; with *audit_keys*, maintenance also seals the audit log."""
        self._dsn = dsn
        self._audit_keys = audit_keys
        self.conn: psycopg.Connection[Any] | None = None
        self.store: TelemetryStore | None = None

    def open(self) -> TelemetryStore:
        """Return the store, connecting first if needed.

        Raises:
            Unavailable: the database cannot be reached.
        """
        if self.store is not None and self.conn is not None and not self.conn.closed:
            return self.store
        try:
            self.conn = psycopg.connect(self._dsn, autocommit=True, **CONNECT_OPTIONS)
            self.store = TelemetryStore(self.conn)
        except psycopg.OperationalError as exc:
            self.close()
            raise Unavailable("database unreachable") from exc
        return self.store

    def write(self, batch: Sequence[Inbound], outcome: Outcome, *, now: datetime) -> Written:
        """Write through the store, translating driver errors.

        Raises:
            Unavailable: connection lost or the server is shutting down; retry later.
            StorageFailed: the data itself was refused.
        """
        store = self.open()
        try:
            return store.write(batch, outcome, now=now)
        except psycopg.OperationalError as exc:
            self.close()
            raise Unavailable(type(exc).__name__) from exc
        except psycopg.Error as exc:
            self.close()
            raise StorageFailed(exc.sqlstate) from exc

    def maintain(self, now: datetime) -> dict[str, int] | None:
        """Run storage maintenance unless another worker holds the lock; None when skipped."""
        self.open()
        conn = self.conn
        assert conn is not None  # noqa: S101 - open() connected
        try:
            with conn.transaction():
                row = conn.execute(
                    "SELECT pg_try_advisory_xact_lock(%s)", (_MAINTENANCE_LOCK,)
                ).fetchone()
                if not row or not row[0]:
                    return None
                return {
                    "created": ensure_ahead(conn, now),
                    "dropped": len(drop_expired(conn, now)),
                    "compressed": compress_due(conn, now),
                    "failed_jobs": len(failed_jobs(conn)),
                }
        except psycopg.Error as exc:
            self.close()
            raise Unavailable(type(exc).__name__) from exc

    def sweep_presence(self, now: datetime, stale_after: timedelta) -> int:
        """Mark silent devices offline (unless another worker is sweeping); returns how many."""
        self.open()
        conn = self.conn
        assert conn is not None  # noqa: S101 - open() connected
        try:
            with conn.transaction():
                row = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (_SWEEP_LOCK,))
                locked = row.fetchone()
                if not locked or not locked[0]:
                    return 0
                return conn.execute(_SWEEP, {"now": now, "cutoff": now - stale_after}).rowcount
        except psycopg.Error as exc:
            self.close()
            raise Unavailable(type(exc).__name__) from exc

    def seal_audit(self, now: datetime) -> int:
        """Seal pending audit events (if this process holds audit keys); returns how many."""
        if self._audit_keys is None:
            return 0
        self.open()
        assert self.conn is not None  # noqa: S101 - open() connected
        try:
            seal = seal_pending(self.conn, self._audit_keys, now=now)
        except psycopg.Error as exc:
            self.close()
            raise Unavailable(type(exc).__name__) from exc
        return len(seal.seqs) if seal else 0

    def register_session(self, client_id: str) -> None:
        """Record that a bridge session with *client_id* exists at the broker."""
        self.open()
        assert self.conn is not None  # noqa: S101 - open() connected
        self.conn.execute(
            "INSERT INTO bridge_sessions (client_id) VALUES (%s) ON CONFLICT (client_id) "
            "DO UPDATE SET last_start = now()",
            (client_id,),
        )

    def lock_session(self, client_id: str) -> bool:
        """Take the advisory lock of a session to drain, held while this connection lives.

        Returns False when another process holds it (another ``qnect bridge`` drains it).
        """
        self.open()
        assert self.conn is not None  # noqa: S101 - open() connected
        digest = hashlib.sha256(b"qnect-bridge-drain\0" + client_id.encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)
        row = self.conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        return bool(row and row[0])

    def retire_session(self, client_id: str) -> None:
        """Forget a bridge session that was drained and ended."""
        self.open()
        assert self.conn is not None  # noqa: S101
        self.conn.execute("DELETE FROM bridge_sessions WHERE client_id = %s", (client_id,))

    def sessions(self) -> list[str]:
        """Client ids of bridge sessions known to exist at the broker."""
        self.open()
        assert self.conn is not None  # noqa: S101
        return [r[0] for r in self.conn.execute("SELECT client_id FROM bridge_sessions")]

    def devices_online(self) -> int:
        """How many devices the presence state holds online (the bridge's gauge).

        Raises:
            Unavailable: the database cannot be reached.
        """
        self.open()
        assert self.conn is not None  # noqa: S101 - open() connected
        try:
            row = self.conn.execute("SELECT count(*) FROM device_state WHERE online").fetchone()
        except psycopg.Error as exc:
            self.close()
            raise Unavailable(type(exc).__name__) from exc
        return int(row[0]) if row else 0

    def close(self) -> None:
        """Drop the connection (a later call reconnects)."""
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                self.conn.close()
        self.conn = None
        self.store = None


_MAINTENANCE_LOCK = 0x716E6563  # advisory lock id: one worker at a time does maintenance
_SWEEP_LOCK = 0x716E7377  # and one at a time sweeps presence

# Devices marked online whose last accepted frame is older than the cutoff go offline: the
# broker's last will covers a dropped connection, this covers a will that never came (broker
# restarted without its sessions, a will refused). Same epoch, later "since": a fresh report
# of the same session still wins over the sweep, an older one does not.
_SWEEP = """
WITH stale AS (
    UPDATE device_state SET online = false, since = %(now)s
    WHERE online AND last_seen < %(cutoff)s
    RETURNING device_id, presence_epoch
)
INSERT INTO presence_events (ts, device_id, epoch, online, source)
SELECT %(now)s, device_id, coalesce(presence_epoch, 0), false, 'sweep' FROM stale
"""
