"""Storage layouts on the real server: native partitions always, TimescaleDB where it exists."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from qnect.migrate import migrate
from telemetry.postgres_layout import (
    SERIES,
    compress_due,
    drop_expired,
    ensure_ahead,
    failed_jobs,
    layout_kind,
    reconcile_retention,
    retention_drift,
)


def test_migrate_is_idempotent_and_native_partitions_cover_the_window(db_dsn: str) -> None:
    """A second migrate applies nothing; partitions exist from 8 days back to 2 ahead."""
    assert migrate(db_dsn, timescale="off") == []
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        assert layout_kind(conn) == "native"
        now = datetime.now(UTC)
        assert ensure_ahead(conn, now) == 0  # migrate already made them
        for days in (-7, 0, 2):
            day = (now + timedelta(days=days)).date()
            assert conn.execute(
                "SELECT to_regclass(%s)", (f"frames_p{day:%Y%m%d}",)
            ).fetchone() != (None,)


def test_native_retention_drops_whole_partitions(db_dsn: str) -> None:
    """Partitions older than their table's retention are dropped, younger ones kept."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        old = datetime.now(UTC) - timedelta(days=400)
        conn.execute(
            f"CREATE TABLE telemetry_p{old:%Y%m%d} PARTITION OF telemetry "
            "FOR VALUES FROM (%s) TO (%s)".replace("%s", "'{}'").format(
                old.date(), old.date() + timedelta(days=1)
            )
        )
        conn.execute("INSERT INTO telemetry VALUES (%s, 'dev', 1, 1.0)", (old.replace(hour=12),))
        dropped = drop_expired(conn, datetime.now(UTC))
        assert dropped == [f"telemetry_p{old:%Y%m%d}"]
        assert compress_due(conn, datetime.now(UTC)) == 0
        assert failed_jobs(conn) == []


@pytest.mark.timescale
def test_timescale_layout_hypertables_compression_retention(timescale_dsn: str) -> None:
    """Hypertables with 1-day chunks, compression by device and a retention job per table."""
    with psycopg.connect(timescale_dsn, autocommit=True) as conn:
        assert layout_kind(conn) == "timescale"
        tables = {
            r[0]: r[1]
            for r in conn.execute(
                "SELECT hypertable_name, compression_enabled "
                "FROM timescaledb_information.hypertables"
            )
        }
        assert tables == {t.name: True for t in SERIES}
        jobs = conn.execute(
            "SELECT hypertable_name, proc_name FROM timescaledb_information.jobs "
            "WHERE hypertable_name IS NOT NULL"
        ).fetchall()
        assert {(t.name, "policy_retention") for t in SERIES} <= set(jobs)
        assert {(t.name, "policy_compression") for t in SERIES} <= set(jobs)
        chunks = conn.execute("SELECT count(*) FROM show_chunks('frames')").fetchone()
        assert chunks is not None
        assert chunks[0] >= 10  # the acceptance window was created ahead
        segment = conn.execute(
            "SELECT attname FROM timescaledb_information.compression_settings "
            "WHERE hypertable_name = 'telemetry' AND segmentby_column_index = 1"
        ).fetchone()
        assert segment == ("device_id",)


@pytest.mark.timescale
def test_timescale_maintenance_from_the_application(timescale_dsn: str) -> None:
    """Retention and compression run from the app (the 2.28.3 scheduler fails on PG 15.20)."""
    now = datetime.now(UTC)
    with psycopg.connect(timescale_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO telemetry VALUES (%s, 'dev', 1, 1.0)", (now - timedelta(days=20),)
        )
        conn.execute(
            "INSERT INTO telemetry VALUES (%s, 'dev', 1, 1.0)", (now - timedelta(days=400),)
        )
        dropped = drop_expired(conn, now)
        assert any("chunk" in d for d in dropped)
        assert compress_due(conn, now) >= 1
        row = conn.execute(
            "SELECT count(*) FROM chunk_compression_stats('telemetry') "
            "WHERE compression_status = 'Compressed'"
        ).fetchone()
        assert row is not None
        assert row[0] >= 1
        assert conn.execute("SELECT count(*) FROM telemetry").fetchone() == (1,)
        assert isinstance(failed_jobs(conn), list)


def test_retention_drift_is_found_and_reconciled(timescale_dsn: str) -> None:
    """A retention policy changed behind the app's back is reported and reinstalled."""
    with psycopg.connect(timescale_dsn, autocommit=True) as conn:
        assert retention_drift(conn) == []
        conn.execute("SELECT remove_retention_policy('health_readings')")
        conn.execute("SELECT remove_retention_policy('telemetry')")
        conn.execute("SELECT add_retention_policy('telemetry', INTERVAL '5 days')")
        drift = {d.table: d for d in retention_drift(conn)}
        assert set(drift) == {"health_readings", "telemetry"}
        assert drift["health_readings"].installed is None
        assert drift["telemetry"].expected == "90 days"
        fixed, _dropped = reconcile_retention(conn, datetime.now(UTC))
        assert {d.table for d in fixed} == {"health_readings", "telemetry"}
        assert retention_drift(conn) == []


def test_native_layout_has_no_policy_to_drift(db_dsn: str) -> None:
    """On plain PostgreSQL the map is applied by partition drops, so nothing can drift."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        assert retention_drift(conn) == []
        fixed, _dropped = reconcile_retention(conn, datetime.now(UTC))
        assert fixed == []
