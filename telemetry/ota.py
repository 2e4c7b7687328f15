"""OTA progress reports on ``devices/<id>/up/ota`` (pure): their body, checked strictly.

The plaintext of an ``up/ota`` frame is a report like any other, ``{"t": ms, "d": {...}}``,
with the data map::

    c   campaign id (int)                 s   state: downloading | verifying | installing
    o   bytes of the artifact held (int)      | succeeded | failed
    fw  version now running (succeeded)   r   reason code (failed; device_registry.ota)

``downloading`` with offset ``o`` doubles as the request for the chunk at ``o``: that is what
lets a device resume after a reboot with nothing but its offset. Unknown keys, states or
reasons are refused (``ota_invalid``); the campaign and device rows decide the rest.

Does not own: the state machine (``device_registry.ota``) or the frame's authentication.
"""

from __future__ import annotations

import msgpack

from crypto.firmware import MAX_ARTIFACT_BYTES, is_version
from device_registry.ota import FAILURE_REASONS, REPORTABLE, DeviceOta, ProgressReport
from telemetry.errors import FutureReading, OtaInvalid, StaleReading
from telemetry.validate import Limits, decode_body

MAX_CAMPAIGN_ID = 2**63 - 1
_KEYS = frozenset({"c", "s", "o", "fw", "r"})


def parse_report(
    plaintext: bytes,
    *,
    index: int,
    device_id: str,
    epoch: int,
    now_ms: int,
    limits: Limits,
) -> ProgressReport:
    """Decode and check one progress report.

    Raises:
        MalformedPayload: not a report body.
        StaleReading, FutureReading: its timestamp is out of the accepted window.
        OtaInvalid: wrong keys, types, state, offset, version or reason.
    """
    ts, data = decode_body(plaintext)
    if now_ms - ts > limits.max_age_ms:
        raise StaleReading(f"{(now_ms - ts) // 1000} s old")
    if ts - now_ms > limits.max_skew_ms:
        raise FutureReading(f"{(ts - now_ms) // 1000} s ahead")
    if not set(data) <= _KEYS or not {"c", "s", "o"} <= set(data):
        raise OtaInvalid("keys must be c, s, o and optionally fw, r")
    campaign, state, offset = data["c"], data["s"], data["o"]
    if type(campaign) is not int or not 1 <= campaign <= MAX_CAMPAIGN_ID:
        raise OtaInvalid("c: campaign id")
    if state not in {s.value for s in REPORTABLE}:
        raise OtaInvalid("s: not a reportable state")
    if type(offset) is not int or not 0 <= offset <= MAX_ARTIFACT_BYTES:
        raise OtaInvalid("o: offset out of range")
    firmware, reason = data.get("fw"), data.get("r")
    if (firmware is not None) != (state == DeviceOta.SUCCEEDED):
        raise OtaInvalid("fw: only, and always, with succeeded")
    if firmware is not None and not (isinstance(firmware, str) and is_version(firmware)):
        raise OtaInvalid("fw: bad format")
    if (reason is not None) != (state == DeviceOta.FAILED) or (
        reason is not None and reason not in FAILURE_REASONS
    ):
        raise OtaInvalid("r: a known reason, only with failed")
    return ProgressReport(
        index, device_id, epoch, campaign, DeviceOta(state), offset, firmware, reason
    )


def encode_report(
    campaign_id: int,
    state: DeviceOta,
    offset: int,
    *,
    ts_ms: int,
    firmware: str | None = None,
    reason: str | None = None,
) -> bytes:
    """A progress report body (device side; seal it as an ``up/ota`` frame)."""
    data: dict[str, object] = {"c": campaign_id, "s": state.value, "o": offset}
    if firmware is not None:
        data["fw"] = firmware
    if reason is not None:
        data["r"] = reason
    return bytes(msgpack.packb({"t": ts_ms, "d": data}))
