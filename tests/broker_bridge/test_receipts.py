"""Storage receipts: range compression and the sealed downlink receipt frame."""

from __future__ import annotations

import itertools

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker_bridge.receipts import ranges, receipt_topic, seal_receipt
from crypto.device_keys import Flags, open_frame, parse_header, session_keys
from crypto.errors import DecryptionFailed, MalformedFrame

ROOT = bytes(range(32))
DEVICE = "abcdefghijklmnop"
KEYS = session_keys(
    ROOT, DEVICE, epoch=7, device_nonce=bytes([1]) * 16, server_nonce=bytes([2]) * 16
)
COUNTER = 0x0123456789ABCDEF
RECEIPT = (
    "010305000000070123456789abcdef4ab81a72"
    "17107714bb2361100048b7d6c3535ec996e3214eca4b5a01edb1a5a3a4"
)


@pytest.mark.parametrize(
    ("counters", "expected"),
    [
        ([], []),
        ([4], [[4, 4]]),
        ([1, 2, 3], [[1, 3]]),
        ([1, 3, 5], [[1, 1], [3, 3], [5, 5]]),
        ([9, 3, 2, 2, 8, 1, 10], [[1, 3], [8, 10]]),
        (iter([2**63 - 1, 2**63 - 2]), [[2**63 - 2, 2**63 - 1]]),
    ],
)
def test_ranges(counters, expected):
    """Ranges: counters are sorted, deduplicated and merged into inclusive ranges."""
    assert ranges(counters) == expected


@given(base=st.integers(0, 2**63 - 202), offsets=st.sets(st.integers(1, 200), max_size=60))
def test_ranges_cover_exactly_the_counters(base: int, offsets: set[int]):
    """The ranges are sorted, disjoint, non-adjacent and cover exactly the given counters."""
    counters = {base + o for o in offsets}
    out = ranges(counters)
    assert {c for lo, hi in out for c in range(lo, hi + 1)} == counters
    assert all(lo <= hi for lo, hi in out)
    assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(out))


def test_receipt_topic():
    """Receipts go to devices/<id>/down/receipt."""
    assert receipt_topic(DEVICE) == "devices/abcdefghijklmnop/down/receipt"


def test_receipt_vector():
    """The receipt for the fixed session, counters and frame counter has the pinned bytes."""
    assert seal_receipt(KEYS, DEVICE, [3, 1, 2, 5], counter=COUNTER).hex() == RECEIPT


def test_receipt_opens_on_the_device():
    """A receipt is a downlink frame flagged DOWN|RANDOM_COUNTER whose body lists the ranges."""
    frame = seal_receipt(KEYS, DEVICE, [5, 3, 1, 2], counter=COUNTER)
    header = parse_header(frame)
    assert header.flags == Flags.DOWN | Flags.RANDOM_COUNTER
    assert (header.epoch, header.counter, header.sid) == (7, COUNTER, KEYS.down.sid)
    body = open_frame(KEYS.down, header, frame, device_id=DEVICE, topic=receipt_topic(DEVICE))
    assert msgpack.unpackb(body) == {"e": 7, "r": [[1, 3], [5, 5]]}


def test_receipt_is_bound_to_downlink_key_and_topic():
    """A receipt does not open under the uplink key or on another topic."""
    frame = seal_receipt(KEYS, DEVICE, [1], counter=COUNTER)
    header = parse_header(frame)
    with pytest.raises(DecryptionFailed):
        open_frame(KEYS.up, header, frame, device_id=DEVICE, topic=receipt_topic(DEVICE))
    with pytest.raises(DecryptionFailed):
        open_frame(KEYS.down, header, frame, device_id=DEVICE, topic=f"devices/{DEVICE}/up/status")


def test_empty_receipt():
    """A receipt for no counters carries an empty range list."""
    frame = seal_receipt(KEYS, DEVICE, [], counter=1)
    body = open_frame(
        KEYS.down, parse_header(frame), frame, device_id=DEVICE, topic=receipt_topic(DEVICE)
    )
    assert msgpack.unpackb(body) == {"e": 7, "r": []}


@pytest.mark.parametrize("counter", [0, 2**63])
def test_receipt_counter_out_of_range(counter: int):
    """A receipt frame counter of 0 or above 2**63-1 is refused with MalformedFrame."""
    with pytest.raises(MalformedFrame):
        seal_receipt(KEYS, DEVICE, [1], counter=counter)
