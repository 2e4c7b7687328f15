"""End-to-end storage receipts (pure): tell each device which of its frames are stored.

A receipt is a downlink frame under the session's downlink key whose body lists the stored
counters as ranges, ``{"e": epoch, "r": [[lo, hi], ...]}``. Workers share nothing, so receipts
carry exact ranges rather than "everything up to N": one device's frames are spread over all
workers of the shared subscription. Receipts are idempotent, so their counter is random (flag
``RANDOM_COUNTER``) and needs no coordination between workers.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgpack

from crypto.device_keys import Flags, SessionKeys, seal_frame


def ranges(counters: Iterable[int]) -> list[list[int]]:
    """Compress counters into sorted inclusive ranges."""
    out: list[list[int]] = []
    for c in sorted(set(counters)):
        if out and c == out[-1][1] + 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


def receipt_topic(device_id: str) -> str:
    """Downlink topic of receipts."""
    return f"devices/{device_id}/down/receipt"


def seal_receipt(
    keys: SessionKeys, device_id: str, counters: Iterable[int], *, counter: int
) -> bytes:
    """Build the receipt frame; *counter* is a random non-zero 63-bit value."""
    body = msgpack.packb({"e": keys.epoch, "r": ranges(counters)})
    return seal_frame(
        keys.down,
        epoch=keys.epoch,
        counter=counter,
        plaintext=body,
        device_id=device_id,
        topic=receipt_topic(device_id),
        flags=Flags.DOWN | Flags.RANDOM_COUNTER,
    )
