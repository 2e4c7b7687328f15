"""Pairing tokens and device activation against the real database (issue 4, item 3)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from crypto.keys import parse_root_key
from crypto.pairing import proof
from device_registry.model import RegistryKeys
from device_registry.pairing import PairingRefusal, PairingRefused
from device_registry.postgres import Credentials, provision
from device_registry.postgres_identity import revoke_device
from device_registry.postgres_pairing import activate, issue_token
from privacy.postgres import create_household, create_subject

Conn = psycopg.Connection[Any]
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def keys(root_key_file: Path) -> RegistryKeys:
    """Registry keys of the module's root key."""
    return RegistryKeys.from_root_key(parse_root_key(root_key_file.read_text()))


@pytest.fixture
def db(db_dsn: str) -> Any:
    """An autocommit connection."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        yield conn


def household_with_user(conn: Conn, keys: RegistryKeys) -> tuple[str, str]:
    """A new household and one user in it."""
    household = create_household(conn)
    kek = keys.ring.kek(1)
    return household, create_subject(conn, kek, household, email="p@example.com", name=None)


def device(conn: Conn, keys: RegistryKeys, model: str = "plug") -> Credentials:
    """A freshly provisioned device (its factory key is its current root key)."""
    return provision(conn, keys, model, 1)[0]


def present(
    conn: Conn,
    keys: RegistryKeys,
    cred: Credentials,
    token: str,
    household: str,
    *,
    now: datetime = NOW,
    key: bytes | None = None,
    ts: datetime | None = None,
) -> Any:
    """Activate *cred* as the device would: token, household, proof under its key."""
    ts_ms = int((ts or now).timestamp() * 1000)
    given = proof(key or cred.root_key, cred.device_id, token, household, ts_ms)
    return activate(
        conn,
        keys.ring,
        device_id=cred.device_id,
        token=token,
        household_id=household,
        ts_ms=ts_ms,
        proof=given,
        now=now,
    )


def refused(fn: Any) -> PairingRefusal:
    """The reason an activation was refused."""
    with pytest.raises(PairingRefused) as info:
        fn()
    return info.value.reason


def test_activation_makes_the_user_the_owner_and_stages_an_operational_key(
    db: Conn, keys: RegistryKeys
) -> None:
    """A good activation: token spent, device owned, a new root key staged for the device."""
    household, user = household_with_user(db, keys)
    cred = device(db, keys)
    token = issue_token(db, user, household, now=NOW)
    assert token.expires_at - NOW == timedelta(minutes=10)
    done = present(db, keys, cred, token.token, household)
    assert (done.subject_id, done.household_id, done.operational_key_staged) == (
        user,
        household,
        True,
    )
    row = db.execute(
        "SELECT b.subject_id, b.household_id, d.binding = b.binding, d.drk_version, "
        "d.drk_next_version FROM devices d JOIN bindings b ON b.device_id = d.device_id "
        "AND b.unbound_at IS NULL WHERE d.device_id = %s",
        (cred.device_id,),
    ).fetchone()
    assert row == (user, household, True, 1, 2)
    stored = db.execute(
        "SELECT count(*) FROM pairing_tokens WHERE device_id = %s AND used_at IS NOT NULL",
        (cred.device_id,),
    ).fetchone()
    assert stored == (1,)
    assert db.execute("SELECT count(*) FROM pairing_tokens WHERE token_hash::text LIKE %s",
                      (f"%{token.token}%",)).fetchone() == (0,)  # fmt: skip


def test_tokens_are_single_use(db: Conn, keys: RegistryKeys) -> None:
    """The same token cannot pair a second device (nor the same one again)."""
    household, user = household_with_user(db, keys)
    first, second = device(db, keys), device(db, keys)
    token = issue_token(db, user, household, now=NOW).token
    present(db, keys, first, token, household)
    assert refused(lambda: present(db, keys, second, token, household)) is PairingRefusal.TOKEN_USED
    assert refused(lambda: present(db, keys, first, token, household)) is PairingRefusal.TOKEN_USED
    owned = db.execute(
        "SELECT count(*) FROM bindings WHERE device_id = %s AND subject_id IS NOT NULL",
        (second.device_id,),
    ).fetchone()
    assert owned == (0,)


def test_tokens_expire(db: Conn, keys: RegistryKeys) -> None:
    """Ten minutes at most; after expiry the token is refused as expired, not unknown."""
    household, user = household_with_user(db, keys)
    cred = device(db, keys)
    short = issue_token(db, user, household, now=NOW, ttl_s=60).token
    later = NOW + timedelta(seconds=61)
    reason = refused(lambda: present(db, keys, cred, short, household, now=later))
    assert reason is PairingRefusal.TOKEN_EXPIRED
    full = issue_token(db, user, household, now=NOW).token
    reason = refused(
        lambda: present(db, keys, cred, full, household, now=NOW + timedelta(minutes=10))
    )
    assert reason is PairingRefusal.TOKEN_EXPIRED
    with pytest.raises(ValueError, match="600"):
        issue_token(db, user, household, now=NOW, ttl_s=601)
    with pytest.raises(psycopg.errors.CheckViolation):  # the schema holds the line too
        db.execute(
            "INSERT INTO pairing_tokens VALUES (%s, %s, %s, %s, %s)",
            (os.urandom(32), user, household, NOW, NOW + timedelta(minutes=11)),
        )
    # Still good just before expiry.
    assert present(db, keys, cred, full, household, now=NOW + timedelta(minutes=9)).binding


def test_wrong_household_and_other_refusals_are_distinct(db: Conn, keys: RegistryKeys) -> None:
    """Every refusal names its reason; none consumes the token."""
    household, user = household_with_user(db, keys)
    other_household, other_user = household_with_user(db, keys)
    cred = device(db, keys)
    token = issue_token(db, user, household, now=NOW).token
    cases = {
        PairingRefusal.WRONG_HOUSEHOLD: lambda: present(db, keys, cred, token, other_household),
        PairingRefusal.PROOF_INVALID: lambda: present(
            db, keys, cred, token, household, key=os.urandom(32)
        ),
        PairingRefusal.CLOCK_SKEW: lambda: present(
            db, keys, cred, token, household, ts=NOW - timedelta(minutes=6)
        ),
        PairingRefusal.TOKEN_MALFORMED: lambda: present(
            db, keys, cred, "qp1-'; DROP TABLE devices;--", household
        ),
        PairingRefusal.TOKEN_UNKNOWN: lambda: present(db, keys, cred, "qp1-" + "a" * 26, household),
    }
    for expected, attempt in cases.items():
        assert refused(attempt) is expected
    with pytest.raises(PairingRefused) as info:
        issue_token(db, user, other_household, now=NOW)
    assert info.value.reason is PairingRefusal.SUBJECT_NOT_IN_HOUSEHOLD
    # None of that spent the token.
    present(db, keys, cred, token, household)
    # Owned by the first user now: another household's valid token cannot take it over.
    theirs = issue_token(db, other_user, other_household, now=NOW).token
    reason = refused(lambda: present(db, keys, cred, theirs, other_household))
    assert reason is PairingRefusal.DEVICE_OWNED


def test_revoked_or_unknown_devices_cannot_pair(db: Conn, keys: RegistryKeys) -> None:
    """A revoked device is refused like an unknown one (no hint which)."""
    household, user = household_with_user(db, keys)
    cred = device(db, keys)
    assert revoke_device(db, cred.device_id)
    token = issue_token(db, user, household, now=NOW).token
    reason = refused(lambda: present(db, keys, cred, token, household))
    assert reason is PairingRefusal.DEVICE_UNKNOWN
    ghost = Credentials("zzzzzzzzzzzzzzzz", "plug", 1, os.urandom(32), "02:00:00:00:00:01", "x")  # type: ignore[arg-type]
    assert (
        refused(lambda: present(db, keys, ghost, token, household)) is PairingRefusal.DEVICE_UNKNOWN
    )
