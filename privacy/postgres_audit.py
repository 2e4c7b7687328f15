"""PostgreSQL adapter of the audit log: write events, seal them, verify everything, search.

Owns the ``audit_events`` and ``audit_seals`` tables (``0004_audit.sql``). ``write_event`` runs
inside the caller's transaction, so the event commits with the read or write it records, or not
at all. ``seal_pending`` is the single sealer (an advisory lock serialises it); ``verify`` streams
both tables with server-side cursors and reports edits, deletions, insertions and broken seals.
The hashing, MACs and signatures are in ``privacy.audit``; this module only moves rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import islice
from typing import Any, LiteralString

import psycopg
from prometheus_client import Counter

from privacy.audit import (
    DECISIONS,
    GENESIS_SEAL_HASH,
    AuditEvent,
    AuditKeys,
    Seal,
    VerifyReport,
    entries_root,
    entry_mac,
    mac_matches,
    make_seal,
    seal_intact,
)
from privacy.errors import AuditUnavailable, InvalidAuditEvent

Conn = psycopg.Connection[Any]

# qnect_audit_events_total (deploy/metrics.md), by decision: process-wide like a logger, so the
# API and the bridge expose what their processes wrote. Counted at the insert: an event whose
# transaction is then rolled back (and whose read therefore returned nothing) counts as well.
AUDIT_EVENTS = Counter("qnect_audit_events", "Audit events written, by decision", ["decision"])
for _decision in sorted(DECISIONS):
    AUDIT_EVENTS.labels(_decision)  # every decision's series exists from the start, at 0

SEAL_LOCK = 0x716E6164  # advisory lock id of the sealer ("qnad"); migrations use 0x716E6D67
FETCH_ROWS = 2000  # rows per server-side fetch: bounded memory, few round trips
MIN_AGE = timedelta(seconds=2)  # most writers commit within this; the rest are found later
LATE_WINDOW = timedelta(minutes=15)  # far longer than an audited transaction stays open
# Must list AuditEvent's fields in declaration order (a test checks it).
EVENT_COLUMNS: LiteralString = (
    "event_id, ts, actor_type, actor_id, actor_roles, purpose, legal_basis, art9_condition, "
    "policy_version, action, resource, fields, masked_fields, denied_fields, categories, "
    "subject_refs, decision, result, row_count, reason, key_ids"
)
# Rows of audit_events are read as (seq, *EVENT_COLUMNS, entry_mac[, listed seq]).
_EVENT = slice(1, 22)
_MAC = 22
_LISTED = 23
_INSERT: LiteralString = (
    "INSERT INTO audit_events (" + EVENT_COLUMNS + ", entry_mac) VALUES (" + "%s, " * 21 + "%s)"
    " RETURNING seq"
)
# Candidates: every row above the highest sealed seq, plus rows of the late-commit window that no
# seal lists (a transaction that took a seq early and committed after a seal). Only seals made
# since the window opened can list a row of the window, because a seal only takes rows older than
# its own time; the anti-join therefore never reads the whole seal history.
_PENDING: LiteralString = (
    "SELECT * FROM (SELECT e.seq, " + EVENT_COLUMNS + ", e.entry_mac FROM audit_events e"  # noqa: S608  # constant columns
    " WHERE e.seq > %(floor)s AND e.ts < %(cutoff)s"
    " UNION ALL SELECT e.seq, " + EVENT_COLUMNS + ", e.entry_mac FROM audit_events e"
    " WHERE e.seq <= %(floor)s AND e.ts >= %(since)s AND e.ts < %(cutoff)s AND NOT EXISTS"
    " (SELECT 1 FROM audit_seals s CROSS JOIN LATERAL unnest(s.seqs) AS u(seq)"
    " WHERE s.sealed_at >= %(since)s AND u.seq = e.seq)) AS pending"
    " ORDER BY seq LIMIT %(limit)s"
)
_INSERT_SEAL: LiteralString = (
    "INSERT INTO audit_seals (seal_no, seqs, leaf_count, merkle_root, prev_seal_hash, seal_hash,"
    " signature, public_key, sealed_at) VALUES (%s, %s::bigint[], %s, %s, %s, %s, %s, %s, %s)"
)
_SEALS: LiteralString = (
    "SELECT seal_no, seqs, leaf_count, merkle_root, prev_seal_hash, seal_hash, signature,"
    " public_key, sealed_at FROM audit_seals ORDER BY seal_no"
)
# One row per listed seq, in seal order then list order; e.seq is NULL when the row is gone.
_SEALED_ROWS: LiteralString = (
    "SELECT e.seq, " + EVENT_COLUMNS + ", e.entry_mac, u.seq FROM audit_seals s"  # noqa: S608  # constant columns
    " CROSS JOIN LATERAL unnest(s.seqs) WITH ORDINALITY AS u(seq, ord)"
    " LEFT JOIN audit_events e ON e.seq = u.seq ORDER BY s.seal_no, u.ord"
)
_TWICE: LiteralString = (
    "SELECT u.seq FROM audit_seals s CROSS JOIN LATERAL unnest(s.seqs) AS u(seq)"
    " GROUP BY u.seq HAVING count(*) > 1 ORDER BY u.seq"
)
_UNSEALED: LiteralString = (
    "SELECT e.seq, " + EVENT_COLUMNS + ", e.entry_mac FROM audit_events e WHERE NOT EXISTS"  # noqa: S608  # constant columns
    " (SELECT 1 FROM audit_seals s CROSS JOIN LATERAL unnest(s.seqs) AS u(seq)"
    " WHERE u.seq = e.seq) ORDER BY e.seq"
)
_BY_SUBJECT: LiteralString = (
    "SELECT e.seq, " + EVENT_COLUMNS + ", e.entry_mac FROM audit_events e"  # noqa: S608  # constant columns
    " WHERE e.subject_refs @> ARRAY[%s]::bytea[] ORDER BY e.seq DESC LIMIT %s"
)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """A stored audit event with its position in the log."""

    seq: int
    event: AuditEvent


def _params(event: AuditEvent) -> list[object]:
    values = (getattr(event, name) for name in EVENT_COLUMNS.split(", "))
    return [list(v) if isinstance(v, tuple) else v for v in values]  # psycopg: lists -> arrays


def write_event(conn: Conn, keys: AuditKeys, event: AuditEvent) -> int:
    """Insert one audit event with its MAC, in the caller's transaction; never commits.

    Args:
        conn: a connection, normally inside the transaction of the access being audited.
        keys: the audit keys (the MAC key is used).
        event: the event to record.

    Returns:
        The event's ``seq``.

    Raises:
        AuditUnavailable: the insert failed (the caller's transaction is then aborted: roll it
            back and return nothing).
    """
    mac = entry_mac(keys, event)
    try:
        row = conn.execute(_INSERT, [*_params(event), mac]).fetchone()
    except psycopg.Error as exc:
        raise AuditUnavailable("audit event not written") from exc
    if row is None:  # INSERT ... RETURNING yields the row; anything else is not a write
        raise AuditUnavailable("audit event not written")
    AUDIT_EVENTS.labels(event.decision).inc()
    return int(row[0])


def events_for_subject(conn: Conn, ref: bytes, limit: int = 100) -> list[AuditRecord]:
    """Audit events naming a subject's pseudonym, newest first ("who accessed my data").

    Args:
        conn: any connection.
        ref: the subject's reference (``privacy.audit.subject_ref``).
        limit: at most this many events.

    Returns:
        The events with their sequence numbers.
    """
    rows = conn.execute(_BY_SUBJECT, (ref, limit)).fetchall()
    return [AuditRecord(int(row[0]), _event(row[_EVENT])) for row in rows]


def seal_pending(
    conn: Conn,
    keys: AuditKeys,
    *,
    now: datetime,
    min_age: timedelta = MIN_AGE,
    limit: int = 50_000,
    late_window: timedelta = LATE_WINDOW,
) -> Seal | None:
    """Seal the authentic rows that no seal lists yet, as the next seal of the chain.

    Runs in its own transaction (a savepoint if the caller has one open) under an advisory lock,
    so sealers queue up and never fork the chain. Rows whose MAC does not verify are left out;
    ``verify`` reports them as inserted.

    Args:
        conn: a connection, idle or in a transaction.
        keys: the audit keys (MAC key to check rows, signing key for the seal).
        now: the sealer's clock; stored as ``sealed_at``.
        min_age: only rows whose ``ts`` is at least this old, so most writers have committed.
        limit: at most this many rows in one seal (lowest seqs first).
        late_window: how long after its ``ts`` a row that committed late (below the highest
            sealed seq) is still looked for; older stragglers stay unsealed and ``verify``
            lists them.

    Returns:
        The new seal, or None when nothing was pending.

    Raises:
        ValueError: *min_age* is negative (seals could then take rows younger than themselves).
    """
    if min_age < timedelta(0):
        raise ValueError("min_age must not be negative")
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SEAL_LOCK,))
        last = conn.execute(
            "SELECT seal_no, seal_hash FROM audit_seals ORDER BY seal_no DESC LIMIT 1"
        ).fetchone()
        window = {
            "cutoff": now - min_age,
            "since": now - late_window,
            "floor": _highest_sealed(conn),
            "limit": limit,
        }
        with _stream(conn, "audit_seal_pending", _PENDING, window) as rows:
            entries = [(int(r[0]), bytes(r[_MAC])) for r in rows if _authentic(keys, r)]
        if not entries:
            return None
        seal = make_seal(
            keys,
            seal_no=last[0] + 1 if last else 1,
            prev_seal_hash=bytes(last[1]) if last else GENESIS_SEAL_HASH,
            entries=entries,
            sealed_at=now,
        )
        conn.execute(_INSERT_SEAL, _seal_params(seal))
    return seal


def verify(conn: Conn, keys: AuditKeys) -> VerifyReport:
    """Check every row and seal of the audit log in one consistent snapshot, streaming.

    Call it on an idle connection: it runs its own REPEATABLE READ, READ ONLY transaction.
    A sealed row whose content no longer matches its MAC is *edited*; if its stored MAC was
    replaced as well, its seal's Merkle root also fails and the seal is reported *broken*.

    Args:
        conn: an idle connection.
        keys: the audit keys (MAC key, and the public key seals must be signed with).

    Returns:
        The report; ``report.ok`` is False on any finding other than unsealed rows.
    """
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        found = _check_seals(conn, keys)
        twice = [int(r[0]) for r in conn.execute(_TWICE)]
        pending, forged = _check_unsealed(conn, keys)
    return VerifyReport(
        checked_rows=found.sealed_rows + len(pending) + len(forged),
        sealed_rows=found.sealed_rows,
        unsealed_rows=tuple(pending),
        edited=tuple(sorted(found.edited)),
        deleted=tuple(sorted(found.deleted)),
        inserted=tuple(sorted({*forged, *twice})),
        broken_seals=tuple(found.broken),
    )


@dataclass(slots=True)
class _Findings:
    """What the pass over the seals found (mutable while that pass runs)."""

    sealed_rows: int = 0
    edited: list[int] = field(default_factory=list)
    deleted: list[int] = field(default_factory=list)
    broken: list[int] = field(default_factory=list)


def _check_seals(conn: Conn, keys: AuditKeys) -> _Findings:
    found = _Findings()
    prev = GENESIS_SEAL_HASH
    with (
        _stream(conn, "audit_verify_seals", _SEALS) as seals,
        _stream(conn, "audit_verify_rows", _SEALED_ROWS) as listed,
    ):
        members = iter(listed)
        for row in seals:
            seal, leaf_count = _seal(row)
            intact = leaf_count == len(seal.seqs) and seal_intact(
                seal, prev_seal_hash=prev, public_key=keys.public_key
            )
            entries = _check_members(keys, islice(members, len(seal.seqs)), found)
            if not (intact and (entries is None or entries_root(entries) == seal.merkle_root)):
                found.broken.append(seal.seal_no)
            prev = seal.seal_hash
    return found


def _check_members(
    keys: AuditKeys, rows: Iterator[Sequence[Any]], found: _Findings
) -> list[tuple[int, bytes]] | None:
    """Check one seal's rows; returns their leaves, or None when a row is missing."""
    entries: list[tuple[int, bytes]] | None = []
    for row in rows:
        listed_seq = int(row[_LISTED])
        if row[0] is None:
            found.deleted.append(listed_seq)
            entries = None
            continue
        found.sealed_rows += 1
        if not _authentic(keys, row):
            found.edited.append(listed_seq)
        if entries is not None:
            entries.append((listed_seq, bytes(row[_MAC])))
    return entries


def _check_unsealed(conn: Conn, keys: AuditKeys) -> tuple[list[int], list[int]]:
    pending: list[int] = []
    forged: list[int] = []
    with _stream(conn, "audit_verify_unsealed", _UNSEALED) as rows:
        for row in rows:
            (pending if _authentic(keys, row) else forged).append(int(row[0]))
    return pending, forged


def _highest_sealed(conn: Conn) -> int:
    # seals list seqs ascending, so each seal's last element is its highest (indexed expression)
    row = conn.execute("SELECT max(seqs[cardinality(seqs)]) FROM audit_seals").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


@contextmanager
def _stream(
    conn: Conn, name: str, query: LiteralString, params: dict[str, Any] | None = None
) -> Iterator[psycopg.ServerCursor[Any]]:
    """A server-side cursor over *query*, fetched in chunks (inside the current transaction)."""
    with conn.cursor(name=name) as cur:
        cur.itersize = FETCH_ROWS
        cur.execute(query, params)
        yield cur


def _event(values: Sequence[Any]) -> AuditEvent:
    """An event from its columns as PostgreSQL returns them (arrays come back as lists)."""
    args: list[Any] = [tuple(v) if isinstance(v, list) else v for v in values]
    return AuditEvent(*args)


def _authentic(keys: AuditKeys, row: Sequence[Any]) -> bool:
    """Does the row's stored MAC match the event it holds?"""
    try:
        return mac_matches(keys, _event(row[_EVENT]), row[_MAC])
    except (InvalidAuditEvent, AttributeError, TypeError):  # altered beyond a valid event
        return False


def _seal(row: Sequence[Any]) -> tuple[Seal, int]:
    """A stored seal and its recorded leaf count."""
    # columns 3..8 are merkle_root .. sealed_at, in Seal's field order
    return Seal(int(row[0]), tuple(row[1] or ()), *row[3:9]), row[2]


def _seal_params(seal: Seal) -> tuple[object, ...]:
    return (
        seal.seal_no,
        list(seal.seqs),
        len(seal.seqs),
        seal.merkle_root,
        seal.prev_seal_hash,
        seal.seal_hash,
        seal.signature,
        seal.public_key,
        seal.sealed_at,
    )
