"""Devices as the rest of the system sees them (pure).

Owns: the device record read from storage, turning it into a ``DeviceContext`` whose keys
are unwrapped and ready (root key, key-exchange key, field ciphers per key class), and the keys
the registry works with (``RegistryKeys``: the KEK ring and the MAC blind index). Does not
own: storage (``postgres.py``) or the ingest decisions (``telemetry``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import NewType

from crypto.blind_index import MAC_INDEX_BITS, BlindIndex, derive_index
from crypto.broker_secrets import BrokerSecrets
from crypto.device_keys import kx_key
from crypto.envelope import DataKey, FieldCipher, FieldContext, data_key_context
from crypto.keys import KekRing, KeyClass
from device_registry.profiles import PROFILES, Profile

DeviceId = NewType("DeviceId", str)
DEVICE_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
DEVICE_ID_LENGTH = 16  # 80 bits: unguessable, and short enough for topics
_ID_CHARS = frozenset(DEVICE_ID_ALPHABET)


class DeviceStatus(StrEnum):
    """Lifecycle of a device's credentials."""

    ACTIVE = "active"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class WrappedDataKey:
    """A data key as stored: wrapped under a KEK."""

    key_class: KeyClass
    version: int
    wrapped: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class StoredRootKey:
    """A root-key version besides the current one: the pending next, or the previous one."""

    version: int
    wrapped: bytes | None = field(repr=False)  # None: destroyed once its grace ended
    until: datetime | None = None  # the previous key is decrypt-only until then


@dataclass(frozen=True, slots=True)
class RootKey:
    """An opened root-key version besides the current one (see ``StoredRootKey``)."""

    version: int
    key: bytes | None = field(repr=False)  # None: destroyed
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A device row with its wrapped keys, as the bridge loads it."""

    device_id: DeviceId
    model: str
    status: DeviceStatus
    binding: str
    drk_version: int
    root_key_wrapped: bytes | None = field(repr=False)
    mac_enc: bytes = field(repr=False)
    current_epoch: int
    current_since: datetime | None
    data_keys: tuple[WrappedDataKey, ...] = field(repr=False)
    precise_location: bool = False  # the owner consented to precise positions being stored
    previous_root: StoredRootKey | None = None  # root-key rotation (0007_drk_rotation)
    pending_root: StoredRootKey | None = None


@dataclass(frozen=True, slots=True)
class DeviceContext:
    """A device with its keys opened, cached by bridge workers."""

    device_id: DeviceId
    profile: Profile
    status: DeviceStatus
    binding: str
    drk_version: int
    root_key: bytes = field(repr=False)
    kx_key: bytes = field(repr=False)
    ciphers: dict[KeyClass, FieldCipher] = field(repr=False)
    registered_mac: str = field(repr=False)
    current_epoch: int
    current_since: datetime | None
    precise_location: bool = False
    previous: RootKey | None = None  # decrypt-only until ``previous.until``
    pending: RootKey | None = None  # offered, not yet proven

    def root_of(self, version: int) -> bytes | None:
        """The root key of *version* while it is held (current, previous or pending)."""
        if version == self.drk_version:
            return self.root_key
        for other in (self.previous, self.pending):
            if other is not None and other.version == version:
                return other.key
        return None


def new_device_id(rand: bytes) -> DeviceId:
    """Make an opaque device id from 16 random bytes (no model or serial information in it)."""
    return DeviceId("".join(DEVICE_ID_ALPHABET[b % 32] for b in rand[:DEVICE_ID_LENGTH]))


def is_device_id(text: str) -> bool:
    """Whether *text* is shaped like a device id (checked before any lookup)."""
    return len(text) == DEVICE_ID_LENGTH and _ID_CHARS.issuperset(text)


def root_key_context(device_id: str, version: int) -> bytes:
    """Associated data binding a wrapped root key to its device and version."""
    return f"drk|{device_id}|{version}".encode()


REGISTRY_MAC_CONTEXT = FieldContext("devices", "mac_enc", "registry")
MAC_INDEX_NAME = ("devices", "mac_enc", "mac_bidx")  # (table, column, index) of the MAC index


@dataclass(frozen=True, slots=True)
class RegistryKeys:
    """The keys the registry works with: KEKs, the MAC blind index, broker passwords."""

    ring: KekRing
    mac_index: BlindIndex
    broker: BrokerSecrets

    @classmethod
    def from_root_key(cls, root_key: bytes, *, mac_bits: int = MAC_INDEX_BITS) -> RegistryKeys:
        """Derive both from the root key (*mac_bits* other than the default is for tests).

        Raises:
            InvalidKeyMaterial: the root key is not 32 bytes.
        """
        index = derive_index(root_key, *MAC_INDEX_NAME, bits=mac_bits)
        return cls(KekRing(root_key), index, BrokerSecrets(root_key))


def _open_data_key(record: DeviceRecord, dk: WrappedDataKey, ring: KekRing) -> FieldCipher:
    context = data_key_context(record.binding, dk.key_class, dk.version)
    material = ring.unwrap(dk.wrapped, context=context)
    return FieldCipher(DataKey(record.binding, dk.key_class, dk.version, material))


def registered_mac(record: DeviceRecord, ring: KekRing) -> str | None:
    """Decrypt only the factory MAC; ``None`` once the binding's network key is gone.

    Works for revoked devices too (their network key outlives the root key until erasure).

    Raises:
        DecryptionFailed: the network key or the MAC envelope does not open.
    """
    for dk in record.data_keys:
        if dk.key_class is KeyClass.NETWORK:
            cipher = _open_data_key(record, dk, ring)
            return cipher.open(record.mac_enc, REGISTRY_MAC_CONTEXT).decode()
    return None


def open_record(record: DeviceRecord, ring: KekRing) -> DeviceContext | None:
    """Unwrap a record's keys; ``None`` for a revoked device whose root key was destroyed.

    Keys may be wrapped under any KEK version; the ring derives the one each blob names.

    Raises:
        DecryptionFailed: a wrapped key does not open (wrong root key or tampered row).
        UnsupportedVersion: a blob names KEK version 0 or an unknown wrap format.
    """
    if record.root_key_wrapped is None:
        return None
    root = ring.unwrap(
        record.root_key_wrapped,
        context=root_key_context(record.device_id, record.drk_version),
    )
    ciphers = {dk.key_class: _open_data_key(record, dk, ring) for dk in record.data_keys}
    mac = ciphers[KeyClass.NETWORK].open(record.mac_enc, REGISTRY_MAC_CONTEXT).decode()
    previous, pending = (
        _open_root(record, s, ring) for s in (record.previous_root, record.pending_root)
    )
    return DeviceContext(
        device_id=record.device_id,
        profile=PROFILES[record.model],
        status=record.status,
        binding=record.binding,
        drk_version=record.drk_version,
        root_key=root,
        kx_key=kx_key(root, record.device_id),
        ciphers=ciphers,
        registered_mac=mac,
        current_epoch=record.current_epoch,
        current_since=record.current_since,
        precise_location=record.precise_location,
        previous=previous,
        pending=pending,
    )


def _open_root(record: DeviceRecord, stored: StoredRootKey | None, ring: KekRing) -> RootKey | None:
    if stored is None:
        return None
    key = None
    if stored.wrapped is not None:
        context = root_key_context(record.device_id, stored.version)
        key = ring.unwrap(stored.wrapped, context=context)
    return RootKey(stored.version, key, stored.until)


def random_mac(rand: bytes) -> str:
    """A locally administered unicast MAC from 6 random bytes (factory stand-in)."""
    first = (rand[0] | 0x02) & 0xFE
    return ":".join(f"{b:02X}" for b in bytes([first]) + rand[1:6])
