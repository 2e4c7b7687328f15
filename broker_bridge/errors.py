"""Errors of the broker side."""

from __future__ import annotations


class BrokerError(Exception):
    """Base of broker-side failures."""


class BrokerAdminError(BrokerError):
    """A dynamic-security command failed or the broker did not answer it."""
