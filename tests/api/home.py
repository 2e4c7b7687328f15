"""Households, users with API accounts and devices for the API tests (real PostgreSQL)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from api.auth import hash_password
from api.tokens import LOGIN_INFO, derive_key, login_index
from device_registry.model import RegistryKeys
from device_registry.postgres import provision
from device_registry.postgres_accounts import PostgresAccounts
from device_registry.postgres_owners import assign_device
from privacy.postgres import create_household, create_subject

PASSWORD = "correct horse battery staple"


@dataclass
class Member:
    """A user of a household, with an account and devices."""

    household: str
    subject: str
    account: str
    username: str
    devices: dict[str, str] = field(default_factory=dict)  # model -> device id
    creds: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> credentials


def new_member(
    dsn: str,
    keys: RegistryKeys,
    root_key: bytes,
    name: str,
    *,
    household: str | None = None,
    models: tuple[str, ...] = ("thermostat",),
    oidc_subject: str | None = None,
) -> Member:
    """A subject with an account (password PASSWORD) owning one device per model."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        house = household or create_household(conn)
        subject = create_subject(conn, keys.ring.kek(1), house, email=f"{name}@x.test", name=name)
        devices, creds = {}, {}
        for model in models:
            creds[model] = provision(conn, keys, model, 1)[0].to_json()
            device_id = str(creds[model]["device_id"])
            assign_device(conn, keys.ring, device_id, subject)
            devices[model] = device_id
    account = PostgresAccounts(dsn).create(
        login_hash=login_index(derive_key(root_key, LOGIN_INFO), name),
        password_hash=hash_password(PASSWORD),
        role="user",
        subject_id=subject,
        oidc_subject=oidc_subject,
    )
    return Member(house, subject, account, name, devices, creds)


def staff(dsn: str, root_key: bytes, name: str, role: str) -> str:
    """A staff account; returns its id."""
    return PostgresAccounts(dsn).create(
        login_hash=login_index(derive_key(root_key, LOGIN_INFO), name),
        password_hash=hash_password(PASSWORD),
        role=role,
    )


def login(client: TestClient, username: str, password: str = PASSWORD) -> dict[str, Any]:
    """The token answer of a successful password login."""
    answer = client.post("/v1/auth/token", data={"username": username, "password": password})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def bearer(token: str) -> dict[str, str]:
    """An Authorization header."""
    return {"Authorization": f"Bearer {token}"}


def deny_events(dsn: str, actor_id: str) -> int:
    """Deny events written for an actor so far."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM audit_events WHERE actor_id = %s AND decision = 'deny'",
            (actor_id,),
        ).fetchone()
    assert row is not None
    return int(row[0])
