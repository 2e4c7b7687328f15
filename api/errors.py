"""Errors raised by the HTTP layer itself (domain errors come from the packages below)."""

from __future__ import annotations


class ApiError(Exception):
    """Base class of errors raised by :mod:`api`."""


class MalformedRequest(ApiError):
    """A request body that is not the JSON or form the endpoint documents (never echoed)."""
