"""OTA downlink messages on ``devices/<id>/down/ota`` (pure): offer, chunk, cancel.

Each is a msgpack map inside a downlink frame sealed under the session's downlink key
(``Flags.DOWN | RANDOM_COUNTER``, like receipts and re-key offers: several workers share the
key), so only the device holding the session reads it and a frame moved to another device or
topic does not open. The firmware itself is authenticated end to end by the signed manifest
(``crypto.firmware``): the session protects delivery, the release key protects the content.

* offer  ``{"k": "offer", "c": campaign, "m": manifest bytes, "s": signature, "n": chunk size}``
* chunk  ``{"k": "chunk", "c": campaign, "o": offset, "b": bytes}``
* cancel ``{"k": "cancel", "c": campaign}``

Does not own: when to send them (``broker_bridge.ota``) or what the device does with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

from crypto.device_keys import Flags, SessionKeys, open_frame, parse_header, seal_frame
from crypto.errors import DecryptionFailed, MalformedFrame


@dataclass(frozen=True, slots=True)
class Offer:
    """A campaign offering a signed manifest."""

    campaign_id: int
    manifest: bytes
    signature: bytes
    chunk_bytes: int


@dataclass(frozen=True, slots=True)
class Chunk:
    """Bytes of the artifact at an offset."""

    campaign_id: int
    offset: int
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop working on a campaign."""

    campaign_id: int


Message = Offer | Chunk | Cancel


def ota_topic(device_id: str) -> str:
    """Downlink topic of OTA messages."""
    return f"devices/{device_id}/down/ota"


def _seal(keys: SessionKeys, device_id: str, body: dict[str, Any], counter: int) -> bytes:
    return seal_frame(
        keys.down,
        epoch=keys.epoch,
        counter=counter,
        plaintext=msgpack.packb(body),
        device_id=device_id,
        topic=ota_topic(device_id),
        flags=Flags.DOWN | Flags.RANDOM_COUNTER,
    )


def seal_message(keys: SessionKeys, device_id: str, message: Message, *, counter: int) -> bytes:
    """Seal *message* for the device; *counter* is a random non-zero 63-bit value."""
    body: dict[str, Any]
    if isinstance(message, Offer):
        body = {
            "k": "offer",
            "c": message.campaign_id,
            "m": message.manifest,
            "s": message.signature,
            "n": message.chunk_bytes,
        }
    elif isinstance(message, Chunk):
        body = {"k": "chunk", "c": message.campaign_id, "o": message.offset, "b": message.data}
    else:
        body = {"k": "cancel", "c": message.campaign_id}
    return _seal(keys, device_id, body, counter)


def open_message(keys: SessionKeys, device_id: str, frame: bytes) -> Message:
    """Authenticate and read an OTA message (device side).

    Raises:
        DecryptionFailed: not a downlink frame of this session, or it does not verify.
        MalformedFrame: the body is not one of the three messages.
    """
    header = parse_header(frame)
    if not header.flags & Flags.DOWN or header.epoch != keys.epoch or header.sid != keys.down.sid:
        raise DecryptionFailed(f"session/{header.epoch}")
    plain = open_frame(keys.down, header, frame, device_id=device_id, topic=ota_topic(device_id))
    try:
        body = msgpack.unpackb(plain, raw=False)
        kind = body["k"]
        if kind == "offer":
            return Offer(int(body["c"]), bytes(body["m"]), bytes(body["s"]), int(body["n"]))
        if kind == "chunk":
            return Chunk(int(body["c"]), int(body["o"]), bytes(body["b"]))
        if kind == "cancel":
            return Cancel(int(body["c"]))
    except (ValueError, TypeError, KeyError) as exc:
        raise MalformedFrame("not an OTA message") from exc
    raise MalformedFrame("unknown OTA message")
