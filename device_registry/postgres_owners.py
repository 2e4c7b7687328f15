"""Device ownership on PostgreSQL: giving a device an owner and taking it back.

Owns the ``bindings`` table. Each ownership period is a binding with its own data keys, so
data recorded for one owner is never readable through another's keys, and shredding one
owner's keys leaves the device and its next owner untouched. The registry MAC is resealed
under the new binding's network key in the same transaction.

Health data keys exist only for bindings whose owner gave explicit health consent (Art. 9);
without one, ingestion refuses scale readings instead of storing them.
Does not own pairing tokens or proof of possession (device identity, issue 4): callers decide
who may become the owner.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import psycopg

from crypto.envelope import DataKey, FieldCipher, data_key_context
from crypto.keys import NONCE_BYTES, KekRing, KeyClass
from device_registry.errors import RegistryError
from device_registry.model import REGISTRY_MAC_CONTEXT
from device_registry.postgres import current_kek_version, key_classes
from privacy.postgres import add_data_key, subject_records

Conn = psycopg.Connection[Any]
Random = Callable[[int], bytes]
HEALTH_CONSENT = "health"


class UnknownOwnership(RegistryError):
    """No such device or subject."""


def assign_device(
    conn: Conn, ring: KekRing, device_id: str, subject_id: str, rand: Random = os.urandom
) -> str:
    """Make *subject_id* the owner of *device_id*; returns the new binding.

    Raises:
        UnknownOwnership: the device or the subject does not exist.
    """
    with conn.transaction():
        records = subject_records(conn, [subject_id])
        if subject_id not in records:
            raise UnknownOwnership("no such subject")
        record = records[subject_id]
        health = HEALTH_CONSENT in record.state.consents
        return _rebind(
            conn, ring, device_id, (subject_id, record.household_id), rand, health=health
        )


def release_device(conn: Conn, ring: KekRing, device_id: str, rand: Random = os.urandom) -> str:
    """End the device's current ownership (unpairing, erasure); returns its new unowned binding.

    Raises:
        UnknownOwnership: the device does not exist.
    """
    with conn.transaction():
        return _rebind(conn, ring, device_id, None, rand, health=False)


def _rebind(
    conn: Conn,
    ring: KekRing,
    device_id: str,
    owner: tuple[str, str] | None,
    rand: Random,
    *,
    health: bool,
) -> str:
    row = conn.execute(
        "SELECT d.binding, d.model, d.mac_enc, k.version, k.wrapped FROM devices d "
        "LEFT JOIN data_keys k ON k.owner = d.binding AND k.key_class = %s "
        "AND k.state = 'active' WHERE d.device_id = %s FOR UPDATE OF d",
        (int(KeyClass.NETWORK), device_id),
    ).fetchone()
    if row is None:
        raise UnknownOwnership("no such device")
    old_binding, model, mac_enc, net_version, net_wrapped = row
    old_network = _cipher(ring, old_binding, net_version, net_wrapped)
    mac = old_network.open(bytes(mac_enc), REGISTRY_MAC_CONTEXT)
    binding = "b" + rand(12).hex()
    kek = ring.kek(current_kek_version(conn))
    classes = key_classes(model) - ({KeyClass.HEALTH} if not health else set())
    network = None
    for key_class in sorted(classes):
        key = add_data_key(conn, kek, binding, key_class, rand)
        if key_class is KeyClass.NETWORK:
            network = FieldCipher(key)
    if network is None:  # every model has a network key (key_classes); keep mypy honest
        raise RegistryError("model without a network key")
    conn.execute(
        "UPDATE bindings SET unbound_at = now() WHERE device_id = %s AND unbound_at IS NULL",
        (device_id,),
    )
    conn.execute(
        "INSERT INTO bindings (binding, device_id, subject_id, household_id) "
        "VALUES (%s, %s, %s, %s)",
        (binding, device_id, *(owner or (None, None))),
    )
    conn.execute(
        "UPDATE devices SET binding = %s, mac_enc = %s WHERE device_id = %s",
        (
            binding,
            network.seal(mac, REGISTRY_MAC_CONTEXT, nonce=rand(NONCE_BYTES)),
            device_id,
        ),
    )
    return binding


def _cipher(ring: KekRing, owner: str, version: int | None, wrapped: bytes | None) -> FieldCipher:
    if version is None or wrapped is None:
        raise RegistryError("device has no active network key")
    material = ring.unwrap(
        bytes(wrapped), context=data_key_context(owner, KeyClass.NETWORK, version)
    )
    return FieldCipher(DataKey(owner, KeyClass.NETWORK, version, material))
