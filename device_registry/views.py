"""The views of personal data the privacy gate serves: accounts, devices and their series (pure).

Each view reads only through bindings of the permitted subjects, so a device's data before it
was paired, or after it changed hands, is never returned to the wrong person. Sealed values are
opened with the data key of the row's owner (the subject for account fields, the binding for
device data) and the same storage context the writer bound into the ciphertext.
"""

from __future__ import annotations

from typing import LiteralString

import msgpack

from crypto.envelope import FieldContext
from crypto.keys import KeyClass
from device_registry.model import REGISTRY_MAC_CONTEXT
from device_registry.profiles import CAMERA, CLEANER, PROFILES, SCALE, Profile
from privacy.categories import DataCategory as C
from privacy.views import Row, Sealed, View, ViewField

_SYS = "system.operations"


def _text(blob: bytes, _row: Row) -> object:
    return blob.decode()


def _subject_field(column: str) -> Sealed:
    return Sealed(
        KeyClass.PROFILE,
        owner=lambda row: str(row[0]),
        context=lambda row: FieldContext("subjects", column, str(row[0])),
        decode=_text,
    )


ACCOUNT = View(
    "account",
    "SELECT s.subject_id, s.household_id, s.email_enc, s.name_enc, s.restricted "
    "FROM subjects s WHERE s.subject_id = ANY(%(subjects)s) ORDER BY s.subject_id "
    "LIMIT %(limit)s",
    (
        ViewField("household_id", C.ACCOUNT, 1),
        ViewField("email", C.EMAIL, 2, _subject_field("email_enc")),
        ViewField("name", C.NAME, 3, _subject_field("name_enc")),
        ViewField("restricted", C.PRIVACY_PREFERENCES, 4),
    ),
)

DEVICES = View(
    "devices",
    "SELECT b.subject_id, d.device_id, d.model, d.binding, d.mac_enc, st.firmware, st.online, "
    "st.last_seen FROM bindings b JOIN devices d ON d.binding = b.binding "
    "LEFT JOIN device_state st ON st.device_id = d.device_id "
    "WHERE b.subject_id = ANY(%(subjects)s) AND b.unbound_at IS NULL "
    "ORDER BY b.subject_id, d.device_id LIMIT %(limit)s",
    (
        ViewField("device_id", C.DEVICE_REF, 1),
        ViewField("model", _SYS, 2),
        ViewField(
            "mac",
            C.DEVICE_IDENTIFIER,
            4,
            Sealed(
                KeyClass.NETWORK,
                owner=lambda row: str(row[3]),
                context=lambda _row: REGISTRY_MAC_CONTEXT,
                decode=_text,
            ),
        ),
        ViewField("firmware", _SYS, 5),
        ViewField("online", _SYS, 6),
        ViewField("last_seen", _SYS, 7),
    ),
)


def _sealed_series(
    table: LiteralString, profile: Profile, key_class: KeyClass, category: str
) -> View:
    """A series of sealed readings, opened in the writer's context.

    Rows are (subject, device, ts, point, binding, epoch, counter, enc); the context is
    (table, point name, ``device:epoch:counter``), as ``telemetry.pipeline`` sealed it.
    """
    scales = {p.code: p.scale for p in profile.points}
    names = {p.code: p.name for p in profile.points}

    def decode(blob: bytes, row: Row) -> object:
        raw = msgpack.unpackb(blob)
        scale = scales.get(int(row[3]), 0)
        return raw / 10**scale if scale and isinstance(raw, int) else raw

    sealed = Sealed(
        key_class,
        owner=lambda row: str(row[4]),
        context=lambda row: FieldContext(
            table, names.get(int(row[3]), str(row[3])), f"{row[1]}:{row[5]}:{row[6]}"
        ),
        decode=decode,
    )
    query: LiteralString = (
        "SELECT b.subject_id, r.device_id, r.ts, r.point, r.binding, r.epoch, r.counter, r.enc "
        "FROM bindings b JOIN " + table + " r ON r.binding = b.binding "
        "WHERE b.subject_id = ANY(%(subjects)s) AND r.ts >= %(since)s AND r.ts < %(until)s "
        "ORDER BY r.ts, r.device_id, r.point LIMIT %(limit)s"
    )
    return View(
        table,
        query,
        (
            ViewField("device_id", C.DEVICE_REF, 1),
            ViewField("ts", _SYS, 2),
            ViewField("point", _SYS, 3, render=lambda row: names.get(int(row[3]), row[3])),
            ViewField("value", category, 7, sealed),
        ),
    )


def _telemetry_value(row: Row) -> object:
    return row[5]


def _telemetry_point(row: Row) -> object:
    profile = PROFILES.get(str(row[4]))
    code = int(row[3])
    if profile is None:
        return code
    return next((p.name for p in profile.points if p.code == code), code)


# Plain usage telemetry is keyed by device, so the binding's ownership period selects the rows.
TELEMETRY = View(
    "telemetry",
    "SELECT b.subject_id, t.device_id, t.ts, t.point, d.model, t.value "
    "FROM bindings b JOIN devices d ON d.device_id = b.device_id "
    "JOIN telemetry t ON t.device_id = b.device_id AND t.ts >= b.bound_at "
    "AND (b.unbound_at IS NULL OR t.ts < b.unbound_at) "
    "WHERE b.subject_id = ANY(%(subjects)s) AND t.ts >= %(since)s AND t.ts < %(until)s "
    "ORDER BY t.ts, t.device_id, t.point LIMIT %(limit)s",
    (
        ViewField("device_id", C.DEVICE_REF, 1),
        ViewField("ts", _SYS, 2),
        ViewField("point", _SYS, 3, render=_telemetry_point),
        ViewField("value", C.DEVICE_TELEMETRY, 5, render=_telemetry_value),
    ),
)

HEALTH = _sealed_series("health_readings", SCALE, KeyClass.HEALTH, C.HEALTH)
LOCATION = _sealed_series("location_readings", CLEANER, KeyClass.LOCATION, C.LOCATION_PRECISE)
MEDIA = _sealed_series("media_readings", CAMERA, KeyClass.MEDIA, C.MEDIA)

VIEWS: dict[str, View] = {v.name: v for v in (ACCOUNT, DEVICES, TELEMETRY, HEALTH, LOCATION, MEDIA)}
