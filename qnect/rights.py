"""Composition of the privacy core: the gate and the data-subject rights, from the root key.

Every key here is derived from the one root key with its own HKDF label, so no secret has a
default and none is stored next to the data.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto.keys import KEY_BYTES, Kek, KekRing
from device_registry.postgres import current_kek_version
from device_registry.postgres_owners import assign_device, release_device
from device_registry.views import VIEWS
from privacy.audit import AuditKeys
from privacy.postgres import create_household, create_subject
from privacy.postgres_dsr import Rights
from privacy.postgres_gate import Actor, Gate
from privacy.purposes import PurposeTable, default_table

PSEUDONYM_INFO = b"qnect/transform/pseudonym/v1"
TOMBSTONE_INFO = b"qnect/dsr/tombstone/v1"


def subkey(root_key: bytes, info: bytes) -> bytes:
    """A 32-byte key derived from the root key for one use."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(root_key)


@dataclass(frozen=True, slots=True)
class Privacy:
    """The gate and the rights, wired together."""

    ring: KekRing
    audit_keys: AuditKeys
    purposes: PurposeTable
    gate: Gate
    rights: Rights


def build(root_key: bytes, purposes: PurposeTable | None = None) -> Privacy:
    """Wire the privacy core for a root key (and the shipped purpose table by default)."""
    ring = KekRing(root_key)
    audit_keys = AuditKeys.from_root(root_key)
    table = purposes or default_table()
    gate = Gate(
        keks=ring,
        audit_keys=audit_keys,
        purposes=table,
        pseudonym_key=subkey(root_key, PSEUDONYM_INFO),
    )

    def wrapping_kek(conn: psycopg.Connection[Any]) -> Kek:
        return ring.kek(current_kek_version(conn))

    rights = Rights(
        gate=gate,
        views=VIEWS,
        keks=ring,
        wrapping_kek=wrapping_kek,
        audit_keys=audit_keys,
        purposes=table,
        tombstone_key=subkey(root_key, TOMBSTONE_INFO),
        release_device=lambda conn, device_id: release_device(conn, ring, device_id),
        rand=os.urandom,
    )
    return Privacy(ring, audit_keys, table, gate, rights)


SYSTEM = Actor("system", "qnect-demo", frozenset({"subject"}))


def adopt(
    conn: psycopg.Connection[Any], privacy: Privacy, device_ids: Iterable[str], *, email: str
) -> str:
    """Give devices a demo owner who consented to health data; returns the subject id.

    For the simulator, the benchmark and tests: real owners pair through the app. Without an
    owner's explicit consent, scale readings are refused (``no_health_consent``).
    """
    with conn.transaction():
        household = create_household(conn)
        kek = privacy.ring.kek(current_kek_version(conn))
        subject = create_subject(conn, kek, household, email=email, name=None)
    privacy.rights.consent(conn, SYSTEM, subject, "health", "grant", "demo")
    for device_id in device_ids:
        assign_device(conn, privacy.ring, device_id, subject)
    return subject
