"""PostgreSQL adapter of the device registry: provisioning and loading devices with their keys.

Owns the ``devices`` and ``data_keys`` tables. Root keys and data keys only ever reach the
database wrapped under a key-encryption key, with associated data naming their owner.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from crypto.envelope import DataKey, FieldCipher
from crypto.keys import KEY_BYTES, Kek, KeyClass, wrap
from device_registry.errors import RegistryUnavailable, UnknownModel
from device_registry.model import (
    REGISTRY_MAC_CONTEXT,
    DeviceId,
    DeviceRecord,
    DeviceStatus,
    WrappedDataKey,
    data_key_context,
    new_device_id,
    random_mac,
    root_key_context,
)
from device_registry.profiles import PROFILES
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

    def to_json(self) -> dict[str, object]:
        """Serialise for the credentials file."""
        return {
            "device_id": self.device_id,
            "model": self.model,
            "drk_version": self.drk_version,
            "root_key": self.root_key.hex(),
            "mac": self.mac,
        }


def _key_classes(model: str) -> set[KeyClass]:
    classes = {KeyClass.NETWORK}
    classes.update(p.key_class for p in PROFILES[model].points if p.key_class is not None)
    return classes


def provision(
    conn: psycopg.Connection[Any], kek: Kek, model: str, count: int, rand: Random = os.urandom
) -> list[Credentials]:
    """Create *count* devices of *model* with fresh root keys, in one transaction.

    Raises:
        UnknownModel: *model* has no profile.
    """
    if model not in PROFILES:
        raise UnknownModel(model)
    creds: list[Credentials] = []
    devices: list[tuple[object, ...]] = []
    keys: list[tuple[object, ...]] = []
    for _ in range(count):
        device_id = new_device_id(rand(16))
        binding = "b" + rand(12).hex()  # pseudonymous owner binding until the device is paired
        root, mac = rand(KEY_BYTES), random_mac(rand(6))
        network = DataKey(binding, KeyClass.NETWORK, 1, rand(KEY_BYTES))
        for key_class in _key_classes(model):
            material = network.key if key_class is KeyClass.NETWORK else rand(KEY_BYTES)
            context = data_key_context(binding, key_class, 1)
            keys.append(
                (binding, int(key_class), 1, wrap(kek, material, context=context, nonce=rand(12)))
            )
        wrapped_root = wrap(kek, root, context=root_key_context(device_id, 1), nonce=rand(12))
        mac_enc = FieldCipher(network).seal(mac.encode(), REGISTRY_MAC_CONTEXT, nonce=rand(12))
        devices.append((device_id, model, binding, wrapped_root, mac_enc))
        creds.append(Credentials(device_id, model, 1, root, mac))
    with conn.transaction(), conn.cursor() as cur:
        with cur.copy(
            "COPY devices (device_id, model, binding, root_key_wrapped, mac_enc) FROM STDIN"
        ) as copy:
            for row in devices:
                copy.write_row(row)
        with cur.copy("COPY data_keys (owner, key_class, version, wrapped) FROM STDIN") as copy:
            for row in keys:
                copy.write_row(row)
    return creds


_LOAD = """
SELECT d.device_id, d.model, d.status, d.binding, d.drk_version, d.root_key_wrapped, d.mac_enc,
       d.current_epoch, s.established_at AS current_since,
       coalesce(array_agg(k.key_class ORDER BY k.key_class)
                FILTER (WHERE k.key_class IS NOT NULL), '{}') AS key_classes,
       coalesce(array_agg(k.version ORDER BY k.key_class)
                FILTER (WHERE k.key_class IS NOT NULL), '{}') AS key_versions,
       coalesce(array_agg(k.wrapped ORDER BY k.key_class)
                FILTER (WHERE k.key_class IS NOT NULL), '{}') AS key_blobs
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
        )
        for r in rows
    }


_SESSIONS = """
SELECT s.device_id, s.epoch, s.device_nonce, s.server_nonce, s.cid, s.superseded_at
FROM device_sessions s
JOIN unnest(%s::text[], %s::bigint[]) AS k(device_id, value)
  ON s.device_id = k.device_id AND s.{column} = k.value
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
