"""Device profiles: the typed data points each device model may report (pure data).

Every data point names its wire name, a stable small code (stored instead of the name), its
type and limits, its data category, its retention class and whether it is stored as a plain
number or as an encrypted field (and under which key class). Values travel as integers in raw
units (Tuya-style ``scale``: value = raw / 10**scale), so no float, NaN or infinity ever needs
to be trusted. Strings are always identifiers or references and therefore always encrypted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

from crypto.keys import KeyClass
from privacy.categories import DataCategory
from privacy.retention import RetentionClass


class PointType(StrEnum):
    """Wire types of data points."""

    BOOL = "bool"
    VALUE = "value"  # integer in raw units with range, step and decimal scale
    ENUM = "enum"
    STRING = "string"


class ReportKind(IntEnum):
    """What an uplink frame reports; stored in the frame ledger."""

    TELEMETRY = 1
    STATUS = 2
    INFO = 3


@dataclass(frozen=True, slots=True)
class DataPoint:
    """One typed data point of a report."""

    code: int
    name: str
    type: PointType
    category: DataCategory
    retention: RetentionClass
    key_class: KeyClass | None = None  # None: stored as a plain number
    unit: str = ""
    minimum: int = 0
    maximum: int = 0
    step: int = 1
    scale: int = 0
    choices: tuple[str, ...] = ()
    max_length: int = 0
    pattern: re.Pattern[str] | None = None

    def __post_init__(self) -> None:
        """Refuse profiles that could store a string in the clear."""
        if self.type is PointType.STRING and self.key_class is None:
            raise ValueError(f"string point {self.name} must be encrypted")

    @property
    def encrypted(self) -> bool:
        """Whether the point is stored as an encrypted field."""
        return self.key_class is not None


@dataclass(frozen=True, slots=True)
class Profile:
    """A device model and its data points."""

    model: str
    points: tuple[DataPoint, ...]
    by_name: dict[str, DataPoint] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Index points by wire name and check codes are unique."""
        object.__setattr__(self, "by_name", {p.name: p for p in self.points})
        if len({p.code for p in self.points}) != len(self.points):
            raise ValueError(f"duplicate point code in {self.model}")


_USAGE = DataCategory.DEVICE_TELEMETRY
_OPS = DataCategory.DEVICE_OPERATIONS
_R_USAGE = RetentionClass.USAGE


def _value(code: int, name: str, unit: str, lo: int, hi: int, scale: int = 0) -> DataPoint:
    return DataPoint(code, name, PointType.VALUE, _USAGE, _R_USAGE, None, unit, lo, hi, 1, scale)


def _sealed(code: int, name: str, unit: str, lo: int, hi: int, scale: int, sens: str) -> DataPoint:
    category, retention, key_class = _SENSITIVE[sens]
    return DataPoint(
        code, name, PointType.VALUE, category, retention, key_class, unit, lo, hi, 1, scale
    )


_SENSITIVE = {
    "health": (DataCategory.HEALTH, RetentionClass.HEALTH, KeyClass.HEALTH),
    "location": (DataCategory.LOCATION_PRECISE, RetentionClass.LOCATION, KeyClass.LOCATION),
}

PLUG = Profile(
    "plug",
    (
        _value(1, "power_w", "W", 0, 40_000, 1),
        _value(2, "voltage_v", "V", 0, 3_000, 1),
        _value(3, "current_a", "A", 0, 20_000, 3),
        _value(4, "energy_kwh", "kWh", 0, 10**10, 3),
        DataPoint(5, "relay_on", PointType.BOOL, _USAGE, _R_USAGE),
    ),
)
THERMOSTAT = Profile(
    "thermostat",
    (
        _value(1, "temperature_c", "°C", -400, 850, 1),
        _value(2, "humidity_pct", "%", 0, 1_000, 1),
        DataPoint(3, "setpoint_c", PointType.VALUE, _USAGE, _R_USAGE, None, "°C", 50, 350, 5, 1),
        DataPoint(
            4, "mode", PointType.ENUM, _USAGE, _R_USAGE, choices=("off", "heat", "cool", "auto")
        ),
    ),
)
SCALE = Profile(
    "scale",
    (
        _sealed(1, "weight_kg", "kg", 200, 30_000, 2, "health"),
        _sealed(2, "bmi", "kg/m²", 50, 800, 1, "health"),
        _sealed(3, "body_fat_pct", "%", 20, 750, 1, "health"),
        _sealed(4, "skeletal_muscle_kg", "kg", 100, 15_000, 2, "health"),
    ),
)
CLEANER = Profile(
    "cleaner",
    (
        _value(1, "battery_pct", "%", 0, 100),
        DataPoint(
            2,
            "state",
            PointType.ENUM,
            _USAGE,
            _R_USAGE,
            choices=("idle", "cleaning", "returning", "charging", "error"),
        ),
        _sealed(3, "pos_x_m", "m", -10_000, 10_000, 2, "location"),
        _sealed(4, "pos_y_m", "m", -10_000, 10_000, 2, "location"),
    ),
)
CAMERA = Profile(
    "camera",
    (
        DataPoint(1, "motion", PointType.BOOL, _USAGE, _R_USAGE),
        DataPoint(
            2,
            "media_ref",
            PointType.STRING,
            DataCategory.MEDIA,
            RetentionClass.MEDIA,
            KeyClass.MEDIA,
            max_length=200,
            pattern=re.compile(r"[A-Za-z0-9][A-Za-z0-9/_.-]{0,199}"),
        ),
    ),
)

# Reports every model sends besides its telemetry.
STATUS = Profile("status", (DataPoint(1, "online", PointType.BOOL, _OPS, RetentionClass.PRESENCE),))
_NET = RetentionClass.NETWORK
INFO = Profile(
    "info",
    (
        DataPoint(
            1,
            "mac",
            PointType.STRING,
            DataCategory.DEVICE_IDENTIFIER,
            _NET,
            KeyClass.NETWORK,
            max_length=17,
            pattern=re.compile(r"[0-9A-F]{2}(?::[0-9A-F]{2}){5}"),
        ),
        DataPoint(
            2,
            "fw",
            PointType.STRING,
            _OPS,
            _NET,
            KeyClass.NETWORK,
            max_length=32,
            pattern=re.compile(r"\d{1,4}\.\d{1,4}\.\d{1,6}(?:[-+][0-9A-Za-z.]{1,16})?"),
        ),
        DataPoint(
            3,
            "ip",
            PointType.STRING,
            DataCategory.IP_ADDRESS,
            _NET,
            KeyClass.NETWORK,
            max_length=45,
            pattern=re.compile(r"[0-9a-fA-F:.]{2,45}"),
        ),
        DataPoint(
            4, "ssid", PointType.STRING, DataCategory.NETWORK, _NET, KeyClass.NETWORK, max_length=32
        ),
        DataPoint(5, "rssi", PointType.VALUE, _OPS, _NET, None, "dBm", -120, 0),
    ),
)

PROFILES: dict[str, Profile] = {p.model: p for p in (PLUG, THERMOSTAT, SCALE, CLEANER, CAMERA)}
MODELS: tuple[str, ...] = tuple(PROFILES)
