"""Access tokens, refresh tokens and login indexes of the HTTP API (pure: no I/O, no clock).

Owns the roles, the authenticated principal, our own access tokens (EdDSA-signed JWTs with a
signing key derived from the root key, so nothing extra must be stored or distributed), the
opaque refresh tokens (only their SHA-256 is stored) and the keyed hash under which a login
name is looked up (no login name is stored in the clear). Does not own accounts, passwords or
external OIDC tokens (``api.auth``, ``api.oidc``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from api.errors import Unauthenticated

ISSUER = "qnect"
AUDIENCE = "qnect-api"
ALGORITHM = "EdDSA"
SIGNING_INFO = b"qnect/api/access-token/v1"  # HKDF labels under the root key
LOGIN_INFO = b"qnect/api/login-index/v1"
MAX_ACCESS_TTL_S = 900  # 15 min: a stolen access token is worth little; refresh is revocable
REFRESH_PREFIX = "qr1-"
REFRESH_BYTES = 32
MAX_LOGIN_CHARS = 254  # an e-mail address at most
LEEWAY_S = 5  # clock skew between API processes on different hosts


class Role(StrEnum):
    """Who may use which routes."""

    USER = "user"  # an end user of the mobile app, linked to a data subject
    SUPPORT = "support"
    OPERATOR = "operator"
    ANALYST = "analyst"
    DPO = "dpo"


STAFF_ROLES = frozenset({Role.SUPPORT, Role.OPERATOR, Role.ANALYST, Role.DPO})


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    actor_id: str  # our account id, or "oidc:<sub>" for staff of an external issuer
    roles: frozenset[Role]
    subject_id: str | None  # the data subject of an end user
    source: str = "local"  # local | oidc


def derive_key(root_key: bytes, info: bytes) -> bytes:
    """A 32-byte key for one use, derived from the root key."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(root_key)


def normalise_login(name: str) -> str:
    """The canonical form of a login name (NFKC, case-folded, trimmed).

    Raises:
        ValueError: empty or longer than an e-mail address may be.
    """
    canonical = unicodedata.normalize("NFKC", name).strip().casefold()
    if not canonical or len(canonical) > MAX_LOGIN_CHARS:
        raise ValueError("login name must have 1 to 254 characters")
    return canonical


def login_index(key: bytes, name: str) -> bytes:
    """The keyed hash a login name is stored and found under."""
    return hmac.new(key, normalise_login(name).encode(), hashlib.sha256).digest()


def new_refresh_token(rand: Callable[[int], bytes]) -> str:
    """A fresh opaque refresh token (256 bits)."""
    return REFRESH_PREFIX + base64.urlsafe_b64encode(rand(REFRESH_BYTES)).decode().rstrip("=")


def refresh_hash(token: str) -> bytes:
    """What is stored of a refresh token."""
    return hashlib.sha256(token.encode()).digest()


class AccessTokens:
    """Issue and verify our own access tokens."""

    def __init__(self, signing_seed: bytes, *, ttl_s: int = 600) -> None:
        if not 0 < ttl_s <= MAX_ACCESS_TTL_S:
            raise ValueError("access tokens live 1 to 900 seconds")
        self._key = Ed25519PrivateKey.from_private_bytes(signing_seed)
        self._public = self._key.public_key()
        self.ttl_s = ttl_s

    def issue(self, principal: Principal, *, now: datetime, token_id: str) -> str:
        """A signed access token for *principal*, valid ``ttl_s`` from *now*."""
        claims: dict[str, object] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": principal.actor_id,
            "roles": sorted(principal.roles),
            "iat": int(now.timestamp()),
            "exp": int((now + timedelta(seconds=self.ttl_s)).timestamp()),
            "jti": token_id,
        }
        if principal.subject_id is not None:
            claims["subject"] = principal.subject_id
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def verify(self, token: str) -> Principal:
        """The principal of a valid token.

        Raises:
            Unauthenticated: bad signature, wrong issuer or audience, expired, malformed.
        """
        try:
            claims = jwt.decode(
                token,
                self._public,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise Unauthenticated(type(exc).__name__) from exc
        return Principal(
            str(claims["sub"]),
            parse_roles(claims.get("roles")),
            _optional_str(claims.get("subject")),
        )


def parse_roles(value: object) -> frozenset[Role]:
    """Known roles from a claim (a list, or a space-separated string); unknown ones ignored."""
    names = value.split() if isinstance(value, str) else value
    if not isinstance(names, list):
        return frozenset()
    known = {r.value for r in Role}
    return frozenset(Role(n) for n in names if isinstance(n, str) and n in known)


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
