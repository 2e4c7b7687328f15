"""Reject reasons and errors of the ingest pipeline.

``Rejected`` means: never retry, quarantine with its code, count per device and reason.
``Unavailable`` means: a dependency (database, broker) is down; retry with backoff, ack nothing.
Messages and details never carry payload content, only ids, sizes and point names.
"""

from __future__ import annotations


class TelemetryError(Exception):
    """Base class of telemetry errors."""


class Unavailable(TelemetryError):
    """The database or broker cannot be reached; the batch is retried, nothing is acked."""


class Rejected(TelemetryError):
    """A device message that will never be accepted; ``code`` is the stable reason."""

    code = "rejected"

    def __init__(self, detail: str = "") -> None:
        super().__init__(f"{self.code}: {detail}" if detail else self.code)
        self.detail = detail


def _reason(name: str, code: str, doc: str) -> type[Rejected]:
    return type(name, (Rejected,), {"code": code, "__doc__": doc})


BadTopic = _reason("BadTopic", "bad_topic", "Topic is not devices/<id>/up/<kind>.")
Oversized = _reason("Oversized", "oversized", "Payload exceeds the size cap.")
UnknownDevice = _reason("UnknownDevice", "unknown_device", "No such device in the registry.")
DeviceRevoked = _reason("DeviceRevoked", "device_revoked", "The device's credentials are revoked.")
MalformedFrame = _reason("MalformedFrame", "malformed_frame", "Frame header cannot be parsed.")
UnsupportedVersion = _reason(
    "UnsupportedVersion", "unsupported_version", "Unknown protocol version or cipher suite."
)
UnknownEpoch = _reason("UnknownEpoch", "unknown_epoch", "No session with this epoch exists.")
StaleEpoch = _reason("StaleEpoch", "stale_epoch", "Session epoch superseded beyond the grace.")
KeyMismatch = _reason(
    "KeyMismatch",
    "key_mismatch",
    "Frame's session id is not this device's: sealed for another device or topic.",
)
BadTag = _reason("BadTag", "bad_tag", "Authentication tag does not verify (altered frame).")
Replay = _reason("Replay", "replay", "Frame counter already received in this session.")
MalformedPayload = _reason("MalformedPayload", "malformed_payload", "Plaintext is not a report.")
SchemaViolation = _reason(
    "SchemaViolation", "schema_violation", "Unknown, missing or mistyped data point."
)
OutOfRange = _reason("OutOfRange", "out_of_range", "Value outside the point's range or step.")
StaleReading = _reason("StaleReading", "stale_timestamp", "Reading older than the maximum age.")
FutureReading = _reason("FutureReading", "future_timestamp", "Reading too far in the future.")
MacMismatch = _reason("MacMismatch", "mac_mismatch", "Reported MAC differs from the registry's.")
KeyUnavailable = _reason(
    "KeyUnavailable", "key_unavailable", "A needed key is destroyed or cannot be opened."
)
RateLimited = _reason(
    "RateLimited", "rate_limited", "The device exceeded its live rate or backlog allowance."
)
NoHealthConsent = _reason(
    "NoHealthConsent",
    "no_health_consent",
    "Health readings from a device whose owner gave no explicit (Art. 9) consent.",
)
InternalError = _reason(
    "InternalError", "internal_error", "A bug met this message; it is quarantined, not retried."
)
KxInvalid = _reason("KxInvalid", "kx_invalid", "Key-exchange request does not authenticate.")
KxReplay = _reason("KxReplay", "kx_replay", "Key-exchange nonce reused or timestamp skewed.")
DrkSuperseded = _reason(
    "DrkSuperseded",
    "drk_superseded",
    "Key exchange under a root-key version that was rotated away (no new sessions under it).",
)
DrkDestroyed = _reason(
    "DrkDestroyed",
    "drk_destroyed",
    "Frame of a session under a root-key version whose grace period ended (key destroyed).",
)
RekeyInvalid = _reason(
    "RekeyInvalid", "rekey_invalid", "Root-key rotation proof for no pending key, or it fails."
)

OtaInvalid = _reason(
    "OtaInvalid", "ota_invalid", "OTA progress report of the wrong shape, state or reason."
)


class StorageFailed(TelemetryError):
    """The database refused a batch for its data (not an outage); isolate the culprit."""

    def __init__(self, sqlstate: str | None) -> None:
        super().__init__(f"storage failed: {sqlstate}")
        self.sqlstate = sqlstate
