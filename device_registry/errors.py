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


class FirmwareRejected(RegistryError):
    """An artifact upload or campaign the registry refuses; ``reason`` is a stable code.

    Upload reasons: ``bad_signature``, ``malformed_manifest``, ``size_mismatch``,
    ``digest_mismatch``, ``seq_not_increasing``, ``version_exists``, ``no_release_key``;
    campaign reasons: ``unknown_model``, ``bad_waves``, ``bad_range``, ``model_not_in_manifest``.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class CampaignConflict(RegistryError):
    """A campaign action that its current status does not allow (pause a completed one)."""

    def __init__(self, status: str) -> None:
        super().__init__(f"campaign is {status}")
        self.status = status
