"""Schema migrations: an ordered list of steps recorded in ``schema_migrations``.

SQL steps are files next to this module; the series tables are a Python step because their DDL
depends on the storage layout (TimescaleDB or native partitions, ``telemetry.postgres_layout``).
Runs under an advisory lock, so concurrent ``qnect migrate`` calls are safe and idempotent.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import psycopg

from telemetry.postgres_layout import create_series, ensure_ahead, timescale_available

_LOCK = 0x716E6D67
Step = Callable[[psycopg.Connection[Any], str], None]


def _sql(name: str) -> Step:
    def run(conn: psycopg.Connection[Any], _mode: str) -> None:
        text = resources.files("qnect.migrations").joinpath(name).read_text()
        conn.execute(text.encode())

    return run


def _series(conn: psycopg.Connection[Any], mode: str) -> None:
    if mode == "off":
        kind = "native"
    elif timescale_available(conn):
        kind = "timescale"
    elif mode == "on":
        raise RuntimeError("QNECT_TIMESCALE=on but CREATE EXTENSION timescaledb failed")
    else:
        kind = "native"
    create_series(conn, kind)


MIGRATIONS: list[tuple[str, Step]] = [
    ("0001_core", _sql("0001_core.sql")),
    ("0002_series", _series),
    ("0003_privacy", _sql("0003_privacy.sql")),
    ("0004_audit", _sql("0004_audit.sql")),
    ("0005_keys", _sql("0005_keys.sql")),
    ("0007_drk_rotation", _sql("0007_drk_rotation.sql")),
    ("0008_pairing", _sql("0008_pairing.sql")),
    ("0009_accounts", _sql("0009_accounts.sql")),
    ("0010_ota", _sql("0010_ota.sql")),
    ("0011_desired_delivery", _sql("0011_desired_delivery.sql")),
]


def migrate(dsn: str, *, timescale: str = "auto") -> list[str]:
    """Apply pending migrations; returns the versions applied now."""
    applied_now: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            for version, step in MIGRATIONS:
                if version not in done:
                    step(conn, timescale)
                    conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                    applied_now.append(version)
            ensure_ahead(conn, datetime.now(UTC))
    return applied_now


def layout(dsn: str) -> str:
    """Which storage layout the database uses."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT kind FROM storage_layout").fetchone()
        return str(row[0]) if row else "none"
