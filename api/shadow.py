"""Desired-state values between the app's units and the device's wire units (pure).

The app writes and reads scaled values (21.5 °C); devices and the stored shadow use the
profile's raw integers (215 with scale 1), so a device's report can be compared with the
desired state as stored. Only the settings listed in ``WRITABLE`` may be desired; each value
passes the same check as a device's report of that point (``telemetry.validate``).
"""

from __future__ import annotations

from collections.abc import Mapping

from api.errors import InvalidInput
from device_registry.profiles import PROFILES, DataPoint, PointType
from telemetry.errors import Rejected
from telemetry.validate import check_value

# Settings a user may change per model; measurements (power, temperature) are not settings.
WRITABLE: Mapping[str, frozenset[str]] = {
    "plug": frozenset({"relay_on"}),
    "thermostat": frozenset({"setpoint_c", "mode"}),
    "cleaner": frozenset({"state"}),
}
MAX_KEYS = 16


def to_wire(model: str, patch: Mapping[str, object]) -> dict[str, object]:
    """Check a desired-state patch and convert it to wire units (``None`` removes a key).

    Raises:
        InvalidInput: an unknown or read-only point, or a value the profile refuses.
    """
    writable = WRITABLE.get(model, frozenset())
    if not patch or len(patch) > MAX_KEYS:
        raise InvalidInput("send 1 to 16 settings")
    out: dict[str, object] = {}
    for name, value in patch.items():
        if name not in writable:
            raise InvalidInput(f"writable settings of a {model}: {', '.join(sorted(writable))}")
        point = PROFILES[model].by_name[name]
        out[name] = None if value is None else _raw(point, value)
    return out


def _raw(point: DataPoint, value: object) -> object:
    raw = value
    if point.type is PointType.VALUE:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInput(f"{point.name}: expected a number")
        scaled = value * 10**point.scale
        raw = round(scaled)
        if abs(scaled - raw) > 1e-6:
            raise InvalidInput(f"{point.name}: at most {point.scale} decimals")
    try:
        return check_value(point, raw)
    except Rejected as exc:
        raise InvalidInput(f"{point.name}: out of range or wrong type") from exc


def from_wire(model: str, values: Mapping[str, object]) -> dict[str, object]:
    """Wire values in the app's units (scaled numbers; other values as they are)."""
    profile = PROFILES.get(model)
    out: dict[str, object] = {}
    for name, value in values.items():
        point = profile.by_name.get(name) if profile else None
        scaled = point is not None and point.type is PointType.VALUE and point.scale
        if scaled and isinstance(value, int) and not isinstance(value, bool):
            out[name] = value / 10**point.scale  # type: ignore[union-attr]  # checked above
        else:
            out[name] = value
    return out
