"""Pairing outcomes (pure): why an activation was refused, as stable reason codes."""

from __future__ import annotations

from enum import StrEnum

from device_registry.errors import RegistryError

MAX_TOKEN_TTL_S = 600  # the app's token is good for 10 minutes at most
PROOF_SKEW_MS = 300_000  # the device's clock may be this far off when it activates


class PairingRefusal(StrEnum):
    """Why an activation (or a token request) was refused."""

    TOKEN_MALFORMED = "pair_token_malformed"  # noqa: S105 - a reason code
    TOKEN_UNKNOWN = "pair_token_unknown"  # noqa: S105 - a reason code
    TOKEN_EXPIRED = "pair_token_expired"  # noqa: S105 - a reason code
    TOKEN_USED = "pair_token_used"  # noqa: S105 - a reason code
    WRONG_HOUSEHOLD = "pair_wrong_household"
    PROOF_INVALID = "pair_proof_invalid"
    CLOCK_SKEW = "pair_clock_skew"
    DEVICE_UNKNOWN = "pair_device_unknown"  # unknown or revoked: not told apart
    DEVICE_OWNED = "pair_device_owned"  # unpair first
    SUBJECT_NOT_IN_HOUSEHOLD = "pair_subject_not_in_household"


class PairingRefused(RegistryError):
    """An activation or token request was refused; ``reason`` says why."""

    def __init__(self, reason: PairingRefusal) -> None:
        super().__init__(reason.value)
        self.reason = reason
