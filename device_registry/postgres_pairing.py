"""Pairing on PostgreSQL: issuing tokens and activating devices with them.

Activation checks, in this order, so that nobody without the device's key learns anything about
a token: the device exists and is active, its proof verifies under its current root key, the
device clock is within the skew window; then the token: known, unused, unexpired, for this
household; the device is not owned by someone else. On success, in one transaction: the token
is spent, the user becomes the owner (a new binding with fresh data keys) and an operational
root key is staged for the device (``device_registry.postgres_rekey``): bridge workers offer it
on the device's downlink, the device proves possession, and the factory key is retired after
the grace period.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
import structlog

from crypto.keys import KEY_BYTES, KekRing
from crypto.pairing import check_proof, is_token, new_token, token_hash
from crypto.rekey import MAX_DRK_VERSION
from device_registry.errors import RegistryUnavailable
from device_registry.model import DeviceStatus, root_key_context
from device_registry.pairing import (
    MAX_TOKEN_TTL_S,
    PROOF_SKEW_MS,
    PairingRefusal,
    PairingRefused,
)
from device_registry.postgres import current_kek_version, load_records
from device_registry.postgres_owners import assign_device

log = structlog.get_logger("device_registry.pairing")
Random = Callable[[int], bytes]


@dataclass(frozen=True, slots=True)
class PairingToken:
    """A token as the app receives it (once)."""

    token: str
    subject_id: str
    household_id: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Activation:
    """A successful activation."""

    device_id: str
    subject_id: str
    household_id: str
    binding: str
    operational_key_staged: bool


def issue_token(
    conn: psycopg.Connection[Any],
    subject_id: str,
    household_id: str,
    *,
    now: datetime,
    ttl_s: int = MAX_TOKEN_TTL_S,
    rand: Random = os.urandom,
) -> PairingToken:
    """A single-use pairing token for *subject_id* in *household_id*.

    Raises:
        PairingRefused: the subject is not a member of the household.
        ValueError: *ttl_s* outside 1..600.
    """
    if not 0 < ttl_s <= MAX_TOKEN_TTL_S:
        raise ValueError("pairing tokens live 1 to 600 seconds")
    with conn.transaction():
        row = conn.execute(
            "SELECT 1 FROM subjects WHERE subject_id = %s AND household_id = %s "
            "AND status = 'active'",
            (subject_id, household_id),
        ).fetchone()
        if row is None:
            raise PairingRefused(PairingRefusal.SUBJECT_NOT_IN_HOUSEHOLD)
        token = new_token(rand(16))
        expires = now + timedelta(seconds=ttl_s)
        conn.execute(
            "INSERT INTO pairing_tokens (token_hash, subject_id, household_id, created_at, "
            "expires_at) VALUES (%s, %s, %s, %s, %s)",
            (token_hash(token), subject_id, household_id, now, expires),
        )
    return PairingToken(token, subject_id, household_id, expires)


def activate(
    conn: psycopg.Connection[Any],
    ring: KekRing,
    *,
    device_id: str,
    token: str,
    household_id: str,
    ts_ms: int,
    proof: bytes,
    now: datetime,
    rand: Random = os.urandom,
) -> Activation:
    """Redeem *token* for *device_id*: the token's user becomes its owner.

    Raises:
        PairingRefused: with the reason (see the module docstring for the order of checks).
    """
    try:
        with conn.transaction():
            return _activate(conn, ring, device_id, token, household_id, ts_ms, proof, now, rand)
    except PairingRefused as exc:
        log.info("pairing.refused", device_id=device_id, reason=exc.reason.value)
        raise


def _activate(
    conn: psycopg.Connection[Any],
    ring: KekRing,
    device_id: str,
    token: str,
    household_id: str,
    ts_ms: int,
    proof: bytes,
    now: datetime,
    rand: Random,
) -> Activation:
    if not is_token(token):
        raise PairingRefused(PairingRefusal.TOKEN_MALFORMED)
    record = load_records(conn, [device_id]).get(device_id)
    if record is None or record.status is not DeviceStatus.ACTIVE or not record.root_key_wrapped:
        raise PairingRefused(PairingRefusal.DEVICE_UNKNOWN)
    root = ring.unwrap(
        record.root_key_wrapped, context=root_key_context(device_id, record.drk_version)
    )
    if not check_proof(root, device_id, token, household_id, ts_ms, proof):
        raise PairingRefused(PairingRefusal.PROOF_INVALID)
    if abs(now.timestamp() * 1000 - ts_ms) > PROOF_SKEW_MS:
        raise PairingRefused(PairingRefusal.CLOCK_SKEW)
    row = conn.execute(
        "SELECT subject_id, household_id, expires_at, used_at FROM pairing_tokens "
        "WHERE token_hash = %s FOR UPDATE",
        (token_hash(token),),
    ).fetchone()
    if row is None:
        raise PairingRefused(PairingRefusal.TOKEN_UNKNOWN)
    subject_id, token_household, expires_at, used_at = row
    if used_at is not None:
        raise PairingRefused(PairingRefusal.TOKEN_USED)
    if expires_at <= now:
        raise PairingRefused(PairingRefusal.TOKEN_EXPIRED)
    if token_household != household_id:
        raise PairingRefused(PairingRefusal.WRONG_HOUSEHOLD)
    owner = conn.execute(
        "SELECT subject_id FROM bindings WHERE device_id = %s AND unbound_at IS NULL "
        "AND subject_id IS NOT NULL",
        (device_id,),
    ).fetchone()
    if owner is not None and owner[0] != subject_id:
        raise PairingRefused(PairingRefusal.DEVICE_OWNED)
    conn.execute(
        "UPDATE pairing_tokens SET used_at = %s, device_id = %s WHERE token_hash = %s",
        (now, device_id, token_hash(token)),
    )
    binding = assign_device(conn, ring, device_id, subject_id, rand)
    staged = _stage_operational_key(conn, ring, device_id, record.drk_version, rand)
    log.info("pairing.activated", device_id=device_id, operational_key_staged=bool(staged))
    return Activation(device_id, subject_id, household_id, binding, bool(staged))


def _stage_operational_key(
    conn: psycopg.Connection[Any], ring: KekRing, device_id: str, version: int, rand: Random
) -> bool:
    """Stage a fresh root key as the device's next version (offered once it is connected).

    Unlike a fleet rotation (``postgres_rekey.stage``) the device need not be online now: the
    offer goes out on its downlink as soon as it connects.
    """
    if version >= MAX_DRK_VERSION:
        return False
    wrapped = ring.wrap(
        rand(KEY_BYTES),
        version=current_kek_version(conn),
        context=root_key_context(device_id, version + 1),
        nonce=rand(12),
    )
    row = conn.execute(
        "UPDATE devices SET drk_next_version = drk_version + 1, drk_next_wrapped = %s, "
        "drk_next_offered_at = NULL WHERE device_id = %s AND drk_version = %s "
        "AND drk_next_version IS NULL RETURNING device_id",
        (wrapped, device_id, version),
    ).fetchone()
    return row is not None


class PostgresActivator:
    """``activate`` over a fresh connection per call (activations are rare; no pool needed)."""

    def __init__(self, dsn: str, ring: KekRing) -> None:
        self._dsn = dsn
        self._ring = ring

    def activate(
        self,
        *,
        device_id: str,
        token: str,
        household_id: str,
        ts_ms: int,
        proof: bytes,
        now: datetime,
    ) -> Activation:
        """Redeem the token for the device.

        Raises:
            PairingRefused: with the reason.
            RegistryUnavailable: the database cannot be reached.
        """
        try:
            with psycopg.connect(self._dsn, autocommit=True) as conn:
                return activate(
                    conn,
                    self._ring,
                    device_id=device_id,
                    token=token,
                    household_id=household_id,
                    ts_ms=ts_ms,
                    proof=proof,
                    now=now,
                )
        except psycopg.OperationalError as exc:
            raise RegistryUnavailable(type(exc).__name__) from exc
