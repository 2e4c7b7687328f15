"""PostgreSQL adapter of the device registry: provisioning, loading, finding, KEK rotation.

Owns the ``devices``, ``data_keys`` and ``kek_versions`` tables. Root keys and data keys only
ever reach the database wrapped under a key-encryption key, with associated data naming their
owner; the KEK version to wrap under is read, under a row lock, in the transaction that stores
the blob, so a rotation can tell when no blob is left under an older version.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, LiteralString

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from crypto.blind_index import mac_value, normalise_mac
from crypto.envelope import DataKey, FieldCipher, data_key_context
from crypto.keys import KEY_BYTES, KekRing, KeyClass, wrap_header
from device_registry.errors import RegistryUnavailable, UnknownModel
from device_registry.model import (
    REGISTRY_MAC_CONTEXT,
    DeviceId,
    DeviceRecord,
    DeviceStatus,
    RegistryKeys,
    StoredRootKey,
    WrappedDataKey,
    new_device_id,
    random_mac,
    registered_mac,
    root_key_context,
)
from device_registry.profiles import PROFILES
from device_registry.rotation import (
    Cursor,
    KekState,
    KekVersion,
    RotationPlan,
    WrappedColumn,
    WrappedKey,
    data_key_row,
    plan_rotation,
    retirable,
    rewrap_rows,
    root_key_row,
)
from device_registry.sessions import SessionRecord

Random = Callable[[int], bytes]


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the factory line writes into a device (and the simulator reads)."""

    device_id: DeviceId
    model: str
    drk_version: int
    root_key: bytes = field(repr=False)
    mac: str = field(repr=False)
    mqtt_password: str = field(repr=False)  # for brokers with static passwords (dynsec)

    def to_json(self) -> dict[str, object]:
        """Serialise for the credentials file."""
        return {
            "device_id": self.device_id,
            "model": self.model,
            "drk_version": self.drk_version,
            "root_key": self.root_key.hex(),
            "mac": self.mac,
            "mqtt_password": self.mqtt_password,
        }


def key_classes(model: str) -> set[KeyClass]:
    """The data key classes a device of *model* needs: network, plus its points' classes."""
    classes = {KeyClass.NETWORK}
    classes.update(p.key_class for p in PROFILES[model].points if p.key_class is not None)
    return classes


def factory_key_classes(model: str) -> set[KeyClass]:
    """The data keys of an unowned device: never a health key.

    Art. 9: health readings are stored only under an owner's explicit consent, which creates
    the binding's health key (``privacy.postgres_dsr.Rights.consent``); without one the
    pipeline refuses scale readings with ``no_health_consent``.
    """
    return key_classes(model) - {KeyClass.HEALTH}


_CURRENT_KEK = """
SELECT version FROM kek_versions WHERE state = 'active' ORDER BY version DESC LIMIT 1 FOR SHARE
"""


def current_kek_version(conn: psycopg.Connection[Any]) -> int:
    """The KEK version new blobs are wrapped under; call it in the transaction storing them.

    The row stays share-locked until that transaction ends, so a rotation cannot retire the
    version while blobs wrapped under it are still being written.
    """
    row = conn.execute(_CURRENT_KEK).fetchone()
    if row is None:
        raise RuntimeError("no active KEK version (run `qnect migrate`)")
    return int(row[0])


def provision(
    conn: psycopg.Connection[Any],
    keys: RegistryKeys,
    model: str,
    count: int,
    rand: Random = os.urandom,
) -> list[Credentials]:
    """Create *count* devices of *model* with fresh root keys, in one transaction.

    Keys are wrapped under the current KEK version; the MAC blind index is filled.

    Raises:
        UnknownModel: *model* has no profile.
    """
    if model not in PROFILES:
        raise UnknownModel(model)
    with conn.transaction():
        kek_version = current_kek_version(conn)
        creds, devices, data_keys = _new_devices(keys, kek_version, model, count, rand)
        with conn.cursor() as cur:
            with cur.copy(
                "COPY devices (device_id, model, binding, root_key_wrapped, mac_enc, mac_bidx) "
                "FROM STDIN"
            ) as copy:
                for row in devices:
                    copy.write_row(row)
            with cur.copy("COPY data_keys (owner, key_class, version, wrapped) FROM STDIN") as copy:
                for row in data_keys:
                    copy.write_row(row)
    return creds


def _new_devices(
    keys: RegistryKeys, kek_version: int, model: str, count: int, rand: Random
) -> tuple[list[Credentials], list[tuple[object, ...]], list[tuple[object, ...]]]:
    ring = keys.ring
    creds: list[Credentials] = []
    devices: list[tuple[object, ...]] = []
    data_keys: list[tuple[object, ...]] = []
    for _ in range(count):
        device_id = new_device_id(rand(16))
        binding = "b" + rand(12).hex()  # pseudonymous owner binding until the device is paired
        root, mac = rand(KEY_BYTES), random_mac(rand(6))
        network = DataKey(binding, KeyClass.NETWORK, 1, rand(KEY_BYTES))
        for key_class in factory_key_classes(model):
            material = network.key if key_class is KeyClass.NETWORK else rand(KEY_BYTES)
            context = data_key_context(binding, key_class, 1)
            wrapped = ring.wrap(material, version=kek_version, context=context, nonce=rand(12))
            data_keys.append((binding, int(key_class), 1, wrapped))
        wrapped_root = ring.wrap(
            root, version=kek_version, context=root_key_context(device_id, 1), nonce=rand(12)
        )
        mac_enc = FieldCipher(network).seal(mac.encode(), REGISTRY_MAC_CONTEXT, nonce=rand(12))
        bidx = mac_value(keys.mac_index, mac)
        devices.append((device_id, model, binding, wrapped_root, mac_enc, bidx))
        creds.append(Credentials(device_id, model, 1, root, mac, keys.broker.device(device_id)))
    return creds, devices, data_keys


_LOAD = """
SELECT d.device_id, d.model, d.status, d.binding, d.drk_version, d.root_key_wrapped, d.mac_enc,
       d.current_epoch, s.established_at AS current_since,
       d.drk_prev_version, d.drk_prev_wrapped, d.drk_prev_until,
       d.drk_next_version, d.drk_next_wrapped,
       coalesce(array_agg(k.key_class ORDER BY k.key_class)
                FILTER (WHERE k.key_class IS NOT NULL), '{}') AS key_classes,
       coalesce(array_agg(k.version ORDER BY k.key_class)
                FILTER (WHERE k.key_class IS NOT NULL), '{}') AS key_versions,
       coalesce(array_agg(k.wrapped ORDER BY k.key_class)
                FILTER (WHERE k.key_class IS NOT NULL), '{}') AS key_blobs,
       EXISTS (
           SELECT 1 FROM bindings b
           CROSS JOIN LATERAL (
               SELECT e.kind FROM consent_events e
               WHERE e.subject_id = b.subject_id AND e.consent_key = 'precise_location'
                 AND e.kind IN ('grant', 'withdraw')
               ORDER BY e.seq DESC LIMIT 1
           ) c
           WHERE b.binding = d.binding AND c.kind = 'grant'
       ) AS precise_location
FROM devices d
LEFT JOIN device_sessions s ON s.device_id = d.device_id AND s.epoch = d.current_epoch
LEFT JOIN data_keys k ON k.owner = d.binding AND k.state = 'active'
WHERE d.device_id = ANY(%s)
GROUP BY d.device_id, s.established_at
"""


def load_records(
    conn: psycopg.Connection[Any], device_ids: Iterable[str]
) -> dict[str, DeviceRecord]:
    """Load devices (with wrapped keys and current epoch) by id; unknown ids are absent."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_LOAD, (list(device_ids),))
        rows = cur.fetchall()
    return {
        r["device_id"]: DeviceRecord(
            device_id=DeviceId(r["device_id"]),
            model=r["model"],
            status=DeviceStatus(r["status"]),
            binding=r["binding"],
            drk_version=r["drk_version"],
            root_key_wrapped=r["root_key_wrapped"],
            mac_enc=r["mac_enc"],
            current_epoch=r["current_epoch"],
            current_since=r["current_since"],
            data_keys=tuple(
                WrappedDataKey(KeyClass(c), v, b)
                for c, v, b in zip(r["key_classes"], r["key_versions"], r["key_blobs"], strict=True)
            ),
            precise_location=r["precise_location"],
            previous_root=_stored_root(r, "prev"),
            pending_root=_stored_root(r, "next"),
        )
        for r in rows
    }


def _stored_root(row: dict[str, Any], which: str) -> StoredRootKey | None:
    version = row[f"drk_{which}_version"]
    if version is None:
        return None
    return StoredRootKey(version, row[f"drk_{which}_wrapped"], row.get(f"drk_{which}_until"))


# Ordered by epoch: a connection that re-keyed (root-key rotation) has several sessions under
# one cid, and its last will belongs to the newest.
_SESSIONS = """
SELECT s.device_id, s.epoch, s.device_nonce, s.server_nonce, s.cid, s.superseded_at,
       s.drk_version
FROM device_sessions s
JOIN unnest(%s::text[], %s::bigint[]) AS k(device_id, value)
  ON s.device_id = k.device_id AND s.{column} = k.value
ORDER BY s.epoch
"""


class PostgresDeviceSource:
    """Loads devices and sessions for the bridge's directory cache over one connection."""

    def __init__(self, conn: Callable[[], psycopg.Connection[Any] | None]) -> None:
        self._conn = conn

    def _connection(self) -> psycopg.Connection[Any]:
        conn = self._conn()
        if conn is None or conn.closed:
            raise RegistryUnavailable("no database connection")
        return conn

    def devices(self, device_ids: Collection[str]) -> Mapping[str, DeviceRecord]:
        """Load device records by id.

        Raises:
            RegistryUnavailable: the database cannot be reached.
        """
        try:
            return load_records(self._connection(), device_ids)
        except psycopg.OperationalError as exc:
            raise RegistryUnavailable(type(exc).__name__) from exc

    def sessions(
        self, keys: Collection[tuple[str, int]]
    ) -> Mapping[tuple[str, int], SessionRecord]:
        """Load sessions by (device id, epoch)."""
        return {(r.device_id, r.epoch): r for r in self._query("epoch", keys)}

    def sessions_by_cid(
        self, keys: Collection[tuple[str, int]]
    ) -> Mapping[tuple[str, int], SessionRecord]:
        """Load sessions by (device id, connection id)."""
        return {(r.device_id, r.cid): r for r in self._query("cid", keys)}

    def _query(self, column: str, keys: Collection[tuple[str, int]]) -> list[SessionRecord]:
        query = sql.SQL(_SESSIONS).format(column=sql.Identifier(column))
        try:
            with self._connection().cursor() as cur:
                cur.execute(query, ([k[0] for k in keys], [k[1] for k in keys]))
                return [SessionRecord(*row) for row in cur.fetchall()]
        except psycopg.OperationalError as exc:
            raise RegistryUnavailable(type(exc).__name__) from exc


# -- MAC lookup --------------------------------------------------------------------------------
def mac_candidates(conn: psycopg.Connection[Any], keys: RegistryKeys, mac: str) -> list[DeviceId]:
    """Devices whose MAC blind index matches *mac*: a superset of the answer, never decrypted.

    Raises:
        ValueError: *mac* is not a MAC address.
    """
    value = mac_value(keys.mac_index, mac)
    rows = conn.execute(
        "SELECT device_id FROM devices WHERE mac_bidx = %s ORDER BY device_id", (value,)
    ).fetchall()
    return [DeviceId(r[0]) for r in rows]


def find_by_mac(conn: psycopg.Connection[Any], keys: RegistryKeys, mac: str) -> list[DeviceId]:
    """Devices registered with *mac* (any spelling): index candidates, decrypted and compared.

    This is the raw lookup: it records no purpose and no audit entry. Support tooling must go
    through the privacy gate's audited wrapper (to be added there), not call this directly.

    Raises:
        ValueError: *mac* is not a MAC address.
        DecryptionFailed: a candidate's network key or MAC envelope does not open.
    """
    wanted = normalise_mac(mac)
    candidates = mac_candidates(conn, keys, wanted)
    records = load_records(conn, candidates)
    return [
        DeviceId(device_id)
        for device_id in candidates
        if (record := records.get(device_id)) is not None
        and (found := registered_mac(record, keys.ring)) is not None
        and normalise_mac(found) == wanted
    ]


# -- KEK rotation ------------------------------------------------------------------------------
REWRAP_BATCH = 2000  # rows per transaction: short locks, and a killed run loses little work


@dataclass(frozen=True, slots=True)
class RewrapBatch:
    """Outcome of one batch: rows rewritten, and where the next batch starts (None: done)."""

    rewrapped: int
    after: Cursor | None


@dataclass(frozen=True, slots=True)
class RotationResult:
    """Outcome of ``rotate_kek``."""

    version: int
    created: bool
    rewrapped: int
    retired: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _ColumnSql:
    start: Cursor
    select: LiteralString
    update: LiteralString
    stale: LiteralString
    row: Callable[..., WrappedKey]


def _root_key_column(version: LiteralString, blob: LiteralString) -> _ColumnSql:
    """The rewrap SQL of one (version, wrapped blob) pair of root-key columns in ``devices``."""
    return _ColumnSql(
        start=("",),
        select=f"""
SELECT device_id, {version}, {blob} FROM devices
WHERE device_id > %s AND {blob} IS NOT NULL AND substring({blob} FROM 1 FOR 3) <> %s
ORDER BY device_id LIMIT %s""",  # noqa: S608 - column names are this module's literals
        update=f"""
UPDATE devices d SET {blob} = n.new
FROM unnest(%s::text[], %s::bytea[], %s::bytea[]) AS n(device_id, old, new)
WHERE d.device_id = n.device_id AND d.{blob} = n.old""",  # noqa: S608
        stale=f"""
SELECT count(*) FROM devices
WHERE {blob} IS NOT NULL AND substring({blob} FROM 1 FOR 3) <> %s""",  # noqa: S608
        row=root_key_row,
    )


# Stale = a blob whose header (format, KEK version) is not the target's ``wrap_header``.
_COLUMNS = {
    WrappedColumn.ROOT_KEYS: _root_key_column("drk_version", "root_key_wrapped"),
    # The pending key of a root-key rotation, and the previous one (decrypt-only in its grace).
    WrappedColumn.NEXT_ROOT_KEYS: _root_key_column("drk_next_version", "drk_next_wrapped"),
    WrappedColumn.PREV_ROOT_KEYS: _root_key_column("drk_prev_version", "drk_prev_wrapped"),
    WrappedColumn.DATA_KEYS: _ColumnSql(
        start=("", -1, -1),
        select="""
SELECT owner, key_class, version, wrapped FROM data_keys
WHERE (owner, key_class, version) > (%s, %s, %s)
  AND state <> 'destroyed' AND wrapped IS NOT NULL AND substring(wrapped FROM 1 FOR 3) <> %s
ORDER BY owner, key_class, version LIMIT %s""",
        update="""
UPDATE data_keys k SET wrapped = n.new
FROM unnest(%s::text[], %s::smallint[], %s::integer[], %s::bytea[], %s::bytea[])
     AS n(owner, key_class, version, old, new)
WHERE (k.owner, k.key_class, k.version) = (n.owner, n.key_class, n.version)
  AND k.wrapped = n.old""",
        stale="""
SELECT count(*) FROM data_keys
WHERE state <> 'destroyed' AND wrapped IS NOT NULL AND substring(wrapped FROM 1 FOR 3) <> %s""",
        row=data_key_row,
    ),
}


def kek_versions(conn: psycopg.Connection[Any]) -> list[KekVersion]:
    """All rows of ``kek_versions``, oldest first."""
    rows = conn.execute("SELECT version, state FROM kek_versions ORDER BY version").fetchall()
    return [KekVersion(v, KekState(s)) for v, s in rows]


def start_rotation(conn: psycopg.Connection[Any], to_version: int | None = None) -> RotationPlan:
    """Plan a rotation run and create its target version if the plan says so (one transaction).

    Concurrent starts are serialised by a table lock that provisioning does not wait for.

    Raises:
        ValueError: see ``plan_rotation``.
    """
    with conn.transaction():
        conn.execute("LOCK TABLE kek_versions IN SHARE ROW EXCLUSIVE MODE")
        plan = plan_rotation(kek_versions(conn), to_version)
        if plan.create:
            conn.execute("INSERT INTO kek_versions (version) VALUES (%s)", (plan.target,))
    return plan


def count_stale(conn: psycopg.Connection[Any], target: int) -> int:
    """Blobs (root keys and data keys) not wrapped under KEK *target*."""
    header = wrap_header(target)
    return sum(
        int(conn.execute(spec.stale, (header,)).fetchall()[0][0]) for spec in _COLUMNS.values()
    )


def rewrap_batch(
    conn: psycopg.Connection[Any],
    ring: KekRing,
    column: WrappedColumn,
    target: int,
    *,
    after: Cursor | None = None,
    limit: int = REWRAP_BATCH,
    rand: Random = os.urandom,
) -> RewrapBatch:
    """Rewrap up to *limit* stale blobs of *column* after *after*, atomically.

    A row changed meanwhile (revoked, destroyed) is left as it is: the update only replaces
    the blob that was read. A later pass or ``count_stale`` sees whatever is still stale.

    Raises:
        DecryptionFailed: a blob does not open under its KEK; nothing of the batch is written.
    """
    spec = _COLUMNS[column]
    start = spec.start if after is None else after
    with conn.transaction():
        rows = conn.execute(spec.select, (*start, wrap_header(target), limit)).fetchall()
        done = rewrap_rows(ring, (spec.row(*r) for r in rows), target, rand)
        written = 0
        if done:
            keys = [list(part) for part in zip(*(d.key for d in done), strict=True)]
            params = (*keys, [d.old for d in done], [d.new for d in done])
            written = conn.execute(spec.update, params).rowcount
    last = tuple(rows[-1][: len(spec.start)]) if len(rows) == limit else None
    return RewrapBatch(written, last)


def retire_old_versions(conn: psycopg.Connection[Any], target: int) -> tuple[int, ...] | None:
    """Retire every active version but *target* if no blob is wrapped under them any more.

    Returns the versions retired now, or ``None`` while stale blobs remain (rewrap again).
    Waits for provisioning transactions still writing blobs under an older version.
    """
    with conn.transaction():
        old = retirable(kek_versions(conn), target)
        conn.execute("SELECT version FROM kek_versions WHERE version = ANY(%s) FOR UPDATE", (old,))
        if count_stale(conn, target):
            return None
        conn.execute(
            "UPDATE kek_versions SET state = 'retired', retired_at = now() WHERE version = ANY(%s)",
            (old,),
        )
    return tuple(old)


def rotate_kek(
    conn: psycopg.Connection[Any],
    ring: KekRing,
    *,
    to_version: int | None = None,
    batch: int = REWRAP_BATCH,
    rand: Random = os.urandom,
    progress: Callable[[int, int], None] | None = None,
) -> RotationResult:
    """Rotate to a new KEK version, or finish an unfinished rotation (resumable, idempotent).

    Needs an autocommit connection (each batch is its own transaction). *progress* gets
    (rewrapped so far, total to rewrap) after each batch.

    Raises:
        ValueError: see ``plan_rotation``.
        DecryptionFailed: a blob does not open; its ``key_id`` names the row.
    """
    plan = start_rotation(conn, to_version)
    total, done = count_stale(conn, plan.target), 0

    def on_batch(rewrapped: int) -> None:
        nonlocal done
        done += rewrapped
        if progress is not None:
            progress(done, max(total, done))

    while True:  # again if provisioning wrote blobs under an older version meanwhile
        for column in WrappedColumn:
            _rewrap_column(conn, ring, column, plan.target, batch, rand, on_batch)
        retired = retire_old_versions(conn, plan.target)
        if retired is not None:
            return RotationResult(plan.target, plan.create, done, retired)


def _rewrap_column(
    conn: psycopg.Connection[Any],
    ring: KekRing,
    column: WrappedColumn,
    target: int,
    batch: int,
    rand: Random,
    on_batch: Callable[[int], None],
) -> None:
    after: Cursor | None = None
    while True:
        step = rewrap_batch(conn, ring, column, target, after=after, limit=batch, rand=rand)
        on_batch(step.rewrapped)
        if (after := step.after) is None:
            return
