"""KEK rotation on the real database: rewrap everything, resume after a kill, never touch data."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, LiteralString

import psycopg
import pytest

from crypto.envelope import data_key_context
from crypto.errors import DecryptionFailed
from crypto.keys import KekRing, KeyClass, parse_root_key, wrap_header
from device_registry.model import RegistryKeys, open_record, root_key_context
from device_registry.postgres import (
    RotationResult,
    count_stale,
    find_by_mac,
    load_records,
    provision,
    rewrap_batch,
    rotate_kek,
    start_rotation,
)
from device_registry.profiles import MODELS
from device_registry.rotation import (
    KekState,
    KekVersion,
    RotationPlan,
    WrappedColumn,
    plan_rotation,
    retirable,
)
from tests.fix_bridge import qnect, qnect_json
from tests.fix_db import create_database, drop_database

Conn = psycopg.Connection[Any]
ACTIVE, RETIRED = KekState.ACTIVE, KekState.RETIRED


@pytest.fixture
def fresh_dsn() -> Iterator[str]:
    """A database of its own: rotation state (kek_versions) is database-wide."""
    dsn = create_database("off")
    yield dsn
    drop_database(dsn)


@pytest.fixture
def fresh(fresh_dsn: str) -> Iterator[Conn]:
    """An autocommit connection to the test's own database."""
    with psycopg.connect(fresh_dsn, autocommit=True) as c:
        yield c


@pytest.fixture(scope="module")
def keys(root_key_file: Path) -> RegistryKeys:
    """The registry keys of the module's root key."""
    return RegistryKeys.from_root_key(parse_root_key(root_key_file.read_text()))


def _fleet(conn: Conn, keys: RegistryKeys, per_model: int = 60) -> list[str]:
    return [c.device_id for m in MODELS for c in provision(conn, keys, m, per_model)]


def _opened(conn: Conn, ring: KekRing, ids: Sequence[str]) -> dict[str, tuple[object, ...]]:
    """Root key, MAC and every data key of each device, as the bridge would open them."""
    out: dict[str, tuple[object, ...]] = {}
    for device_id, record in load_records(conn, ids).items():
        ctx = open_record(record, ring)
        assert ctx is not None
        data = sorted((int(c), f.data_key.key) for c, f in ctx.ciphers.items())
        out[device_id] = (ctx.root_key, ctx.registered_mac, tuple(data))
    return out


def _headers(conn: Conn) -> set[bytes]:
    rows = conn.execute(
        "SELECT substring(root_key_wrapped FROM 1 FOR 3) FROM devices "
        "WHERE root_key_wrapped IS NOT NULL "
        "UNION SELECT substring(wrapped FROM 1 FOR 3) FROM data_keys WHERE wrapped IS NOT NULL"
    ).fetchall()
    return {bytes(r[0]) for r in rows}


def _blobs(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT 'd', device_id, root_key_wrapped, mac_enc FROM devices "
        "UNION ALL SELECT 'k', owner || '/' || key_class || '/' || version, wrapped, NULL "
        "FROM data_keys ORDER BY 1, 2"
    ).fetchall()


def _states(conn: Conn) -> list[tuple[int, str, bool]]:
    return conn.execute(
        "SELECT version, state, retired_at IS NOT NULL FROM kek_versions ORDER BY version"
    ).fetchall()


def _scalar(conn: Conn, query: LiteralString, params: tuple[object, ...] = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def _subject_key(conn: Conn, ring: KekRing, *, destroyed: bool = False) -> tuple[str, bytes]:
    """A subject-owned data key row (as the privacy tables add them), or a destroyed one."""
    material = os.urandom(32)
    owner = "u" + os.urandom(12).hex()
    context = data_key_context(owner, KeyClass.PROFILE, 1)
    blob = ring.wrap(material, version=1, context=context, nonce=os.urandom(12))
    conn.execute(
        "INSERT INTO data_keys (owner, key_class, version, state, wrapped) "
        "VALUES (%s, %s, 1, %s, %s)",
        (
            owner,
            int(KeyClass.PROFILE),
            "destroyed" if destroyed else "active",
            None if destroyed else blob,
        ),
    )
    return owner, material


def test_rotate_kek_rewraps_every_key_and_everything_still_opens(
    fresh: Conn, keys: RegistryKeys, root_key_file: Path
) -> None:
    """After rotation every blob is under v2, records open to the same keys and MAC, v1 retired."""
    ids = _fleet(fresh, keys)
    revoked = ids[0]
    fresh.execute(
        "UPDATE devices SET status = 'revoked', root_key_wrapped = NULL WHERE device_id = %s",
        (revoked,),
    )
    subject, subject_material = _subject_key(fresh, keys.ring)
    _subject_key(fresh, keys.ring, destroyed=True)
    old_ring = KekRing(parse_root_key(root_key_file.read_text()))  # a worker started before
    before = _opened(fresh, old_ring, ids[1:])
    macs_before = {r[1]: r[3] for r in _blobs(fresh) if r[0] == "d"}
    stale = count_stale(fresh, 2)
    wrapped_data_keys = _scalar(fresh, "SELECT count(*) FROM data_keys WHERE wrapped IS NOT NULL")
    assert stale == len(ids) - 1 + wrapped_data_keys
    seen: list[tuple[int, int]] = []

    result = rotate_kek(fresh, keys.ring, batch=97, progress=lambda d, t: seen.append((d, t)))

    assert (result.version, result.created, result.retired) == (2, True, (1,))
    assert result.rewrapped == stale
    assert seen[-1] == (stale, stale)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert _headers(fresh) == {wrap_header(2)}
    assert _states(fresh) == [(1, "retired", True), (2, "active", False)]
    assert _opened(fresh, old_ring, ids[1:]) == before  # opened by a ring made before rotation
    assert {r[1]: r[3] for r in _blobs(fresh) if r[0] == "d"} == macs_before  # data untouched
    blob = _scalar(fresh, "SELECT wrapped FROM data_keys WHERE owner = %s", (subject,))
    context = data_key_context(subject, KeyClass.PROFILE, 1)
    assert keys.ring.unwrap(blob, context=context) == subject_material
    destroyed = "SELECT count(*) FROM data_keys WHERE state = 'destroyed' AND wrapped IS NOT NULL"
    assert _scalar(fresh, destroyed) == 0
    mac = before[ids[5]][1]
    assert find_by_mac(fresh, keys, str(mac)) == [ids[5]]  # the blind index is KEK-independent

    snapshot = _blobs(fresh)
    again = rotate_kek(fresh, keys.ring, to_version=2)
    assert (again.version, again.created, again.rewrapped, again.retired) == (2, False, 0, ())
    assert _blobs(fresh) == snapshot
    assert _states(fresh) == [(1, "retired", True), (2, "active", False)]


def test_interrupted_rotation_is_finished_by_the_command(
    fresh_dsn: str, fresh: Conn, keys: RegistryKeys, root_key_file: Path
) -> None:
    """A rotation killed after a few batches is completed by `qnect keys rotate-kek`, no v3."""
    ids = _fleet(fresh, keys)
    before = _opened(fresh, keys.ring, ids)
    assert start_rotation(fresh) == RotationPlan(2, create=True)
    step = rewrap_batch(fresh, keys.ring, WrappedColumn.ROOT_KEYS, 2, limit=50)
    assert step.rewrapped == 50
    assert step.after is not None
    step = rewrap_batch(fresh, keys.ring, WrappedColumn.ROOT_KEYS, 2, after=step.after, limit=50)
    assert step.rewrapped == 50
    assert rewrap_batch(fresh, keys.ring, WrappedColumn.DATA_KEYS, 2, limit=80).rewrapped == 80
    assert _headers(fresh) == {wrap_header(1), wrap_header(2)}
    remaining = count_stale(fresh, 2)
    assert remaining > 0
    assert _opened(fresh, keys.ring, ids) == before  # half-rotated: both versions open
    assert start_rotation(fresh) == RotationPlan(2, create=False)  # resumes, no new version

    env = dict(os.environ, QNECT_DATABASE_URL=fresh_dsn, QNECT_ROOT_KEY_FILE=str(root_key_file))
    done = qnect_json("keys", "rotate-kek", env=env)
    assert done == {"version": 2, "created": False, "rewrapped": remaining, "retired": [1]}
    assert _headers(fresh) == {wrap_header(2)}
    assert _states(fresh) == [(1, "retired", True), (2, "active", False)]
    assert _opened(fresh, keys.ring, ids) == before
    noop = qnect_json("keys", "rotate-kek", "--to-version", "2", env=env)
    assert noop == {"version": 2, "created": False, "rewrapped": 0, "retired": []}
    wrong = qnect("keys", "rotate-kek", "--to-version", "5", env=env)
    assert wrong.returncode == 2
    assert "next KEK version is 3" in wrong.stderr


def test_provisioning_mid_rotation_wraps_under_the_new_version(
    fresh: Conn, keys: RegistryKeys
) -> None:
    """Once a rotation started, new devices are wrapped under the new version, never the old."""
    start_rotation(fresh)
    ids = [c.device_id for c in provision(fresh, keys, "scale", 5)]
    rows = fresh.execute(
        "SELECT substring(root_key_wrapped FROM 1 FOR 3) FROM devices WHERE device_id = ANY(%s) "
        "UNION SELECT substring(k.wrapped FROM 1 FOR 3) FROM data_keys k "
        "JOIN devices d ON d.binding = k.owner WHERE d.device_id = ANY(%s)",
        (ids, ids),
    ).fetchall()
    assert {bytes(r[0]) for r in rows} == {wrap_header(2)}


def test_blobs_written_under_the_old_version_during_rotation_are_rewrapped_before_retiring(
    fresh_dsn: str, fresh: Conn, keys: RegistryKeys
) -> None:
    """A transaction still writing under v1 delays retirement; its rows are rewrapped too."""
    _fleet(fresh, keys, per_model=4)
    with psycopg.connect(fresh_dsn) as slow:  # not autocommit: one open transaction
        slow.execute("SELECT 1")
        late = [c.device_id for c in provision(slow, keys, "plug", 30)]  # under v1, uncommitted
        outcome: list[RotationResult] = []
        rotation = threading.Thread(
            target=lambda: outcome.append(rotate_kek(fresh, keys.ring, batch=7)), name="rotate"
        )
        rotation.start()
        with psycopg.connect(fresh_dsn, autocommit=True) as probe:
            deadline = time.monotonic() + 10
            while not _scalar(probe, _WAITING):
                assert time.monotonic() < deadline, "retirement did not wait for the writer"
                time.sleep(0.02)
        slow.commit()
        rotation.join(10)
    assert not rotation.is_alive()
    assert outcome[0].retired == (1,)
    assert outcome[0].rewrapped == count_stale(fresh, 1)  # the late rows included
    assert _headers(fresh) == {wrap_header(2)}
    assert _states(fresh) == [(1, "retired", True), (2, "active", False)]
    assert len(_opened(fresh, keys.ring, late)) == 30


_WAITING = (
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
)


def _v(version: int, state: KekState = ACTIVE) -> KekVersion:
    return KekVersion(version, state)


@pytest.mark.parametrize(
    ("versions", "to_version", "plan"),
    [
        ([_v(1)], None, RotationPlan(2, create=True)),
        ([_v(1)], 2, RotationPlan(2, create=True)),
        ([_v(1)], 1, RotationPlan(1, create=False)),
        ([_v(1, RETIRED), _v(2)], None, RotationPlan(3, create=True)),
        ([_v(1, RETIRED), _v(2)], 2, RotationPlan(2, create=False)),
        ([_v(1), _v(2)], None, RotationPlan(2, create=False)),
        ([_v(1), _v(2)], 2, RotationPlan(2, create=False)),
        ([_v(1, RETIRED), _v(2), _v(3)], None, RotationPlan(3, create=False)),
    ],
)
def test_plan_rotation(
    versions: list[KekVersion], to_version: int | None, plan: RotationPlan
) -> None:
    """A finished state starts v+1; an unfinished one (two active) is finished, never extended."""
    assert plan_rotation(versions, to_version) == plan


@pytest.mark.parametrize(
    ("versions", "to_version", "message"),
    [
        ([], None, "no active KEK"),
        ([_v(1, RETIRED)], None, "no active KEK"),
        ([_v(1), _v(2)], 3, "unfinished"),
        ([_v(1), _v(2)], 1, "unfinished"),
        ([_v(1)], 3, "next KEK version is 2"),
        ([_v(1, RETIRED), _v(2)], 1, "next KEK version is 3"),
        ([_v(65535)], None, "no KEK version number left"),
    ],
)
def test_plan_rotation_refuses(
    versions: list[KekVersion], to_version: int | None, message: str
) -> None:
    """Impossible targets are refused with a reason."""
    with pytest.raises(ValueError, match=message):
        plan_rotation(versions, to_version)


def test_retirable_lists_active_versions_but_the_target() -> None:
    """Only active versions other than the target are retired."""
    assert retirable([_v(1, RETIRED), _v(2), _v(4), _v(3)], 4) == [2, 3]
    assert retirable([_v(2)], 2) == []


def test_damaged_blob_stops_rotation_naming_the_row(fresh: Conn, keys: RegistryKeys) -> None:
    """A blob that does not open stops the run with its row named; its batch is not written."""
    device = provision(fresh, keys, "plug", 3)[1].device_id
    fresh.execute(
        "UPDATE devices SET root_key_wrapped = "
        "set_byte(root_key_wrapped, 20, get_byte(root_key_wrapped, 20) # 1) WHERE device_id = %s",
        (device,),
    )
    with pytest.raises(DecryptionFailed) as info:
        rotate_kek(fresh, keys.ring)
    assert info.value.key_id == device
    assert _scalar(fresh, "SELECT count(*) FROM devices WHERE root_key_wrapped IS NULL") == 0
    assert count_stale(fresh, 2) == count_stale(fresh, 3)  # nothing moved to v2 in that batch
    assert _states(fresh) == [(1, "active", False), (2, "active", False)]


def test_pending_and_previous_root_keys_are_rewrapped_too(fresh: Conn, keys: RegistryKeys) -> None:
    """A rotation's staged next key and a decrypt-only previous key move to the new KEK."""
    pending_id, rotated_id = _fleet(fresh, keys, per_model=1)[:2]
    pending_key, current_key = os.urandom(32), os.urandom(32)
    fresh.execute(
        "UPDATE devices SET drk_next_version = 2, drk_next_wrapped = %s WHERE device_id = %s",
        (
            keys.ring.wrap(
                pending_key,
                version=1,
                context=root_key_context(pending_id, 2),
                nonce=os.urandom(12),
            ),
            pending_id,
        ),
    )
    previous_blob = _scalar(
        fresh, "SELECT root_key_wrapped FROM devices WHERE device_id = %s", (rotated_id,)
    )
    previous_key = keys.ring.unwrap(previous_blob, context=root_key_context(rotated_id, 1))
    fresh.execute(
        "UPDATE devices SET drk_version = 2, root_key_wrapped = %s, drk_prev_version = 1, "
        "drk_prev_wrapped = %s, drk_prev_until = now() + interval '1 hour' WHERE device_id = %s",
        (
            keys.ring.wrap(
                current_key,
                version=1,
                context=root_key_context(rotated_id, 2),
                nonce=os.urandom(12),
            ),
            previous_blob,
            rotated_id,
        ),
    )

    rotate_kek(fresh, keys.ring)

    next_blob = _scalar(
        fresh, "SELECT drk_next_wrapped FROM devices WHERE device_id = %s", (pending_id,)
    )
    prev_blob = _scalar(
        fresh, "SELECT drk_prev_wrapped FROM devices WHERE device_id = %s", (rotated_id,)
    )
    assert bytes(next_blob[:3]) == bytes(prev_blob[:3]) == wrap_header(2)
    assert keys.ring.unwrap(next_blob, context=root_key_context(pending_id, 2)) == pending_key
    assert keys.ring.unwrap(prev_blob, context=root_key_context(rotated_id, 1)) == previous_key
    assert count_stale(fresh, 2) == 0
