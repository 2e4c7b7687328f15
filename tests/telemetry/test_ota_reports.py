"""OTA progress report bodies: strict shape, states and reasons (pure)."""

from __future__ import annotations

import msgpack
import pytest

from device_registry.ota import DeviceOta, ProgressReport
from telemetry.errors import FutureReading, OtaInvalid, StaleReading
from telemetry.ota import encode_report, parse_report
from telemetry.validate import Limits

NOW = 1_800_000_000_000


def parse(body: bytes) -> ProgressReport:
    """Parse at NOW."""
    return parse_report(body, index=0, device_id="d", epoch=3, now_ms=NOW, limits=Limits())


def test_round_trip() -> None:
    """What a device encodes parses back to the same report."""
    r = parse(encode_report(9, DeviceOta.SUCCEEDED, 4096, ts_ms=NOW, firmware="2.0.0"))
    assert r == parse_report(
        encode_report(9, DeviceOta.SUCCEEDED, 4096, ts_ms=NOW, firmware="2.0.0"),
        index=0,
        device_id="d",
        epoch=3,
        now_ms=NOW,
        limits=Limits(),
    )
    failed = parse(encode_report(9, DeviceOta.FAILED, 0, ts_ms=NOW, reason="bad_signature"))
    assert failed.reason == "bad_signature"


@pytest.mark.parametrize(
    "data",
    [
        {"c": 1, "s": "downloading"},
        {"c": 0, "s": "downloading", "o": 0},
        {"c": 1, "s": "offered", "o": 0},
        {"c": 1, "s": "downloading", "o": -1},
        {"c": 1, "s": "downloading", "o": 0, "x": 1},
        {"c": 1, "s": "succeeded", "o": 0},
        {"c": 1, "s": "succeeded", "o": 0, "fw": "v2"},
        {"c": 1, "s": "failed", "o": 0, "r": "because"},
        {"c": 1, "s": "downloading", "o": 0, "r": "checksum"},
        {"c": True, "s": "downloading", "o": 0},
    ],
)
def test_malformed_reports_are_refused(data: dict[str, object]) -> None:
    """Missing or extra keys, unreportable states, bad offsets, versions or reasons."""
    with pytest.raises(OtaInvalid):
        parse(msgpack.packb({"t": NOW, "d": data}))


def test_timestamps_are_checked() -> None:
    """Reports outside the clock window are refused like any report."""
    with pytest.raises(StaleReading):
        parse(encode_report(1, DeviceOta.DOWNLOADING, 0, ts_ms=NOW - 30 * 86_400_000))
    with pytest.raises(FutureReading):
        parse(encode_report(1, DeviceOta.DOWNLOADING, 0, ts_ms=NOW + 86_400_000))
