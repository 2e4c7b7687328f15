"""Views the mobile app reads through the privacy gate (pure).

Its devices, one device's state with the shadow, a data point's history in time buckets, and
the consents in force.

Each narrows further than ``device_registry.views`` (one device, one point) with extra query
parameters (``Scope.params``), so the gate fetches only what the screen shows. Like every
view, each reads only through current or past bindings of the permitted subjects.
History exists in two spellings, ``time_bucket`` (TimescaleDB) and ``date_bin`` (plain
PostgreSQL); both align buckets to 2000-01-03 00:00 UTC (``time_bucket``'s default origin).
"""

from __future__ import annotations

from typing import LiteralString

from privacy.categories import DataCategory as C
from privacy.views import Row, View, ViewField

_SYS = "system.operations"


MY_DEVICES = View(
    "app_devices",
    "SELECT b.subject_id, d.device_id, d.model, d.status, st.firmware, st.online, st.since, "
    "st.last_seen FROM bindings b JOIN devices d ON d.binding = b.binding "
    "LEFT JOIN device_state st ON st.device_id = d.device_id "
    "WHERE b.subject_id = ANY(%(subjects)s) AND b.unbound_at IS NULL "
    "ORDER BY d.device_id LIMIT %(limit)s",
    (
        ViewField("device_id", C.DEVICE_REF, 1),
        ViewField("model", _SYS, 2),
        ViewField("status", _SYS, 3),
        ViewField("firmware", _SYS, 4),
        ViewField("online", _SYS, 5),
        ViewField("since", _SYS, 6),
        ViewField("last_seen", _SYS, 7),
    ),
)

DEVICE_STATE = View(
    "app_device_state",
    "SELECT b.subject_id, d.device_id, d.model, st.online, st.since, st.last_seen, st.last_ts, "
    "coalesce(st.latest, '{}'), st.firmware, coalesce(sh.desired, '{}'), "
    "coalesce(sh.version, 0), sh.desired_at, sh.confirmed_at "
    "FROM bindings b JOIN devices d ON d.binding = b.binding "
    "LEFT JOIN device_state st ON st.device_id = d.device_id "
    "LEFT JOIN device_shadows sh ON sh.device_id = d.device_id "
    "WHERE b.subject_id = ANY(%(subjects)s) AND b.unbound_at IS NULL "
    "AND d.device_id = %(device_id)s LIMIT %(limit)s",
    (
        ViewField("device_id", C.DEVICE_REF, 1),
        ViewField("model", _SYS, 2),
        ViewField("online", _SYS, 3),
        ViewField("since", _SYS, 4),
        ViewField("last_seen", _SYS, 5),
        ViewField("reported_at", _SYS, 6),
        ViewField("reported", C.DEVICE_TELEMETRY, 7),
        ViewField("firmware", _SYS, 8),
        ViewField("desired", C.DEVICE_TELEMETRY, 9),
        ViewField("version", _SYS, 10),
        ViewField("desired_at", _SYS, 11),
        ViewField("confirmed_at", _SYS, 12),
    ),
)

_HISTORY_FROM: LiteralString = (
    " AS bucket, count(*), avg(t.value), min(t.value), max(t.value) "
    "FROM bindings b JOIN telemetry t ON t.device_id = b.device_id AND t.ts >= b.bound_at "
    "AND (b.unbound_at IS NULL OR t.ts < b.unbound_at) "
    "WHERE b.subject_id = ANY(%(subjects)s) AND b.device_id = %(device_id)s "
    "AND t.point = %(point)s AND t.ts >= %(since)s AND t.ts < %(until)s "
    "GROUP BY 1, 2 ORDER BY 2 LIMIT %(limit)s"
)


def _history(name: str, bucket_expr: LiteralString) -> View:
    return View(
        name,
        "SELECT b.subject_id, " + bucket_expr + _HISTORY_FROM,
        (
            ViewField("bucket", _SYS, 1),
            ViewField("count", _SYS, 2),
            ViewField("avg", C.DEVICE_TELEMETRY, 3),
            ViewField("min", C.DEVICE_TELEMETRY, 4),
            ViewField("max", C.DEVICE_TELEMETRY, 5),
        ),
    )


HISTORY = {
    "timescale": _history("app_history", "time_bucket(%(bucket)s::interval, t.ts)"),
    "native": _history(
        "app_history",
        "date_bin(%(bucket)s::interval, t.ts, TIMESTAMPTZ '2000-01-03 00:00:00+00')",
    ),
}


def _consent_state(row: Row) -> object:
    return "granted" if row[2] == "grant" else "withdrawn"


CONSENTS = View(
    "app_consents",
    "SELECT DISTINCT ON (e.consent_key) e.subject_id, e.consent_key, e.kind, e.at "
    "FROM consent_events e WHERE e.subject_id = ANY(%(subjects)s) "
    "AND e.kind IN ('grant', 'withdraw') ORDER BY e.consent_key, e.seq DESC LIMIT %(limit)s",
    (
        ViewField("key", C.PRIVACY_PREFERENCES, 1),
        ViewField("state", C.PRIVACY_PREFERENCES, 2, render=_consent_state),
        ViewField("at", C.PRIVACY_PREFERENCES, 3),
    ),
)
