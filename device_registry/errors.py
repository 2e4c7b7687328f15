"""Errors of the device registry."""

from __future__ import annotations


class RegistryError(Exception):
    """Base class of registry errors."""


class UnknownModel(RegistryError):
    """A device model name that has no profile."""

    def __init__(self, model: str) -> None:
        super().__init__(f"unknown device model {model!r}")
        self.model = model


class RegistryUnavailable(RegistryError):
    """The registry database cannot be reached; retry with backoff."""
