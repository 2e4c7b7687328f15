"""Authentication of the HTTP API: password login, refresh, logout, and who is calling.

Owns ``Authenticator`` (Argon2id passwords, our access tokens, rotating refresh tokens, and
optionally an external OIDC issuer's tokens), the route dependency that turns a bearer token
into a ``Principal`` with a role check, and the ``/v1/auth`` routes (OAuth2 password flow).
Does not own storage (``Accounts``, implemented by ``device_registry.postgres_accounts``).

Every failed login answers the same 401 after the same work: an unknown login name, a locked
or disabled account and a wrong password all verify a password against an Argon2id hash, so
neither the answer nor its timing tells them apart. Consecutive failures lock the account with
exponential backoff (``postgres_accounts.lock_for``).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Protocol

import argon2
import structlog
from fastapi import APIRouter, Depends, Response
from fastapi.security import OAuth2PasswordBearer, OAuth2PasswordRequestForm
from pydantic import BaseModel, ConfigDict, Field

from api.errors import Forbidden, Unauthenticated
from api.oidc import OidcVerifier, token_issuer
from api.tokens import (
    AccessTokens,
    Principal,
    Role,
    login_index,
    new_refresh_token,
    normalise_login,
    refresh_hash,
)
from device_registry.postgres_accounts import AccountRecord

log = structlog.get_logger("api.auth")
MAX_PASSWORD_CHARS = 1024  # Argon2 takes any length; this bounds the work one request causes
REFRESH_TTL = timedelta(days=30)
TOKEN_URL = "/v1/auth/token"  # noqa: S105 - a route, not a secret


class Accounts(Protocol):
    """What authentication needs from account storage."""

    def by_login(self, login_hash: bytes) -> AccountRecord | None:
        """The account with this login index."""
        ...

    def by_oidc(self, oidc_subject: str) -> AccountRecord | None:
        """The account linked to an external subject."""
        ...

    def by_id(self, account_id: str) -> AccountRecord | None:
        """The account with this id."""
        ...

    def login_failed(self, account_id: str, now: datetime) -> None:
        """Count a failure (and lock after several)."""
        ...

    def login_succeeded(self, account_id: str, new_hash: str | None = None) -> None:
        """Reset the failure count; store a rehashed password if given."""
        ...

    def issue_refresh(
        self, token_hash: bytes, account_id: str, *, now: datetime, ttl: timedelta
    ) -> None:
        """Store the first refresh token of a login."""
        ...

    def rotate_refresh(
        self, old_hash: bytes, new_hash: bytes, *, now: datetime, ttl: timedelta
    ) -> str | None:
        """Spend a refresh token for a new one; the account id, or None if refused."""
        ...

    def revoke_refresh(self, token_hash: bytes, *, now: datetime) -> bool:
        """Revoke the token's family."""
        ...


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Keys and lifetimes (keys derived from the root key by the composition root)."""

    signing_seed: bytes
    login_key: bytes
    access_ttl_s: int = 600
    refresh_ttl: timedelta = REFRESH_TTL


class TokenResponse(BaseModel):
    """An OAuth2 token response (RFC 6749 5.1)."""

    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the RFC 6750 scheme name
    expires_in: int
    refresh_token: str
    roles: list[Role]


class RefreshRequest(BaseModel):
    """A refresh token to spend or revoke."""

    model_config = ConfigDict(extra="forbid")

    refresh_token: str = Field(min_length=1, max_length=128)


def hash_password(password: str) -> str:
    """An Argon2id hash (argon2-cffi's RFC 9106 low-memory profile)."""
    return argon2.PasswordHasher().hash(password)


class Authenticator:
    """Logins, token refresh and bearer-token checks."""

    def __init__(
        self,
        accounts: Accounts,
        config: AuthConfig,
        *,
        oidc: OidcVerifier | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        rand: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.accounts, self.config, self.oidc = accounts, config, oidc
        self.clock, self.rand = clock, rand
        self.tokens = AccessTokens(config.signing_seed, ttl_s=config.access_ttl_s)
        self._hasher = argon2.PasswordHasher()
        # Verified against when there is no usable account, so every failure costs the same.
        self._dummy = self._hasher.hash(secrets.token_hex(16))

    def check_password(self, record: AccountRecord | None, password: str) -> bool:
        """Whether *password* is *record*'s (constant work even when *record* is None)."""
        if len(password) > MAX_PASSWORD_CHARS:
            password = password[:MAX_PASSWORD_CHARS]
        try:
            return self._hasher.verify(record.password_hash if record else self._dummy, password)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False

    def confirm_password(self, principal: Principal, password: str) -> bool:
        """Re-authentication for destructive requests: the caller's own account password."""
        record = self.accounts.by_id(principal.actor_id)
        usable = record if record is not None and not record.disabled else None
        return self.check_password(usable, password) and usable is not None

    def login(self, username: str, password: str) -> TokenResponse:
        """Password grant.

        Raises:
            Unauthenticated: for every kind of failure alike.
        """
        now = self.clock()
        try:
            record = self.accounts.by_login(login_index(self.config.login_key, username))
        except ValueError:
            record = None
        usable = record is not None and not record.disabled
        until = record.locked_until if record is not None else None
        locked = until is not None and until > now
        good = self.check_password(record if usable else None, password)
        if record is None or not usable or locked or not good:
            if record is not None and usable and not locked:
                self.accounts.login_failed(record.account_id, now)
            log.info("auth.login_refused", locked=locked)
            raise Unauthenticated("login refused")
        rehash = (
            self._hasher.hash(password)
            if self._hasher.check_needs_rehash(record.password_hash)
            else None
        )
        self.accounts.login_succeeded(record.account_id, rehash)
        log.info("auth.login", account_id=record.account_id, role=record.role)
        refresh = new_refresh_token(self.rand)
        self.accounts.issue_refresh(
            refresh_hash(refresh), record.account_id, now=now, ttl=self.config.refresh_ttl
        )
        return self._tokens(record, refresh, now)

    def refresh(self, token: str) -> TokenResponse:
        """Rotate a refresh token.

        Raises:
            Unauthenticated: unknown, expired, revoked or replayed (the family is then revoked).
        """
        now = self.clock()
        fresh = new_refresh_token(self.rand)
        account_id = self.accounts.rotate_refresh(
            refresh_hash(token), refresh_hash(fresh), now=now, ttl=self.config.refresh_ttl
        )
        record = self.accounts.by_id(account_id) if account_id else None
        if record is None:
            log.info("auth.refresh_refused")
            raise Unauthenticated("refresh refused")
        return self._tokens(record, fresh, now)

    def logout(self, token: str) -> None:
        """Revoke the login a refresh token belongs to (its access tokens expire on their own)."""
        self.accounts.revoke_refresh(refresh_hash(token), now=self.clock())

    def _tokens(self, record: AccountRecord, refresh: str, now: datetime) -> TokenResponse:
        principal = Principal(record.account_id, frozenset({Role(record.role)}), record.subject_id)
        access = self.tokens.issue(principal, now=now, token_id=self.rand(12).hex())
        return TokenResponse(
            access_token=access,
            expires_in=self.tokens.ttl_s,
            refresh_token=refresh,
            roles=sorted(principal.roles),
        )

    def authenticate(self, token: str) -> Principal:
        """The principal of a bearer token (ours, or the configured OIDC issuer's).

        Raises:
            Unauthenticated: the token is not valid.
            AuthUnavailable: the external issuer's keys cannot be fetched.
        """
        if self.oidc is not None and token_issuer(token) == self.oidc.config.issuer:
            identity = self.oidc.verify(token)
            subject = None
            actor = "oidc:" + identity.subject.rsplit(" ", 1)[-1]
            if Role.USER in identity.roles:
                linked = self.accounts.by_oidc(identity.subject)
                if linked is not None and not linked.disabled:
                    subject, actor = linked.subject_id, linked.account_id
            return Principal(actor, identity.roles, subject, source="oidc")
        return self.tokens.verify(token)

    def requires(self, *roles: Role) -> Callable[..., Principal]:
        """A route dependency: the caller, who must hold one of *roles*."""
        wanted = frozenset(roles)

        def caller(token: Annotated[str | None, Depends(_bearer)]) -> Principal:
            if not token:
                raise Unauthenticated("no bearer token")
            principal = self.authenticate(token)
            if not principal.roles & wanted:
                raise Forbidden("role")
            if wanted == {Role.USER} and principal.subject_id is None:
                raise Forbidden("no linked account")  # an external user nobody linked
            return principal

        return caller


_bearer = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)


def auth_router(auth: Authenticator) -> APIRouter:
    """``/v1/auth``: token (password grant), refresh, logout."""
    router = APIRouter(prefix="/v1/auth", tags=["auth"])
    unauthorized: dict[int | str, dict[str, Any]] = {401: {"description": "Refused (always alike)"}}

    @router.post("/token", summary="OAuth2 password grant", responses=unauthorized)
    def token(form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> TokenResponse:
        return auth.login(form.username, form.password)

    @router.post("/refresh", summary="Rotate a refresh token", responses=unauthorized)
    def refresh(body: RefreshRequest) -> TokenResponse:
        return auth.refresh(body.refresh_token)

    @router.post("/logout", status_code=204, summary="Revoke a login's refresh tokens")
    def logout(body: RefreshRequest) -> Response:
        auth.logout(body.refresh_token)
        return Response(status_code=204)

    return router


def login_key_ok(name: str) -> bool:
    """Whether *name* is usable as a login name (for the CLI's early check)."""
    try:
        normalise_login(name)
    except ValueError:
        return False
    return True
