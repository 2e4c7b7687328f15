"""Errors raised by the HTTP layer itself (domain errors come from the packages below)."""

from __future__ import annotations


class ApiError(Exception):
    """Base class of errors raised by :mod:`api`."""


class MalformedRequest(ApiError):
    """A request body that is not the JSON or form the endpoint documents (never echoed)."""


class Unauthenticated(ApiError):
    """No valid credentials: a missing, malformed, expired or revoked token, or a failed login.

    One class for every cause, answered alike, so a caller learns nothing about which part
    was wrong (an unknown login name and a wrong password look the same).
    """


class Forbidden(ApiError):
    """Authenticated, but the caller's role may not use this route."""


class ReauthenticationFailed(ApiError):
    """A destructive request's password confirmation did not match."""


class PreconditionRequired(ApiError):
    """A conditional write came without ``If-Match`` or an expected version (RFC 6585, 428)."""


class InvalidInput(ApiError):
    """A well-formed request whose values the domain refuses; ``detail`` is safe to show."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class AuthUnavailable(ApiError):
    """The external issuer's keys could not be fetched; the token may be fine, retry later."""
