"""Report validation: each reject class with its code, and no other exception for any input."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_registry.profiles import (
    CAMERA,
    CLEANER,
    INFO,
    PLUG,
    PROFILES,
    SCALE,
    STATUS,
    THERMOSTAT,
    Profile,
    ReportKind,
)
from telemetry.errors import (
    FutureReading,
    MalformedPayload,
    OutOfRange,
    Rejected,
    SchemaViolation,
    StaleReading,
)
from telemetry.validate import (
    MAX_POINTS,
    MAX_TS_MS,
    Limits,
    Report,
    check_value,
    decode_body,
    validate,
)

NOW = 1_700_000_000_000
LIMITS = Limits()
TELEMETRY = ReportKind.TELEMETRY
GOOD_INFO = {"mac": "AA:BB:CC:DD:EE:0F", "fw": "1.2.3"}
CASES = [(TELEMETRY, p) for p in PROFILES.values()] + [
    (ReportKind.STATUS, STATUS),
    (ReportKind.INFO, INFO),
]


def _body(data: Any, ts: Any = NOW) -> bytes:
    return msgpack.packb({"t": ts, "d": data})


def _validate(
    data: Any, profile: Profile = PLUG, kind: ReportKind = TELEMETRY, ts: Any = NOW
) -> Report:
    return validate(kind, profile, _body(data, ts), now_ms=NOW, limits=LIMITS)


def _reject(exc_type: type[Rejected], data: Any, profile: Profile = PLUG, **kw: Any) -> Rejected:
    with pytest.raises(exc_type) as info:
        _validate(data, profile, **kw)
    return info.value


def test_valid_telemetry():
    """A valid plug report yields its kind, timestamp and (point, value) pairs in order."""
    report = _validate({"power_w": 1234, "relay_on": True})
    assert (report.kind, report.ts_ms) == (TELEMETRY, NOW)
    assert [(p.name, v) for p, v in report.values] == [("power_w", 1234), ("relay_on", True)]


def test_valid_info_and_status():
    """Complete info and status reports pass with every optional point."""
    info = {**GOOD_INFO, "ip": "2001:db8::1", "ssid": "home wifi", "rssi": -60}
    assert len(_validate(info, INFO, ReportKind.INFO).values) == 5
    assert _validate({"ip": "192.168.1.2", **GOOD_INFO}, INFO, ReportKind.INFO).values[0][1] == (
        "192.168.1.2"
    )
    assert _validate({"online": False}, STATUS, ReportKind.STATUS).values[0][1] is False


def test_valid_other_profiles():
    """Thermostat, scale, cleaner and camera accept in-range values of every point type."""
    _validate({"temperature_c": -400, "mode": "heat", "setpoint_c": 215}, THERMOSTAT)
    _validate({"weight_kg": 7250, "bmi": 231}, SCALE)
    _validate({"battery_pct": 100, "state": "charging", "pos_x_m": -10_000}, CLEANER)
    _validate({"motion": True, "media_ref": "clips/2024/01/a.mp4"}, CAMERA)


def test_decode_body_returns_timestamp_and_map():
    """decode_body returns t and the raw d map."""
    assert decode_body(_body({"x": 1})) == (NOW, {"x": 1})


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",  # a byte msgpack never uses
        _body({"power_w": 1})[:-1],  # truncated
        b"not msgpack at all",
        _body({"power_w": 1}) + b"\x00",  # trailing bytes
        msgpack.packb([NOW, {}]),  # not a map
        msgpack.packb(NOW),
        msgpack.packb({"t": NOW}),  # missing d
        msgpack.packb({"d": {}}),  # missing t
        msgpack.packb({"t": NOW, "d": {}, "x": 1}),  # extra key
        msgpack.packb({b"t": NOW, b"d": {}}),  # binary keys
        msgpack.packb({1: NOW}),  # non-string key
        _body({}, ts=float(NOW)),
        _body({}, ts=True),
        _body({}, ts="1700000000000"),
        _body({}, ts=0),
        _body({}, ts=-1),
        _body({}, ts=MAX_TS_MS),
        _body([]),  # d not a map
        _body("power_w"),
        _body({f"p{i}": 1 for i in range(MAX_POINTS + 1)}),  # too many points
        _body({"power_w": msgpack.ExtType(1, b"x")}),  # extension types
        _body({"power_w": "x" * 257}),  # string beyond the decoder cap
        b"\x81\xa1t\xa2\xff\xfe",  # invalid UTF-8
        b"\x91" * 2000 + b"\xc0",  # nesting deeper than the decoder stack
    ],
)
def test_malformed_payload(payload: bytes):
    """Anything but exactly {t: int ms, d: map} is MalformedPayload (code malformed_payload)."""
    with pytest.raises(MalformedPayload) as info:
        validate(TELEMETRY, PLUG, payload, now_ms=NOW, limits=LIMITS)
    assert info.value.code == "malformed_payload"


def test_unknown_point():
    """A point the profile does not have is SchemaViolation naming it."""
    exc = _reject(SchemaViolation, {"temperature_c": 200})
    assert exc.code == "schema_violation"
    assert "temperature_c" in str(exc)


@pytest.mark.parametrize("key", ["'; DROP TABLE devices;--", "Power_W", "a" * 33, "\x1b[31m"])
def test_unknown_point_does_not_echo_non_identifier(key: str):
    """A non-identifier key is reported as <non-identifier>, never echoed into the error."""
    exc = _reject(SchemaViolation, {key: 1})
    assert key not in str(exc)
    assert key not in exc.detail
    assert "<non-identifier>" in exc.detail


def test_empty_data_map():
    """A report without data points is SchemaViolation."""
    assert "no data points" in str(_reject(SchemaViolation, {}))


@pytest.mark.parametrize("value", [True, False, 1.0, "1", None, [1], {"v": 1}, b"\x01"])
def test_value_point_wrong_type(value: Any):
    """A value point takes only a plain int: bools, floats, strings and containers are refused."""
    exc = _reject(SchemaViolation, {"power_w": value})
    assert "power_w" in str(exc)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats(value: float):
    """NaN and infinities are SchemaViolation for value points."""
    _reject(SchemaViolation, {"temperature_c": value}, THERMOSTAT)


@pytest.mark.parametrize("value", [1, 0, "true", None])
def test_bool_point_wrong_type(value: Any):
    """A bool point refuses ints and strings."""
    _reject(SchemaViolation, {"relay_on": value})


@pytest.mark.parametrize("value", [1, True, None])
def test_enum_and_string_points_need_strings(value: Any):
    """Enum and string points refuse non-string values with SchemaViolation."""
    _reject(SchemaViolation, {"mode": value}, THERMOSTAT)
    _reject(SchemaViolation, {"media_ref": value}, CAMERA)


@pytest.mark.parametrize(
    "ref", ["x" * 201, "", "/leading/slash", "a b", "tab\there", "new\nline", "ünïcode"]
)
def test_bad_string(ref: str):
    """Strings that are empty, too long, unprintable or off-pattern are SchemaViolation."""
    exc = _reject(SchemaViolation, {"media_ref": ref}, CAMERA)
    if ref:
        assert ref not in str(exc)


def test_ssid_unprintable():
    """A free-form string (ssid) with control characters is SchemaViolation."""
    _reject(SchemaViolation, {**GOOD_INFO, "ssid": "home\x00net"}, INFO, kind=ReportKind.INFO)
    _reject(SchemaViolation, {**GOOD_INFO, "ssid": "s" * 33}, INFO, kind=ReportKind.INFO)


@pytest.mark.parametrize(
    "mac",
    [
        "aa:bb:cc:dd:ee:ff",
        "AA-BB-CC-DD-EE-FF",
        "AA:BB:CC:DD:EE",
        "AABBCCDDEEFF",
        "GG:00:00:00:00:00",
    ],
)
def test_bad_mac(mac: str):
    """A MAC not in upper-case colon form is SchemaViolation and not echoed."""
    exc = _reject(SchemaViolation, {"mac": mac, "fw": "1.0.0"}, INFO, kind=ReportKind.INFO)
    assert mac not in str(exc)
    assert "mac" in exc.detail


@pytest.mark.parametrize(
    "ip", ["999.1.1.1", "1.2.3", "1.2.3.x", "::g", "1:2:3:4:5:6:7:8:9", "1..2.3"]
)
def test_bad_ip(ip: str):
    """An IP failing the pattern or the address parser is SchemaViolation and not echoed."""
    exc = _reject(SchemaViolation, {**GOOD_INFO, "ip": ip}, INFO, kind=ReportKind.INFO)
    assert ip not in str(exc)
    assert "ip" in exc.detail


@pytest.mark.parametrize("fw", ["v1.2.3", "1.2", "1.2.3-", "12345.0.0", "1.2.3-beta_1", "1.2.3 "])
def test_bad_firmware(fw: str):
    """A firmware version not in semver-like form is SchemaViolation."""
    _reject(SchemaViolation, {"mac": GOOD_INFO["mac"], "fw": fw}, INFO, kind=ReportKind.INFO)


@pytest.mark.parametrize("fw", ["0.0.0", "1.2.3-rc.1", "10.20.300+build.7"])
def test_good_firmware(fw: str):
    """Semver-like firmware versions with pre-release or build tags pass."""
    _validate({"mac": GOOD_INFO["mac"], "fw": fw}, INFO, ReportKind.INFO)


@pytest.mark.parametrize("missing", ["mac", "fw"])
def test_missing_required_info_point(missing: str):
    """An info report without mac or fw is SchemaViolation naming the missing point."""
    data = {k: v for k, v in GOOD_INFO.items() if k != missing} | {"rssi": -50}
    exc = _reject(SchemaViolation, data, INFO, kind=ReportKind.INFO)
    assert f"missing point {missing}" in str(exc)


@pytest.mark.parametrize(
    ("point", "value"),
    [("power_w", -1), ("power_w", 40_001), ("voltage_v", 2**64 - 1), ("current_a", -(2**63))],
)
def test_out_of_range_int(point: str, value: int):
    """An integer outside the point's range is OutOfRange, code out_of_range."""
    exc = _reject(OutOfRange, {point: value})
    assert exc.code == "out_of_range"
    assert exc.detail == point


@pytest.mark.parametrize("value", [0, 40_000])
def test_range_is_inclusive(value: int):
    """Both ends of a range are accepted."""
    _validate({"power_w": value})


def test_rssi_range():
    """The rssi point accepts -120..0 and refuses 1 and -121."""
    for ok in (-120, 0):
        _validate({**GOOD_INFO, "rssi": ok}, INFO, ReportKind.INFO)
    for bad in (1, -121):
        _reject(OutOfRange, {**GOOD_INFO, "rssi": bad}, INFO, kind=ReportKind.INFO)


@pytest.mark.parametrize("value", ["turbo", "Heat", "", "heat "])
def test_enum_not_in_choices(value: str):
    """An enum value outside its choices is OutOfRange and not echoed."""
    exc = _reject(OutOfRange, {"mode": value}, THERMOSTAT)
    assert "mode" in exc.detail
    if value.strip():
        assert value not in str(exc)


@pytest.mark.parametrize("value", [51, 53, 54, 349])
def test_off_step_grid(value: int):
    """setpoint_c (50..350, step 5) refuses values off the grid with OutOfRange."""
    _reject(OutOfRange, {"setpoint_c": value}, THERMOSTAT)


@pytest.mark.parametrize("value", [50, 55, 215, 350])
def test_on_step_grid(value: int):
    """setpoint_c accepts values on the step grid counted from its minimum."""
    _validate({"setpoint_c": value}, THERMOSTAT)


@pytest.mark.parametrize("value", [45, 355])
def test_step_grid_outside_range(value: int):
    """Grid-aligned values beyond the range are still OutOfRange."""
    _reject(OutOfRange, {"setpoint_c": value}, THERMOSTAT)


def test_stale_reading():
    """A reading older than max_age_ms is StaleReading; exactly max_age_ms passes."""
    _validate({"power_w": 1}, ts=NOW - LIMITS.max_age_ms)
    exc = _reject(StaleReading, {"power_w": 1}, ts=NOW - LIMITS.max_age_ms - 1)
    assert exc.code == "stale_timestamp"


def test_future_reading():
    """A reading ahead by more than max_skew_ms is FutureReading; exactly max_skew_ms passes."""
    _validate({"power_w": 1}, ts=NOW + LIMITS.max_skew_ms)
    exc = _reject(FutureReading, {"power_w": 1}, ts=NOW + LIMITS.max_skew_ms + 1)
    assert exc.code == "future_timestamp"


def test_custom_limits():
    """Limits passed by the caller replace the defaults."""
    tight = Limits(max_age_ms=1000, max_skew_ms=0)
    ok = _body({"power_w": 1}, ts=NOW - 1000)
    assert validate(TELEMETRY, PLUG, ok, now_ms=NOW, limits=tight).ts_ms == NOW - 1000
    with pytest.raises(StaleReading):
        validate(TELEMETRY, PLUG, _body({"power_w": 1}, ts=NOW - 1001), now_ms=NOW, limits=tight)
    with pytest.raises(FutureReading):
        validate(TELEMETRY, PLUG, _body({"power_w": 1}, ts=NOW + 1), now_ms=NOW, limits=tight)


def test_default_limits():
    """The default limits are one week of age and five minutes of skew."""
    assert (LIMITS.max_age_ms, LIMITS.max_skew_ms) == (604_800_000, 300_000)


def test_check_value_direct():
    """check_value returns the value unchanged when it passes."""
    points = THERMOSTAT.by_name
    assert check_value(points["setpoint_c"], 55) == 55
    assert check_value(points["mode"], "auto") == "auto"
    assert check_value(PLUG.by_name["relay_on"], False) is False
    assert check_value(CAMERA.by_name["media_ref"], "a") == "a"


@pytest.mark.parametrize(("kind", "profile"), CASES, ids=[p.model for _, p in CASES])
@given(payload=st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_rejected(kind: ReportKind, profile: Profile, payload: bytes):
    """Arbitrary bytes either validate or raise a Rejected subclass, never anything else."""
    with contextlib.suppress(Rejected):
        validate(kind, profile, payload, now_ms=NOW, limits=LIMITS)


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=50)
    | st.binary(max_size=20)
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def _report(draw: st.DrawFn, profile: Profile) -> bytes:
    names = st.sampled_from(sorted(profile.by_name)) | st.text(max_size=40)
    data = draw(st.dictionaries(names, _VALUES, max_size=6))
    ts = draw(st.integers(-1, 2**48) | st.just(NOW) | st.floats() | st.none())
    return msgpack.packb({"t": ts, "d": data})


@pytest.mark.parametrize(("kind", "profile"), CASES, ids=[p.model for _, p in CASES])
@given(data=st.data())
def test_structured_reports_only_raise_rejected(
    kind: ReportKind, profile: Profile, data: st.DataObject
):
    """Well-formed msgpack reports with arbitrary names and values only ever raise Rejected."""
    payload = data.draw(_report(profile))
    try:
        report = validate(kind, profile, payload, now_ms=NOW, limits=LIMITS)
    except Rejected:
        return
    assert all(profile.by_name[p.name] is p for p, _ in report.values)


def test_duplicate_keys_are_malformed():
    """A map naming a key twice is refused instead of silently keeping the last value."""
    body = b"\x82\xa1t\x01\xa1t\x02"  # {"t": 1, "t": 2}
    with pytest.raises(MalformedPayload):
        decode_body(body)
