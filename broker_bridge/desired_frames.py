"""Desired-state downlink frames on ``devices/<id>/down/desired`` (pure).

The body is msgpack ``{"v": shadow version, "d": {point name: wire value}}``, the whole
desired state (not a patch), inside a downlink frame sealed under the session's downlink key
(``Flags.DOWN | RANDOM_COUNTER``, like receipts, re-key and OTA offers: every worker shares
the key), so only the device holding the session reads it and a frame moved to another device
or topic does not open. Frames are idempotent: a device applies a version newer than the last
it applied and ignores the rest, so a resent or replayed frame changes nothing.

Does not own: when to send (``broker_bridge.desired``), what is due (``postgres_shadow``) or
what the device does with the values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import msgpack

from crypto.device_keys import Flags, SessionKeys, open_frame, parse_header, seal_frame
from crypto.errors import DecryptionFailed, MalformedFrame


@dataclass(frozen=True, slots=True)
class DesiredState:
    """A version of a device's desired state, in wire units."""

    version: int
    values: dict[str, object] = field(default_factory=dict)


def desired_topic(device_id: str) -> str:
    """Downlink topic of desired states."""
    return f"devices/{device_id}/down/desired"


def seal_desired(
    keys: SessionKeys, device_id: str, version: int, values: Mapping[str, object], *, counter: int
) -> bytes:
    """Seal a desired state for the device; *counter* is a random non-zero 63-bit value."""
    return seal_frame(
        keys.down,
        epoch=keys.epoch,
        counter=counter,
        plaintext=msgpack.packb({"v": version, "d": dict(values)}),
        device_id=device_id,
        topic=desired_topic(device_id),
        flags=Flags.DOWN | Flags.RANDOM_COUNTER,
    )


def open_desired(keys: SessionKeys, device_id: str, frame: bytes) -> DesiredState:
    """Authenticate and read a desired-state frame (device side).

    Raises:
        DecryptionFailed: not a downlink frame of this session, or it does not verify.
        MalformedFrame: the body is not a desired state.
    """
    header = parse_header(frame)
    if not header.flags & Flags.DOWN or header.epoch != keys.epoch or header.sid != keys.down.sid:
        raise DecryptionFailed(f"session/{header.epoch}")
    plain = open_frame(
        keys.down, header, frame, device_id=device_id, topic=desired_topic(device_id)
    )
    try:
        body = msgpack.unpackb(plain, raw=False)
        version, values = body["v"], body["d"]
    except (ValueError, TypeError, KeyError) as exc:
        raise MalformedFrame("not a desired state") from exc
    if not isinstance(version, int) or isinstance(version, bool) or not isinstance(values, dict):
        raise MalformedFrame("not a desired state")
    return DesiredState(version, {str(k): v for k, v in values.items()})
