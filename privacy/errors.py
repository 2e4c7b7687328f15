"""Errors of the privacy core, split by what the caller should do next."""

from __future__ import annotations


class PrivacyError(Exception):
    """Base class of privacy-core errors."""


class PolicyError(PrivacyError):
    """The purpose table or the field registry is malformed: fix the data, do not retry."""


class AccessDenied(PrivacyError):
    """A read was refused as a whole (undeclared purpose, role not permitted); it was audited."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnknownSubject(PrivacyError):
    """No such data subject (or it was erased)."""


class AuditUnavailable(PrivacyError):
    """The audit event could not be written, so nothing was returned (fail closed)."""


class InvalidAuditEvent(PrivacyError):
    """An audit event is malformed (naive time, unknown actor type or decision): a bug, not data."""
