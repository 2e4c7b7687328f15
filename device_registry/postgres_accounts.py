"""API accounts and refresh tokens on PostgreSQL (``0009_accounts.sql``).

Owns the ``accounts`` and ``refresh_tokens`` tables: lookups by login index, OIDC subject or
id, the failed-login counter with its lock, and the refresh-token families (issue, rotate on
use, revoke; reuse of a rotated token revokes its family). Does not own password hashing or
token formats (``api.auth``, ``api.tokens``): it stores what it is given. A fresh connection
per call, like activation: logins are rare next to telemetry.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import class_row

from device_registry.errors import RegistryError, RegistryUnavailable

Conn = psycopg.Connection[Any]
Random = Callable[[int], bytes]
LOCK_AFTER = 5  # failures before the account locks; then 1 s, 2 s, 4 s ... per further failure
MAX_LOCK = timedelta(minutes=15)
_COLUMNS = (
    "account_id, password_hash, role, subject_id, disabled, failed_logins, locked_until, "
    "oidc_subject"
)


class AccountExists(RegistryError):
    """An account with this login name, subject or OIDC subject exists already."""


@dataclass(frozen=True, slots=True)
class AccountRecord:
    """An account as authentication needs it."""

    account_id: str
    password_hash: str
    role: str
    subject_id: str | None
    disabled: bool
    failed_logins: int
    locked_until: datetime | None
    oidc_subject: str | None


def lock_for(failures: int) -> timedelta | None:
    """How long an account stays locked after *failures* consecutive failed logins."""
    if failures < LOCK_AFTER:
        return None
    return min(timedelta(seconds=2 ** min(failures - LOCK_AFTER, 20)), MAX_LOCK)


class PostgresAccounts:
    """Accounts and refresh tokens."""

    def __init__(self, dsn: str, *, rand: Random = os.urandom) -> None:
        self._dsn = dsn
        self._rand = rand

    @contextmanager
    def _connect(self) -> Iterator[Conn]:
        try:
            with psycopg.connect(self._dsn, autocommit=True) as conn:
                yield conn
        except psycopg.OperationalError as exc:
            raise RegistryUnavailable(type(exc).__name__) from exc

    def create(
        self,
        *,
        login_hash: bytes,
        password_hash: str,
        role: str,
        subject_id: str | None = None,
        oidc_subject: str | None = None,
    ) -> str:
        """Create an account; returns its id.

        Raises:
            AccountExists: the login, subject or OIDC subject has an account already.
            ValueError: no such subject.
        """
        account_id = "a" + self._rand(12).hex()
        with self._connect() as conn:
            try:
                conn.execute(
                    "INSERT INTO accounts (account_id, login_hash, password_hash, role, "
                    "subject_id, oidc_subject) VALUES (%s, %s, %s, %s, %s, %s)",
                    (account_id, login_hash, password_hash, role, subject_id, oidc_subject),
                )
            except psycopg.errors.UniqueViolation as exc:
                raise AccountExists("account exists") from exc
            except psycopg.errors.ForeignKeyViolation as exc:
                raise ValueError("no such subject") from exc
        return account_id

    def _one(self, where: str, value: object) -> AccountRecord | None:
        query = f"SELECT {_COLUMNS} FROM accounts WHERE {where} = %s"  # noqa: S608 - constants
        with self._connect() as conn, conn.cursor(row_factory=class_row(AccountRecord)) as cur:
            return cur.execute(query.encode(), (value,)).fetchone()

    def by_login(self, login_hash: bytes) -> AccountRecord | None:
        """The account with this login index."""
        return self._one("login_hash", login_hash)

    def by_id(self, account_id: str) -> AccountRecord | None:
        """The account with this id."""
        return self._one("account_id", account_id)

    def by_oidc(self, oidc_subject: str) -> AccountRecord | None:
        """The account linked to this external subject (``"<issuer> <sub>"``)."""
        return self._one("oidc_subject", oidc_subject)

    def login_failed(self, account_id: str, now: datetime) -> None:
        """Count a failed login and lock the account once failures pile up."""
        with self._connect() as conn, conn.transaction():
            row = conn.execute(
                "UPDATE accounts SET failed_logins = failed_logins + 1 WHERE account_id = %s "
                "RETURNING failed_logins",
                (account_id,),
            ).fetchone()
            lock = lock_for(int(row[0])) if row else None
            if lock is not None:
                conn.execute(
                    "UPDATE accounts SET locked_until = %s WHERE account_id = %s",
                    (now + lock, account_id),
                )

    def login_succeeded(self, account_id: str, new_hash: str | None = None) -> None:
        """Reset the failure counter (and store a rehashed password when parameters changed)."""
        with self._connect() as conn:
            conn.execute(
                "UPDATE accounts SET failed_logins = 0, locked_until = NULL, "
                "password_hash = coalesce(%s, password_hash) WHERE account_id = %s",
                (new_hash, account_id),
            )

    def issue_refresh(
        self, token_hash: bytes, account_id: str, *, now: datetime, ttl: timedelta
    ) -> None:
        """Store the first refresh token of a new family (a login)."""
        family = "f" + self._rand(12).hex()
        with self._connect() as conn:
            _insert_refresh(conn, token_hash, account_id, family, now, ttl)

    def rotate_refresh(
        self, old_hash: bytes, new_hash: bytes, *, now: datetime, ttl: timedelta
    ) -> str | None:
        """Spend a refresh token for a new one of the same family; returns the account id.

        Returns ``None`` for an unknown, expired or revoked token. A token that was already
        rotated is a replay: its whole family is revoked and ``None`` returned.
        """
        with self._connect() as conn, conn.transaction():
            row = conn.execute(
                "SELECT r.account_id, r.family_id, r.expires_at, r.used_at, r.revoked_at, "
                "a.disabled FROM refresh_tokens r JOIN accounts a USING (account_id) "
                "WHERE r.token_hash = %s FOR UPDATE OF r",
                (old_hash,),
            ).fetchone()
            if row is None:
                return None
            account_id, family, expires_at, used_at, revoked_at, disabled = row
            if used_at is not None:
                _revoke_family(conn, family, now)
                return None
            if revoked_at is not None or expires_at <= now or disabled:
                return None
            conn.execute(
                "UPDATE refresh_tokens SET used_at = %s WHERE token_hash = %s", (now, old_hash)
            )
            _insert_refresh(conn, new_hash, str(account_id), str(family), now, ttl)
            return str(account_id)

    def revoke_refresh(self, token_hash: bytes, *, now: datetime) -> bool:
        """Revoke the family of a refresh token (logout); ``False`` if the token is unknown."""
        with self._connect() as conn, conn.transaction():
            row = conn.execute(
                "SELECT family_id FROM refresh_tokens WHERE token_hash = %s", (token_hash,)
            ).fetchone()
            if row is None:
                return False
            _revoke_family(conn, str(row[0]), now)
            return True


def _insert_refresh(
    conn: Conn, token_hash: bytes, account_id: str, family: str, now: datetime, ttl: timedelta
) -> None:
    conn.execute(
        "INSERT INTO refresh_tokens (token_hash, account_id, family_id, issued_at, expires_at) "
        "VALUES (%s, %s, %s, %s, %s)",
        (token_hash, account_id, family, now, now + ttl),
    )


def _revoke_family(conn: Conn, family: str, now: datetime) -> None:
    conn.execute(
        "UPDATE refresh_tokens SET revoked_at = coalesce(revoked_at, %s) WHERE family_id = %s",
        (now, family),
    )
