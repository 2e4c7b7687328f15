"""Settings of the HTTP API's authentication (``QNECT_*``), read once when the app is built.

Separate from ``qnect.settings`` because only ``qnect api`` needs them. Our own tokens need
nothing here (their keys derive from the root key); an external OpenID Connect issuer is
configured by all three of issuer, audience and JWKS URL, or not at all.
"""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from api.oidc import OidcConfig
from api.tokens import MAX_ACCESS_TTL_S


class ApiSettings(BaseSettings):
    """Authentication settings of ``qnect api``."""

    model_config = SettingsConfigDict(env_prefix="QNECT_", extra="ignore")

    access_token_ttl_s: int = Field(default=600, gt=0, le=MAX_ACCESS_TTL_S)
    refresh_token_ttl_days: int = Field(default=30, gt=0, le=90)
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_jwks_url: str | None = None
    oidc_roles_claim: str = "roles"
    oidc_algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")

    @model_validator(mode="after")
    def _all_or_none(self) -> ApiSettings:
        given = [self.oidc_issuer, self.oidc_audience, self.oidc_jwks_url]
        if any(given) and not all(given):
            raise ValueError("set all of QNECT_OIDC_ISSUER, _AUDIENCE and _JWKS_URL, or none")
        return self

    def oidc(self) -> OidcConfig | None:
        """The external issuer, if configured."""
        if not (self.oidc_issuer and self.oidc_audience and self.oidc_jwks_url):
            return None
        return OidcConfig(
            self.oidc_issuer,
            self.oidc_audience,
            self.oidc_jwks_url,
            self.oidc_roles_claim,
            self.oidc_algorithms,
        )
