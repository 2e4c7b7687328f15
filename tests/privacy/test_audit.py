"""Audit log: canonical events and seals (pure), then the append-only tables on real PostgreSQL.

Tampering is done the way an attacker with DBA access would do it: as the superuser, with the
append-only triggers explicitly disabled for the statement.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest

from crypto.keys import parse_root_key
from privacy.audit import (
    CANONICAL_TAG,
    GENESIS_SEAL_HASH,
    AuditEvent,
    AuditKeys,
    Seal,
    VerifyReport,
    canonical,
    entry_mac,
    make_seal,
    seal_hash,
    seal_intact,
    sign_seal,
    signature_valid,
    subject_ref,
)
from privacy.errors import AuditUnavailable, InvalidAuditEvent
from privacy.postgres_audit import (
    EVENT_COLUMNS,
    events_for_subject,
    seal_pending,
    verify,
    write_event,
)
from tests.fix_bridge import qnect

KEYS = AuditKeys.from_root(bytes(range(32)))
T0 = datetime(2025, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
LATER = T0 + timedelta(seconds=10)
REF = bytes([7]) * 32
TRIGGERS = {
    "audit_events": ("audit_events_no_change", "audit_events_no_truncate"),
    "audit_seals": ("audit_seals_no_change", "audit_seals_no_truncate"),
}
Conn = psycopg.Connection[Any]


def event(**changes: Any) -> AuditEvent:
    """A typical staff read of one subject's health data."""
    base = AuditEvent(
        event_id=uuid.uuid4(),
        ts=T0,
        actor_type="staff",
        actor_id="support-7",
        actor_roles=("support",),
        purpose="provide_service",
        legal_basis="contract",
        art9_condition="explicit_consent",
        policy_version="v3@ab12cd",
        action="read",
        resource="scale_readings",
        fields=("weight", "ts"),
        masked_fields=("body_fat",),
        denied_fields=("location",),
        categories=("user.health_and_medical",),
        subject_refs=(REF,),
        decision="partial",
        result="ok",
        row_count=3,
        reason="ticket-42",
        key_ids=("health/1",),
    )
    return dataclasses.replace(base, **changes)


def as_attacker(conn: Conn, *statements: str) -> None:
    """Run *statements* as a DBA who switched the append-only triggers off for them."""
    with conn.transaction():
        for table in TRIGGERS:
            conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        for statement in statements:
            conn.execute(statement)
        for table, names in TRIGGERS.items():
            for name in names:
                conn.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {name}")


@pytest.fixture
def log(conn: Conn) -> Conn:
    """An autocommit superuser connection to an empty audit log."""
    as_attacker(conn, "TRUNCATE audit_events, audit_seals RESTART IDENTITY")
    return conn


def write(conn: Conn, count: int, **changes: Any) -> list[int]:
    """Write *count* events; returns their seqs."""
    return [write_event(conn, KEYS, event(**changes)) for _ in range(count)]


# --- pure: events, keys, seals ---------------------------------------------------------------


def test_event_columns_follow_the_dataclass() -> None:
    """The adapter's column list is exactly AuditEvent's fields, in order."""
    assert EVENT_COLUMNS.split(", ") == [f.name for f in dataclasses.fields(AuditEvent)]


def test_canonical_covers_every_field_with_fixed_forms() -> None:
    """The encoding is tagged, has every field, UTC microsecond times, hex bytes, str UUIDs."""
    ev = event(event_id=uuid.UUID(int=1), reason=None)
    raw = canonical(ev)
    assert raw.startswith(CANONICAL_TAG)
    doc = json.loads(raw[len(CANONICAL_TAG) :])
    assert set(doc) == {f.name for f in dataclasses.fields(AuditEvent)}
    assert doc["ts"] == "2025-03-04T05:06:07.890123Z"
    assert doc["subject_refs"] == [REF.hex()]
    assert doc["event_id"] == "00000000-0000-0000-0000-000000000001"
    assert doc["reason"] is None
    assert doc["fields"] == ["weight", "ts"]


def test_canonical_is_deterministic_and_unambiguous() -> None:
    """Same instant in another zone encodes the same; joined or split lists do not collide."""
    ev = event()
    paris = timezone(timedelta(hours=1))
    assert canonical(ev) == canonical(dataclasses.replace(ev, ts=T0.astimezone(paris)))
    assert canonical(event(fields=("a,b",))) != canonical(event(fields=("a", "b")))
    assert canonical(event(reason=None)) != canonical(event(reason="None"))
    assert canonical(event(actor_id='x","y')) != canonical(event(actor_id="x", reason="y"))


def test_every_field_change_changes_the_mac() -> None:
    """The MAC covers each field: changing any one of them changes it."""
    ev = event()
    altered: dict[str, Any] = {
        "event_id": uuid.uuid4(),
        "ts": T0 + timedelta(microseconds=1),
        "actor_type": "system",
        "actor_id": "support-8",
        "actor_roles": ("support", "dpo"),
        "purpose": "marketing",
        "legal_basis": None,
        "art9_condition": None,
        "policy_version": "v4@ab12cd",
        "action": "export",
        "resource": "devices",
        "fields": ("weight",),
        "masked_fields": (),
        "denied_fields": (),
        "categories": (),
        "subject_refs": (REF, REF),
        "decision": "deny",
        "result": "error:timeout",
        "row_count": 4,
        "reason": None,
        "key_ids": (),
    }
    assert list(altered) == [f.name for f in dataclasses.fields(AuditEvent)]
    for name, value in altered.items():
        assert entry_mac(KEYS, dataclasses.replace(ev, **{name: value})) != entry_mac(KEYS, ev)


@pytest.mark.parametrize(
    "changes",
    [
        {"ts": datetime(2025, 1, 1)},  # noqa: DTZ001  # the naive time is the point
        {"actor_type": "robot"},
        {"decision": "maybe"},
        {"subject_refs": (b"subject-1",)},
        {"row_count": -1},
        {"row_count": 2**31},
    ],
    ids=["naive-ts", "actor-type", "decision", "raw-subject", "negative-rows", "huge-rows"],
)
def test_malformed_events_are_refused(changes: dict[str, Any]) -> None:
    """Naive times, unknown kinds, raw subject ids and impossible counts never become events."""
    with pytest.raises(InvalidAuditEvent):
        event(**changes)


def test_keys_are_derived_apart_and_macs_are_keyed() -> None:
    """MAC and seal keys differ; another root key gives other keys and other MACs."""
    other = AuditKeys.from_root(bytes(range(1, 33)))
    assert KEYS.mac_key != other.mac_key
    assert KEYS.public_key != other.public_key
    assert len(KEYS.public_key) == 32
    seed = KEYS.signing_key.private_bytes_raw()
    assert seed != KEYS.mac_key
    ev = event()
    assert entry_mac(KEYS, ev) != entry_mac(other, ev)
    assert "mac_key" not in repr(KEYS)
    assert KEYS.mac_key.hex() not in repr(KEYS)


def test_subject_refs_are_keyed_pseudonyms() -> None:
    """A reference is stable per (key, subject), differs across keys and subjects, hides the id."""
    key, other = bytes(32), bytes([1]) * 32
    ref = subject_ref(key, "alice")
    assert ref == subject_ref(key, "alice")
    assert len(ref) == 32
    assert ref not in {subject_ref(other, "alice"), subject_ref(key, "alicf")}
    assert b"alice" not in ref


def test_seal_chain_hash_binds_every_input() -> None:
    """The seal hash changes with the previous hash, root, number and seq list."""
    root = bytes([9]) * 32
    base = seal_hash(GENESIS_SEAL_HASH, root, 1, [1, 2])
    variants = [
        seal_hash(bytes([1]) * 32, root, 1, [1, 2]),
        seal_hash(GENESIS_SEAL_HASH, bytes(32), 1, [1, 2]),
        seal_hash(GENESIS_SEAL_HASH, root, 2, [1, 2]),
        seal_hash(GENESIS_SEAL_HASH, root, 1, [1, 3]),
        seal_hash(GENESIS_SEAL_HASH, root, 1, [1]),
    ]
    assert base not in variants
    with pytest.raises(ValueError, match="32 bytes"):
        seal_hash(GENESIS_SEAL_HASH[:31], root, 1, [1])
    with pytest.raises(ValueError, match="out of range"):
        seal_hash(GENESIS_SEAL_HASH, root, 1, [-1])


def test_seal_intact_checks_link_signer_and_signature() -> None:
    """A made seal checks out; a wrong link, key, signature, hash or root length does not."""
    seal = make_seal(
        KEYS, seal_no=1, prev_seal_hash=GENESIS_SEAL_HASH, entries=[(1, REF)], sealed_at=T0
    )
    good = {"prev_seal_hash": GENESIS_SEAL_HASH, "public_key": KEYS.public_key}
    assert seal_intact(seal, **good)
    other = AuditKeys.from_root(bytes(range(1, 33)))
    assert not seal_intact(seal, prev_seal_hash=bytes([1]) * 32, public_key=KEYS.public_key)
    assert not seal_intact(seal, prev_seal_hash=GENESIS_SEAL_HASH, public_key=other.public_key)
    for bad in (
        {"signature": other.signing_key.sign(seal.seal_hash)},
        {"seal_hash": bytes(32)},
        {"merkle_root": seal.merkle_root[:31]},
        {"seqs": (2,)},
        {"public_key": other.public_key},
    ):
        assert not seal_intact(dataclasses.replace(seal, **bad), **good)


def test_seal_signatures_verify_only_under_their_key() -> None:
    """A seal signature verifies under its key only; malformed keys or signatures are False."""
    digest = bytes([3]) * 32
    signature = sign_seal(KEYS, digest)
    assert signature_valid(KEYS.public_key, digest, signature)
    assert not signature_valid(KEYS.public_key, bytes(32), signature)
    assert not signature_valid(AuditKeys.from_root(bytes(32)).public_key, digest, signature)
    assert not signature_valid(b"short", digest, signature)
    assert not signature_valid(KEYS.public_key, digest, signature[:10])


def test_report_is_ok_only_without_findings() -> None:
    """Unsealed rows are fine; any edit, deletion, insertion or broken seal is not."""
    clean = VerifyReport(3, 2, (3,), (), (), (), ())
    assert clean.ok
    assert json.loads(json.dumps(clean.to_json())) == {
        "ok": True,
        "checked_rows": 3,
        "sealed_rows": 2,
        "unsealed_rows": [3],
        "edited": [],
        "deleted": [],
        "inserted": [],
        "broken_seals": [],
    }
    for finding in ("edited", "deleted", "inserted", "broken_seals"):
        changes: dict[str, Any] = {finding: (1,)}
        assert not dataclasses.replace(clean, **changes).ok


# --- PostgreSQL: append-only, write, seal, verify ----------------------------------------------


def in_replica_mode(conn: Conn, statement: str) -> None:
    """Run *statement* with session_replication_role = replica (which skips ordinary triggers)."""
    with conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute(statement)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET actor_id = 'x'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
        "UPDATE audit_seals SET sealed_at = now()",
        "DELETE FROM audit_seals",
        "TRUNCATE audit_seals",
    ],
)
def test_database_refuses_changes(log: Conn, statement: str) -> None:
    """UPDATE, DELETE and TRUNCATE on either table fail, also in replica mode."""
    write(log, 2)
    assert seal_pending(log, KEYS, now=LATER) is not None
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        log.execute(statement)
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        in_replica_mode(log, statement)
    assert verify(log, KEYS).sealed_rows == 2


def test_fifty_events_seal_and_verify(log: Conn) -> None:
    """Fifty events are sealed in one signed seal and the whole log verifies."""
    seqs = write(log, 50)
    seal = seal_pending(log, KEYS, now=LATER)
    assert seal is not None
    assert (seal.seal_no, seal.seqs, seal.prev_seal_hash) == (1, tuple(seqs), GENESIS_SEAL_HASH)
    assert seal_pending(log, KEYS, now=LATER) is None
    report = verify(log, KEYS)
    assert report.ok
    assert (report.checked_rows, report.sealed_rows, report.unsealed_rows) == (50, 50, ())


def test_negative_min_age_is_refused(log: Conn) -> None:
    """A negative min_age would let a seal take rows younger than itself: refused."""
    with pytest.raises(ValueError, match="min_age"):
        seal_pending(log, KEYS, now=LATER, min_age=timedelta(seconds=-1))


def test_recent_rows_wait_and_seals_chain(log: Conn) -> None:
    """Rows younger than min_age wait; limit splits the backlog into chained seals."""
    seqs = write(log, 5)
    assert seal_pending(log, KEYS, now=T0 + timedelta(seconds=1)) is None
    assert verify(log, KEYS).unsealed_rows == tuple(seqs)
    seals = [seal_pending(log, KEYS, now=LATER, limit=2) for _ in range(3)]
    assert [s.seqs for s in seals if s] == [tuple(seqs[:2]), tuple(seqs[2:4]), (seqs[4],)]
    assert [s.seal_no for s in seals if s] == [1, 2, 3]
    report = verify(log, KEYS)
    assert report.ok
    assert report.sealed_rows == 5


@pytest.mark.parametrize(
    "change",
    [
        "actor_id = 'X' || substr(actor_id, 2)",
        "purpose = 'X' || substr(purpose, 2)",
        "subject_refs[1] = set_byte(subject_refs[1], 0, get_byte(subject_refs[1], 0) # 1)",
        "ts = ts + interval '1 microsecond'",
        "row_count = row_count + 1",
        "decision = 'allow'",
    ],
)
def test_one_byte_edit_is_reported(log: Conn, change: str) -> None:
    """Changing one value of a sealed row puts exactly that seq in `edited`."""
    write(log, 10)
    seal_pending(log, KEYS, now=LATER)
    as_attacker(log, f"UPDATE audit_events SET {change} WHERE seq = 5")  # noqa: S608
    report = verify(log, KEYS)
    assert not report.ok
    assert report.edited == (5,)
    assert (report.deleted, report.inserted, report.broken_seals) == ((), (), ())


def test_edited_mac_also_breaks_the_seal(log: Conn) -> None:
    """Replacing a row's stored MAC is an edit, and its seal's Merkle root no longer matches."""
    write(log, 4)
    seal_pending(log, KEYS, now=LATER)
    as_attacker(log, flip("audit_events", "entry_mac", "seq = 2"))
    report = verify(log, KEYS)
    assert (report.edited, report.broken_seals) == ((2,), (1,))


def test_deleted_row_is_reported(log: Conn) -> None:
    """A sealed row that disappears is listed in `deleted`."""
    write(log, 10)
    seal_pending(log, KEYS, now=LATER)
    as_attacker(log, "DELETE FROM audit_events WHERE seq = 7")
    report = verify(log, KEYS)
    assert not report.ok
    assert (report.deleted, report.edited, report.broken_seals) == ((7,), (), ())
    assert report.sealed_rows == 9


def test_inserted_row_is_reported_and_never_sealed(log: Conn) -> None:
    """A row inserted with plain SQL and a made-up MAC is `inserted`; the sealer leaves it out."""
    write(log, 3)
    seal_pending(log, KEYS, now=LATER)
    row = log.execute(
        "INSERT INTO audit_events (event_id, ts, actor_type, actor_id, actor_roles, purpose,"
        " policy_version, action, resource, fields, masked_fields, denied_fields, categories,"
        " subject_refs, decision, result, row_count, key_ids, entry_mac) VALUES"
        " (gen_random_uuid(), %s, 'staff', 'intruder', '{}', 'provide_service', 'v3', 'read',"
        " 'x', '{}', '{}', '{}', '{}', '{}', 'allow', 'ok', 0, '{}', %s) RETURNING seq",
        (T0, bytes(32)),
    ).fetchone()
    assert row is not None
    write(log, 1)
    seal = seal_pending(log, KEYS, now=LATER)
    assert seal is not None
    assert row[0] not in seal.seqs
    report = verify(log, KEYS)
    assert (report.inserted, report.edited, report.broken_seals) == ((row[0],), (), ())
    assert not report.ok


def _two_seals(log: Conn) -> None:
    write(log, 3)
    seal_pending(log, KEYS, now=LATER)
    write(log, 3)
    seal_pending(log, KEYS, now=LATER)


def flip(table: str, column: str, where: str) -> str:
    """SQL that flips the lowest bit of the first byte of a bytea column."""
    change = f"{column} = set_byte({column}, 0, get_byte({column}, 0) # 1)"
    return f"UPDATE {table} SET {change} WHERE {where}"  # noqa: S608


@pytest.mark.parametrize(
    ("statements", "broken"),
    [
        ([flip("audit_seals", "merkle_root", "seal_no = 1")], (1,)),
        ([flip("audit_seals", "seal_hash", "seal_no = 1")], (1, 2)),
        ([flip("audit_seals", "signature", "seal_no = 2")], (2,)),
        (["UPDATE audit_seals SET leaf_count = 2 WHERE seal_no = 1"], (1,)),
        (["UPDATE audit_seals SET seqs = seqs[1:2] WHERE seal_no = 1"], (1,)),
        (
            [
                (
                    "UPDATE audit_seals a SET merkle_root = b.merkle_root FROM audit_seals b"
                    " WHERE a.seal_no <> b.seal_no"
                )
            ],
            (1, 2),
        ),
        (["DELETE FROM audit_seals WHERE seal_no = 1"], (2,)),
    ],
    ids=["root", "seal-hash", "signature", "leaf-count", "seqs", "swapped-roots", "deleted"],
)
def test_edited_seals_are_broken(log: Conn, statements: list[str], broken: tuple[int]) -> None:
    """Any change to a seal's fields, or a gap in the chain, lands in `broken_seals`."""
    _two_seals(log)
    as_attacker(log, *statements)
    report = verify(log, KEYS)
    assert report.broken_seals == broken
    assert not report.ok


def test_forged_seal_duplicating_seqs(log: Conn) -> None:
    """A seal re-listing sealed rows is broken, and those rows count as inserted."""
    _two_seals(log)
    other = AuditKeys.from_root(bytes(range(1, 33)))
    forged = make_seal(
        other, seal_no=3, prev_seal_hash=bytes(32), entries=[(4, bytes(32))], sealed_at=LATER
    )
    log.execute(
        "INSERT INTO audit_seals SELECT 3, seqs, leaf_count, %s, seal_hash, seal_hash, %s, %s,"
        " sealed_at FROM audit_seals WHERE seal_no = 2",
        (forged.merkle_root, forged.signature, forged.public_key),
    )
    report = verify(log, KEYS)
    assert report.inserted == (4, 5, 6)
    assert report.broken_seals == (3,)


def test_deleting_the_newest_seal_leaves_its_rows_unsealed(log: Conn) -> None:
    """Truncating the chain is invisible in-database: its rows are simply pending again."""
    _two_seals(log)
    as_attacker(log, "DELETE FROM audit_seals WHERE seal_no = 2")
    report = verify(log, KEYS)
    assert report.unsealed_rows == (4, 5, 6)
    assert report.ok  # hence seals are also exported to write-once storage


def test_late_commit_is_sealed_exactly_once(log: Conn, db_dsn: str) -> None:
    """A lower seq committed after a seal is sealed by the next seal, once, and verifies."""
    with psycopg.connect(db_dsn) as a, psycopg.connect(db_dsn) as b:
        (late,) = write(a, 1)
        (early,) = write(b, 1)
        b.commit()
        assert late < early
        first = seal_pending(log, KEYS, now=LATER)
        assert first is not None
        assert first.seqs == (early,)
        a.commit()
    second = seal_pending(log, KEYS, now=LATER)
    assert second is not None
    assert (second.seal_no, second.seqs) == (2, (late,))
    assert seal_pending(log, KEYS, now=LATER) is None
    report = verify(log, KEYS)
    assert report.ok
    assert (report.sealed_rows, report.unsealed_rows, report.inserted) == (2, (), ())


def test_concurrent_sealers_keep_one_chain(log: Conn, db_dsn: str) -> None:
    """Sealers running at once queue on the advisory lock: every row sealed once, chain intact."""
    write(log, 40)
    results: list[Seal | None] = []

    def run() -> None:
        with psycopg.connect(db_dsn, autocommit=True) as own:
            results.extend(seal_pending(own, KEYS, now=LATER, limit=7) for _ in range(4))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sealed = [s for s in results if s is not None]
    assert sorted(seq for s in sealed for seq in s.seqs) == list(range(1, 41))
    report = verify(log, KEYS)
    assert report.ok
    assert report.sealed_rows == 40


def test_events_for_subject_finds_by_pseudonym(log: Conn) -> None:
    """Events naming a pseudonym are found (newest first); others are not."""
    alice, bob = subject_ref(bytes(32), "alice"), subject_ref(bytes([1]) * 32, "bob")
    a1 = write_event(log, KEYS, event(subject_refs=(alice,)))
    write_event(log, KEYS, event(subject_refs=(bob,)))
    a2 = write_event(log, KEYS, event(subject_refs=(bob, alice), action="export"))
    found = events_for_subject(log, alice, limit=10)
    assert [r.seq for r in found] == [a2, a1]
    assert found[0].event.action == "export"
    assert found[0].event.subject_refs == (bob, alice)
    assert events_for_subject(log, alice, limit=1)[0].seq == a2
    assert events_for_subject(log, REF, limit=10) == []


def test_stored_event_reads_back_identical(log: Conn) -> None:
    """What is read back equals what was written, so its MAC recomputes."""
    ev = event(subject_refs=(REF,), key_ids=(), reason=None, legal_basis=None)
    write_event(log, KEYS, ev)
    (record,) = events_for_subject(log, REF, limit=5)
    assert record.event == ev
    assert entry_mac(KEYS, record.event) == entry_mac(KEYS, ev)


def test_failed_audit_write_returns_and_keeps_nothing(log: Conn) -> None:
    """When the audit insert fails the read raises, and nothing of its transaction remains."""
    ev = event()
    write_event(log, KEYS, ev)

    def audited_read() -> list[Any]:
        with log.transaction():
            rows = log.execute("SELECT 42").fetchall()
            write_event(log, KEYS, event())
            write_event(log, KEYS, ev)  # duplicate event_id: the insert fails
            return rows

    with pytest.raises(AuditUnavailable) as info:
        audited_read()
    assert isinstance(info.value.__cause__, psycopg.errors.UniqueViolation)
    count = log.execute("SELECT count(*) FROM audit_events").fetchone()
    assert count == (1,)


def test_cli_seal_and_verify_exit_codes(log: Conn, db_dsn: str, root_key_file: Path) -> None:
    """`qnect audit seal` seals; `qnect audit verify` exits 0 when clean and 1 after an edit."""
    keys = AuditKeys.from_root(parse_root_key(root_key_file.read_text()))
    now = datetime.now(UTC) - timedelta(minutes=1)
    for _ in range(3):
        write_event(log, keys, event(ts=now))
    env = dict(os.environ, QNECT_DATABASE_URL=db_dsn, QNECT_ROOT_KEY_FILE=str(root_key_file))
    sealed = qnect("audit", "seal", env=env)
    assert sealed.returncode == 0, sealed.stderr
    assert json.loads(sealed.stdout.strip().splitlines()[-1]) == {"seal_no": 1, "rows": 3}
    clean = qnect("audit", "verify", "--json", env=env)
    assert clean.returncode == 0, clean.stderr
    assert json.loads(clean.stdout)["ok"] is True
    as_attacker(log, "UPDATE audit_events SET actor_id = 'someone-else' WHERE seq = 2")
    dirty = qnect("audit", "verify", "--json", env=env)
    assert dirty.returncode == 1
    assert json.loads(dirty.stdout)["edited"] == [2]
