"""PostgreSQL adapter of the privacy core: subjects, the consent ledger, data keys, the schema walk.

Owns the ``households``, ``subjects`` and ``consent_events`` tables and the per-subject data
keys in ``data_keys`` (profile fields, audit pseudonyms). Functions run inside the caller's
transaction and never commit. Does not own device keys or bindings (``device_registry``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg

from crypto.envelope import DataKey, FieldCipher, FieldContext, data_key_context
from crypto.keys import KEY_BYTES, NONCE_BYTES, Kek, KeyClass, unwrap, wrap, wrapped_kek_version
from privacy.errors import UnknownSubject
from privacy.purposes import SubjectState

Conn = psycopg.Connection[Any]
Rand = Callable[[int], bytes]
KeyId = tuple[str, KeyClass, int]  # owner, class, version

CONSENT_KINDS = ("grant", "withdraw", "object", "unobject")


class KekLookup(Protocol):
    """Key-encryption keys by version (a dict, or the key ring)."""

    def __getitem__(self, version: int, /) -> Kek:
        """The KEK of *version*."""
        ...


@dataclass(frozen=True, slots=True)
class SubjectRecord:
    """A subject's consent state and lifecycle, as the gate needs it."""

    subject_id: str
    household_id: str
    status: str
    state: SubjectState


def new_id(prefix: str, rand: Rand = os.urandom) -> str:
    """An opaque random id (96 bits) with a one-letter kind prefix."""
    return prefix + rand(12).hex()


def create_household(conn: Conn, rand: Rand = os.urandom) -> str:
    """Create an empty household; returns its id."""
    household_id = new_id("h", rand)
    conn.execute("INSERT INTO households (household_id) VALUES (%s)", (household_id,))
    return household_id


def add_data_key(conn: Conn, kek: Kek, owner: str, key_class: KeyClass, rand: Rand) -> DataKey:
    """Create the next version of *owner*'s data key of *key_class*, wrapped under *kek*."""
    row = conn.execute(
        "SELECT coalesce(max(version), 0) + 1 FROM data_keys WHERE owner = %s AND key_class = %s",
        (owner, int(key_class)),
    ).fetchone()
    version = int(row[0]) if row else 1
    key = DataKey(owner, key_class, version, rand(KEY_BYTES))
    blob = wrap(
        kek,
        key.key,
        context=data_key_context(owner, key_class, version),
        nonce=rand(NONCE_BYTES),
    )
    conn.execute(
        "UPDATE data_keys SET state = 'decrypt_only' "
        "WHERE owner = %s AND key_class = %s AND state = 'active'",
        (owner, int(key_class)),
    )
    conn.execute(
        "INSERT INTO data_keys (owner, key_class, version, wrapped) VALUES (%s, %s, %s, %s)",
        (owner, int(key_class), version, blob),
    )
    return key


def create_subject(
    conn: Conn,
    kek: Kek,
    household_id: str,
    *,
    email: str,
    name: str | None,
    rand: Rand = os.urandom,
) -> str:
    """Create a data subject with its profile and pseudonym keys; returns the subject id."""
    subject_id = new_id("u", rand)
    profile = FieldCipher(add_data_key(conn, kek, subject_id, KeyClass.PROFILE, rand))
    add_data_key(conn, kek, subject_id, KeyClass.PSEUDONYM, rand)

    def seal(column: str, value: str) -> bytes:
        context = FieldContext("subjects", column, subject_id)
        return profile.seal(value.encode(), context, nonce=rand(NONCE_BYTES))

    conn.execute(
        "INSERT INTO subjects (subject_id, household_id, email_enc, name_enc) "
        "VALUES (%s, %s, %s, %s)",
        (
            subject_id,
            household_id,
            seal("email_enc", email),
            seal("name_enc", name) if name is not None else None,
        ),
    )
    return subject_id


def record_consent(
    conn: Conn, subject_id: str, key: str, kind: str, *, policy_version: str, source: str
) -> int:
    """Append one event to the consent ledger; returns its sequence number.

    Raises:
        ValueError: *kind* is not grant, withdraw, object or unobject.
        UnknownSubject: no such subject.
    """
    if kind not in CONSENT_KINDS:
        raise ValueError(f"unknown consent event kind {kind!r}")
    try:
        row = conn.execute(
            "INSERT INTO consent_events (subject_id, consent_key, kind, policy_version, source) "
            "VALUES (%s, %s, %s, %s, %s) RETURNING seq",
            (subject_id, key, kind, policy_version, source),
        ).fetchone()
    except psycopg.errors.ForeignKeyViolation as exc:
        raise UnknownSubject(subject_id) from exc
    return int(row[0]) if row else 0


_STATES = """
SELECT s.subject_id, s.household_id, s.status, s.restricted,
       coalesce(array_agg(l.consent_key) FILTER (WHERE l.kind = 'grant'), '{}'),
       coalesce(array_agg(l.consent_key) FILTER (WHERE l.kind = 'object'), '{}')
FROM subjects s
LEFT JOIN LATERAL (
    SELECT DISTINCT ON (e.consent_key, e.kind IN ('object', 'unobject'))
           e.consent_key, e.kind
    FROM consent_events e WHERE e.subject_id = s.subject_id
    ORDER BY e.consent_key, e.kind IN ('object', 'unobject'), e.seq DESC
) l ON true
WHERE s.subject_id = ANY(%s)
GROUP BY s.subject_id
"""


def subject_records(conn: Conn, subject_ids: Iterable[str]) -> dict[str, SubjectRecord]:
    """Current consent state of each existing subject: the latest ledger event per key wins.

    Consents (grant/withdraw) and objections (object/unobject) are separate tracks of the
    ledger, so objecting to a purpose does not erase the record of an earlier consent.
    """
    rows = conn.execute(_STATES, (list(subject_ids),)).fetchall()
    return {
        str(sid): SubjectRecord(
            str(sid),
            str(household),
            str(status),
            SubjectState(frozenset(grants), frozenset(objections), bool(restricted)),
        )
        for sid, household, status, restricted, grants, objections in rows
    }


def household_subjects(conn: Conn, household_id: str) -> list[str]:
    """Subjects of a household."""
    rows = conn.execute(
        "SELECT subject_id FROM subjects WHERE household_id = %s ORDER BY subject_id",
        (household_id,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def all_subjects(conn: Conn) -> list[str]:
    """Every subject (bulk purposes such as a marketing run)."""
    return [str(r[0]) for r in conn.execute("SELECT subject_id FROM subjects ORDER BY 1")]


def open_data_keys(
    conn: Conn, keks: KekLookup, wanted: Iterable[tuple[str, KeyClass]]
) -> dict[KeyId, FieldCipher]:
    """Unwrap the usable (active or decrypt-only) data keys of the wanted (owner, class) pairs.

    Only these are unwrapped: a purpose that may not read health data never opens a health key.
    Destroyed keys are absent, so their ciphertexts stay closed.
    """
    pairs = sorted(set(wanted))
    if not pairs:
        return {}
    rows = conn.execute(
        "SELECT k.owner, k.key_class, k.version, k.wrapped FROM data_keys k "
        "JOIN unnest(%s::text[], %s::smallint[]) AS w(owner, key_class) "
        "ON k.owner = w.owner AND k.key_class = w.key_class "
        "WHERE k.state <> 'destroyed' AND k.wrapped IS NOT NULL",
        ([o for o, _ in pairs], [int(c) for _, c in pairs]),
    ).fetchall()
    ciphers: dict[KeyId, FieldCipher] = {}
    for owner, key_class, version, blob in rows:
        cls = KeyClass(key_class)
        raw = unwrap(
            keks[wrapped_kek_version(blob)],
            blob,
            context=data_key_context(owner, cls, version),
        )
        ciphers[(owner, cls, version)] = FieldCipher(DataKey(owner, cls, version, raw))
    return ciphers


def destroy_data_keys(conn: Conn, owners: Iterable[str], classes: Iterable[KeyClass] = ()) -> int:
    """Crypto-shred: drop the wrapped keys of *owners* (all classes unless *classes* given)."""
    owner_list, class_list = list(owners), [int(c) for c in classes]
    cur = conn.execute(
        "UPDATE data_keys SET state = 'destroyed', wrapped = NULL "
        "WHERE owner = ANY(%s) AND state <> 'destroyed' "
        "AND (cardinality(%s::smallint[]) = 0 OR key_class = ANY(%s::smallint[]))",
        (owner_list, class_list, class_list),
    )
    return cur.rowcount


def pseudonym_keys(conn: Conn, keks: KekLookup, subject_ids: Iterable[str]) -> Mapping[str, bytes]:
    """Each subject's active audit-pseudonym key (absent once the subject is erased)."""
    ciphers = open_data_keys(conn, keks, ((s, KeyClass.PSEUDONYM) for s in subject_ids))
    latest: dict[str, tuple[int, bytes]] = {}
    for (owner, _cls, version), cipher in ciphers.items():
        if version > latest.get(owner, (0, b""))[0]:
            latest[owner] = (version, cipher.data_key.key)
    return {owner: key for owner, (_v, key) in latest.items()}


_LIVE_COLUMNS = """
SELECT c.relname, a.attname
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition
ORDER BY 1, 2
"""


def live_columns(conn: Conn) -> list[tuple[str, str]]:
    """Every column of the application's tables (partitions and chunks excluded)."""
    return [(str(t), str(c)) for t, c in conn.execute(_LIVE_COLUMNS)]
