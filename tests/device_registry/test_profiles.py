"""Device profiles: invariants every shipped profile keeps, and the checks on new ones."""

from __future__ import annotations

import re

import pytest

from crypto.keys import KeyClass
from device_registry.profiles import (
    CAMERA,
    CLEANER,
    INFO,
    MODELS,
    PLUG,
    PROFILES,
    SCALE,
    STATUS,
    THERMOSTAT,
    DataPoint,
    PointType,
    Profile,
)
from privacy.categories import DataCategory
from privacy.retention import RetentionClass

ALL = [PLUG, THERMOSTAT, SCALE, CLEANER, CAMERA, STATUS, INFO]
POINTS = [(profile, point) for profile in ALL for point in profile.points]
IDS = [f"{profile.model}.{point.name}" for profile, point in POINTS]
IDENTIFIER = re.compile(r"[a-z][a-z0-9_]{0,31}")


def test_registry_lists_the_device_models():
    """PROFILES maps each model name to its profile; MODELS lists them in order."""
    assert MODELS == ("plug", "thermostat", "scale", "cleaner", "camera")
    assert all(PROFILES[name].model == name for name in MODELS)
    assert STATUS.model not in PROFILES
    assert INFO.model not in PROFILES


@pytest.mark.parametrize("profile", ALL, ids=[p.model for p in ALL])
def test_codes_and_names_unique(profile: Profile):
    """Within a profile, point codes and wire names are unique and by_name indexes them all."""
    assert len({p.code for p in profile.points}) == len(profile.points)
    assert len(profile.by_name) == len(profile.points)
    assert all(profile.by_name[p.name] is p for p in profile.points)


@pytest.mark.parametrize(("profile", "point"), POINTS, ids=IDS)
def test_names_are_identifiers(profile: Profile, point: DataPoint):
    """Every wire name is a short lower-case identifier (validate echoes only such names)."""
    assert IDENTIFIER.fullmatch(point.name), profile.model


@pytest.mark.parametrize(("profile", "point"), POINTS, ids=IDS)
def test_point_limits_consistent(profile: Profile, point: DataPoint):
    """Value points have min <= max on their step grid; enums have choices; strings a length."""
    if point.type is PointType.VALUE:
        assert point.minimum <= point.maximum, profile.model
        assert point.step >= 1
        assert (point.maximum - point.minimum) % point.step == 0
        assert point.scale >= 0
        assert point.minimum >= -(2**63)
        assert point.maximum < 2**63
    elif point.type is PointType.ENUM:
        assert point.choices
        assert len(set(point.choices)) == len(point.choices)
    elif point.type is PointType.STRING:
        assert point.max_length > 0
        assert point.encrypted


@pytest.mark.parametrize(("profile", "point"), POINTS, ids=IDS)
def test_sensitive_points_are_encrypted(profile: Profile, point: DataPoint):
    """Health, location, media and identifier points are stored encrypted under their key class."""
    expected = {
        DataCategory.HEALTH: KeyClass.HEALTH,
        DataCategory.LOCATION_PRECISE: KeyClass.LOCATION,
        DataCategory.MEDIA: KeyClass.MEDIA,
        DataCategory.DEVICE_IDENTIFIER: KeyClass.NETWORK,
        DataCategory.IP_ADDRESS: KeyClass.NETWORK,
        DataCategory.NETWORK: KeyClass.NETWORK,
    }.get(point.category)
    if expected is not None:
        assert point.key_class is expected, profile.model
        assert point.encrypted


def test_scale_is_health_data():
    """Every scale point is health data with health retention."""
    assert {(p.category, p.retention, p.key_class) for p in SCALE.points} == {
        (DataCategory.HEALTH, RetentionClass.HEALTH, KeyClass.HEALTH)
    }


def test_plain_points_are_not_encrypted():
    """Usage telemetry such as power_w is stored as a plain number."""
    point = PLUG.by_name["power_w"]
    assert point.key_class is None
    assert not point.encrypted
    assert (point.unit, point.scale) == ("W", 1)


def test_thermostat_setpoint_grid():
    """The thermostat setpoint is 5.0..35.0 °C in half-degree steps (raw 50..350 step 5)."""
    point = THERMOSTAT.by_name["setpoint_c"]
    assert (point.minimum, point.maximum, point.step, point.scale) == (50, 350, 5, 1)


def test_status_and_info_points():
    """Status carries online; info carries mac, fw, ip, ssid and rssi."""
    assert list(STATUS.by_name) == ["online"]
    assert list(INFO.by_name) == ["mac", "fw", "ip", "ssid", "rssi"]


@pytest.mark.parametrize(
    ("name", "good", "bad"),
    [
        ("mac", "00:1A:2B:3C:4D:5E", "00:1a:2b:3c:4d:5e"),
        ("fw", "2.10.3-rc.1", "2.10"),
        ("ip", "fe80::1", "10.0.0.1/24"),
    ],
)
def test_info_patterns(name: str, good: str, bad: str):
    """The info string patterns accept canonical forms and refuse near misses."""
    pattern = INFO.by_name[name].pattern
    assert pattern is not None
    assert pattern.fullmatch(good)
    assert not pattern.fullmatch(bad)


def test_string_point_must_be_encrypted():
    """A string point without a key class is refused at definition time."""
    with pytest.raises(ValueError, match="must be encrypted"):
        DataPoint(9, "note", PointType.STRING, DataCategory.NETWORK, RetentionClass.NETWORK)


def test_duplicate_codes_refused():
    """A profile with two points sharing a code is refused."""
    a = DataPoint(1, "a", PointType.BOOL, DataCategory.DEVICE_TELEMETRY, RetentionClass.USAGE)
    b = DataPoint(1, "b", PointType.BOOL, DataCategory.DEVICE_TELEMETRY, RetentionClass.USAGE)
    with pytest.raises(ValueError, match="duplicate point code"):
        Profile("dup", (a, b))


def test_profile_equality_ignores_index():
    """Profiles compare by model and points; the by_name index is derived."""
    assert Profile(PLUG.model, PLUG.points) == PLUG
    assert "by_name" not in repr(PLUG)
