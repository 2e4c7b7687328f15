"""PostgreSQL source of what the MQTT auth hook needs about one device: status and root keys.

Owns: loading a device's status and the root keys that may sign its MQTT password tokens now,
over one connection that is opened lazily and reopened after a failure. Does not own: the
token format (``crypto.mqtt_tokens``), the broker-facing decisions or any caching
(``api.auth_hook``). Rows are read with ``postgres.load_records`` and only the root key is
unwrapped: the device's data keys and its MAC stay sealed, as the hook needs neither.

Root-key versions (root-key rotation, 0007_drk_rotation): tokens verify under the current
version, under the pending next version (offered to the device, which may already have
switched to it before its proof of possession was recorded), and under the previous version
until its grace period ends. A destroyed key signs nothing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import psycopg

from crypto.keys import KekRing
from device_registry.errors import RegistryUnavailable
from device_registry.model import DeviceId, DeviceRecord, DeviceStatus, root_key_context
from device_registry.postgres import load_records

CONNECT_TIMEOUT_S = 5  # brokers give up on the hook after about 5 s (go-auth's default)
# A stuck query must turn into "unavailable" before the broker gives up on the hook.
_STATEMENT_TIMEOUT = "SET statement_timeout = 3000"


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A root-key version that may sign MQTT tokens, until ``until`` (Unix s) if bounded."""

    version: int
    key: bytes = field(repr=False)
    until: float | None = None


@dataclass(frozen=True, slots=True)
class DeviceAuth:
    """A device as the auth hook sees it."""

    device_id: DeviceId
    status: DeviceStatus
    keys: tuple[SigningKey, ...] = field(repr=False)  # current, pending, previous in grace

    @property
    def active(self) -> bool:
        """Whether the device may connect: not revoked, and a root key is left to verify with."""
        return self.status is DeviceStatus.ACTIVE and bool(self.keys)

    def root_keys(self, now: float) -> dict[int, bytes]:
        """The root keys by version that may sign a token at *now* (Unix seconds)."""
        return {k.version: k.key for k in self.keys if k.until is None or now < k.until}


def _signing_keys(record: DeviceRecord, ring: KekRing) -> tuple[SigningKey, ...]:
    """Current key, pending next key and previous key (while its grace period lasts).

    The device may already use the pending key before its proof of possession is recorded,
    and may not yet have switched away from the previous one.
    """
    if record.status is not DeviceStatus.ACTIVE or record.root_key_wrapped is None:
        return ()
    context = root_key_context(record.device_id, record.drk_version)
    keys = [SigningKey(record.drk_version, ring.unwrap(record.root_key_wrapped, context=context))]
    for other in (record.pending_root, record.previous_root):
        if other is not None and other.wrapped is not None:
            material = ring.unwrap(
                other.wrapped, context=root_key_context(record.device_id, other.version)
            )
            until = other.until.timestamp() if other.until is not None else None
            keys.append(SigningKey(other.version, material, until))
    return tuple(keys)


def load_auth(conn: psycopg.Connection[Any], ring: KekRing, device_id: str) -> DeviceAuth | None:
    """Load *device_id*'s status and token-signing root keys; ``None`` for an unknown id.

    A revoked device comes back without keys (nothing is unwrapped for it).

    Raises:
        DecryptionFailed: a wrapped root key does not open (wrong root key, damaged row).
        UnsupportedVersion: a blob names KEK version 0 or an unknown wrap format.
    """
    record = load_records(conn, [device_id]).get(device_id)
    if record is None:
        return None
    return DeviceAuth(record.device_id, record.status, _signing_keys(record, ring))


class PostgresAuthSource:
    """Looks devices up for the auth hook over one lazily opened autocommit connection.

    Thread-safe: lookups are serialised on the connection (the hook caches, so the database
    sees one query per device per cache period). Use as a context manager to close it.
    """

    def __init__(self, dsn: str, ring: KekRing) -> None:
        self._dsn = dsn
        self._ring = ring
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None

    def __repr__(self) -> str:
        """Never show the DSN (it may carry a password)."""
        return f"PostgresAuthSource(connected={self._conn is not None})"

    def __enter__(self) -> Self:
        """Return self; the connection opens on first use."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the connection."""
        self.close()

    def close(self) -> None:
        """Close the connection if it is open."""
        with self._lock:
            self._drop()

    def lookup(self, device_id: str) -> DeviceAuth | None:
        """Load one device (see ``load_auth``).

        Raises:
            RegistryUnavailable: the database cannot be reached; the next call reconnects.
            DecryptionFailed: the device's wrapped root key does not open.
        """
        with self._lock:
            try:
                return load_auth(self._connection(), self._ring, device_id)
            except psycopg.OperationalError as exc:
                self._drop()
                raise RegistryUnavailable(type(exc).__name__) from exc

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
            conn.execute(_STATEMENT_TIMEOUT)
            self._conn = conn
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
