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


class NotVisible(RegistryError):
    """The resource does not exist, or not for this caller (answered alike: no existence oracle).

    The refusal was audited as a deny event before this was raised.
    """


class VersionConflict(RegistryError):
    """An optimistic-concurrency check failed: the stored version is not the expected one."""

    def __init__(self, current: int) -> None:
        super().__init__(f"version is {current}")
        self.current = current


class PreconditionFailed(VersionConflict):
    """The same, where the expected version came from an ``If-Match`` precondition."""
