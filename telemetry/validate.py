"""Decode and validate a report's plaintext against a device profile (pure).

Input is the decrypted frame body: a msgpack map ``{"t": <ms since epoch>, "d": {name: value}}``.
Output is a ``Report`` holding only values that passed their data point's type, range, step,
length and pattern checks; anything else raises one ``Rejected`` subclass whose detail names
the point, never the value.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

import msgpack

from device_registry.profiles import DataPoint, PointType, Profile, ReportKind
from telemetry.errors import (
    FutureReading,
    MalformedPayload,
    OutOfRange,
    SchemaViolation,
    StaleReading,
)

MAX_POINTS = 32  # more points than any profile has is a malformed report, not a big one
MAX_TS_MS = 2**47  # year 6429; keeps datetime conversion safe before the skew check
_IDENTIFIER = re.compile(r"[a-z][a-z0-9_]{0,31}")
REQUIRED: dict[ReportKind, tuple[str, ...]] = {
    ReportKind.STATUS: ("online",),
    ReportKind.INFO: ("mac", "fw"),
    ReportKind.TELEMETRY: (),
}

Value = bool | int | str


@dataclass(frozen=True, slots=True)
class Limits:
    """How far a report's timestamp may stray from the server clock."""

    max_age_ms: int = 7 * 24 * 3600 * 1000  # devices buffer a week offline; ledger keeps 35 days
    max_skew_ms: int = 5 * 60 * 1000  # device clocks synced by NTP; 5 minutes is generous


@dataclass(frozen=True, slots=True)
class Report:
    """A validated report."""

    kind: ReportKind
    ts_ms: int
    values: tuple[tuple[DataPoint, Value], ...]


class DuplicateKeyError(ValueError):
    """A map names the same key twice (which one would count is ambiguous)."""


def _unique_map(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise DuplicateKeyError
    return result


def decode_body(plaintext: bytes) -> tuple[int, dict[str, Any]]:
    """Unpack a report body into its timestamp and raw data map.

    Raises:
        MalformedPayload: not msgpack, trailing bytes, or not the report shape.
    """
    try:
        body = msgpack.unpackb(
            plaintext,
            raw=False,
            strict_map_key=True,
            max_str_len=256,
            max_bin_len=256,
            max_array_len=MAX_POINTS,
            max_map_len=MAX_POINTS,
            max_ext_len=0,
            object_pairs_hook=_unique_map,
        )
    except (ValueError, TypeError) as exc:  # msgpack's FormatError/ExtraData/StackError too
        raise MalformedPayload("not a msgpack report") from exc
    if not isinstance(body, dict) or set(body) != {"t", "d"}:
        raise MalformedPayload("report must be a map with keys t and d")
    ts, data = body["t"], body["d"]
    if type(ts) is not int or not 0 < ts < MAX_TS_MS:
        raise MalformedPayload("t must be milliseconds since the epoch")
    if not isinstance(data, dict):
        raise MalformedPayload("d must be a map")
    return ts, data


def _point_name(name: object) -> str:
    return name if isinstance(name, str) and _IDENTIFIER.fullmatch(name) else "<non-identifier>"


def check_value(point: DataPoint, value: object) -> Value:
    """Check one value against its data point.

    Raises:
        SchemaViolation: wrong type, or a string failing its length or pattern.
        OutOfRange: a number outside the range or off the step grid.
    """
    kind = point.type
    if kind is PointType.BOOL:
        if not isinstance(value, bool):
            raise SchemaViolation(f"{point.name}: expected bool")
        return value
    if kind is PointType.VALUE:
        if type(value) is not int:  # also refuses floats, so NaN and infinities never pass
            raise SchemaViolation(f"{point.name}: expected integer raw value")
        if not point.minimum <= value <= point.maximum or (value - point.minimum) % point.step:
            raise OutOfRange(point.name)
        return value
    if not isinstance(value, str):
        raise SchemaViolation(f"{point.name}: expected string")
    if kind is PointType.ENUM:
        if value not in point.choices:
            raise OutOfRange(f"{point.name}: not one of the enum values")
        return value
    return _check_string(point, value)


def _check_string(point: DataPoint, value: str) -> str:
    if not value or len(value) > point.max_length or not value.isprintable():
        raise SchemaViolation(f"{point.name}: bad length or characters")
    if point.pattern is not None and not point.pattern.fullmatch(value):
        raise SchemaViolation(f"{point.name}: bad format")
    if point.name == "ip":
        try:
            ipaddress.ip_address(value)
        except ValueError as exc:
            raise SchemaViolation("ip: bad format") from exc
    return value


def validate(
    kind: ReportKind, profile: Profile, plaintext: bytes, *, now_ms: int, limits: Limits
) -> Report:
    """Decode *plaintext* and check it against *profile* at server time *now_ms*.

    Raises:
        MalformedPayload: the body is not a report.
        SchemaViolation: unknown, missing or mistyped points.
        OutOfRange: a value outside its range.
        StaleReading: older than ``limits.max_age_ms``.
        FutureReading: ahead of the server clock by more than ``limits.max_skew_ms``.
    """
    ts, data = decode_body(plaintext)
    if now_ms - ts > limits.max_age_ms:
        raise StaleReading(f"{(now_ms - ts) // 1000} s old")
    if ts - now_ms > limits.max_skew_ms:
        raise FutureReading(f"{(ts - now_ms) // 1000} s ahead")
    if not data:
        raise SchemaViolation("no data points")
    values: list[tuple[DataPoint, Value]] = []
    for name, raw in data.items():
        point = profile.by_name.get(name)
        if point is None:
            raise SchemaViolation(f"unknown point {_point_name(name)}")
        values.append((point, check_value(point, raw)))
    missing = [name for name in REQUIRED[kind] if name not in data]
    if missing:
        raise SchemaViolation(f"missing point {missing[0]}")
    return Report(kind, ts, tuple(values))
