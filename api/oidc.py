"""Access tokens from an external OpenID Connect issuer, verified against its JWKS.

Owns the configuration (issuer, audience, JWKS URL, the claim that carries roles, accepted
algorithms) and the verification: signature by a key of the issuer's JWKS (fetched over
HTTP(S) and cached by PyJWT's ``PyJWKClient``; an unknown key id triggers one refetch, which
covers the issuer's key rotation), issuer, audience, expiry. Symmetric algorithms are never
accepted, so a public key cannot be abused as an HMAC secret.
"""

from __future__ import annotations

from dataclasses import dataclass

import jwt

from api.errors import AuthUnavailable, Unauthenticated
from api.tokens import LEEWAY_S, Role, parse_roles

JWKS_TIMEOUT_S = 5  # a slow issuer must not hold API workers for long
JWKS_CACHE_S = 300  # keys are re-read every 5 min at most (and on an unknown key id)
ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"})


@dataclass(frozen=True, slots=True)
class OidcConfig:
    """Where external tokens come from and what they must say."""

    issuer: str
    audience: str
    jwks_url: str
    roles_claim: str = "roles"
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")

    def __post_init__(self) -> None:
        """Refuse symmetric or unknown algorithms."""
        if not self.algorithms or not set(self.algorithms) <= ASYMMETRIC:
            raise ValueError("OIDC algorithms must be asymmetric (RS*, PS*, ES*, EdDSA)")


@dataclass(frozen=True, slots=True)
class ExternalIdentity:
    """What a verified external token says."""

    subject: str  # "<issuer> <sub>": unique across issuers
    roles: frozenset[Role]


class OidcVerifier:
    """Verify tokens of one external issuer."""

    def __init__(self, config: OidcConfig) -> None:
        self.config = config
        self._jwks = jwt.PyJWKClient(
            config.jwks_url, cache_keys=True, lifespan=JWKS_CACHE_S, timeout=JWKS_TIMEOUT_S
        )

    def verify(self, token: str) -> ExternalIdentity:
        """The identity of a valid token of this issuer.

        Raises:
            Unauthenticated: bad signature, unknown key, wrong issuer or audience, expired.
            AuthUnavailable: the JWKS endpoint did not answer.
        """
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=list(self.config.algorithms),
                audience=self.config.audience,
                issuer=self.config.issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.PyJWKClientConnectionError as exc:
            raise AuthUnavailable("jwks unreachable") from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated(type(exc).__name__) from exc
        return ExternalIdentity(
            f"{self.config.issuer} {claims['sub']}",
            parse_roles(claims.get(self.config.roles_claim)),
        )


def token_issuer(token: str) -> str | None:
    """The ``iss`` claim of a token, unverified: only to choose which verifier checks it."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    issuer = claims.get("iss")
    return issuer if isinstance(issuer, str) else None
