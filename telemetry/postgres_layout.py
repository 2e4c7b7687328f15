"""Time-series storage layout: the one place where TimescaleDB and plain PostgreSQL differ.

Both layouts create the same tables with the same columns and unique keys; they differ in how
rows are split by time and how old data goes:

* ``timescale``: hypertables with 1-day chunks, compression segmented by device after the
  newest accepted timestamp can no longer reach a chunk, retention policies per data class.
  Because TimescaleDB 2.28.3's scheduler fails its jobs on PostgreSQL 15.20
  (research/timescale-facts.md), the application also runs retention and compression itself
  and reports failed jobs.
* ``native``: declarative range partitions per day, created ahead by the application and
  dropped when older than their retention.

In both, chunks/partitions for the whole acceptance window (max reading age back, two days
ahead) are created in advance, so concurrent COPYs never serialise on chunk creation.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from privacy.retention import RETENTION_DAYS, RetentionClass

CHUNK = timedelta(days=1)  # ~1-5M rows a day per table at fleet scale: chunks stay well in RAM
AHEAD_DAYS = 2
BEHIND_DAYS = 8  # validation accepts readings up to 7 days old
COMPRESS_AFTER = timedelta(days=BEHIND_DAYS + 1)  # nothing new can land in a compressed chunk


@dataclass(frozen=True, slots=True)
class SeriesTable:
    """A time-partitioned table and its retention class."""

    name: str
    columns: str
    unique: str | None
    retention: RetentionClass


_SEALED_COLS = (
    "ts timestamptz NOT NULL, device_id text NOT NULL, binding text NOT NULL, "
    "epoch bigint NOT NULL, counter bigint NOT NULL, point smallint NOT NULL, enc bytea NOT NULL"
)
SERIES: tuple[SeriesTable, ...] = (
    SeriesTable(
        "frames",
        "ts timestamptz NOT NULL, device_id text NOT NULL, epoch bigint NOT NULL, "
        "counter bigint NOT NULL, kind smallint NOT NULL, received_at timestamptz NOT NULL",
        "device_id, epoch, counter, ts",
        RetentionClass.LEDGER,
    ),
    SeriesTable(
        "telemetry",
        "ts timestamptz NOT NULL, device_id text NOT NULL, point smallint NOT NULL, "
        "value double precision NOT NULL",
        None,
        RetentionClass.USAGE,
    ),
    SeriesTable("health_readings", _SEALED_COLS, None, RetentionClass.HEALTH),
    SeriesTable("location_readings", _SEALED_COLS, None, RetentionClass.LOCATION),
    SeriesTable("media_readings", _SEALED_COLS, None, RetentionClass.MEDIA),
    SeriesTable(
        "device_info",
        "ts timestamptz NOT NULL, device_id text NOT NULL, binding text NOT NULL, "
        "epoch bigint NOT NULL, counter bigint NOT NULL, point smallint NOT NULL, "
        "enc bytea NOT NULL",
        None,
        RetentionClass.NETWORK,
    ),
    SeriesTable(
        "presence_events",
        "ts timestamptz NOT NULL, device_id text NOT NULL, epoch bigint NOT NULL, "
        "online boolean NOT NULL, source text NOT NULL",
        None,
        RetentionClass.PRESENCE,
    ),
)

Conn = psycopg.Connection[Any]


def timescale_available(conn: Conn) -> bool:
    """Whether ``CREATE EXTENSION timescaledb`` succeeds here (it needs preloading).

    Asked before trying: with the extension installed but not preloaded, the server answers
    ``CREATE EXTENSION`` with FATAL and closes the connection.
    """
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'), "
        "current_setting('shared_preload_libraries')"
    ).fetchone()
    if row is None or not row[0] or "timescaledb" not in str(row[1]):
        return False
    try:
        with conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg.Error:
        return False
    return True


def layout_kind(conn: Conn) -> str:
    """The layout this database was created with."""
    row = conn.execute("SELECT kind FROM storage_layout").fetchone()
    if row is None:
        raise RuntimeError("storage layout not chosen; run qnect migrate")
    return str(row[0])


def create_series(conn: Conn, kind: str) -> None:
    """Create every series table in layout *kind* and record the choice."""
    for table in SERIES:
        name = sql.Identifier(table.name)
        columns = sql.SQL(table.columns)  # constant DDL from this module
        unique = (
            sql.SQL(", UNIQUE ({})").format(sql.SQL(table.unique)) if table.unique else sql.SQL("")
        )
        if kind == "timescale":
            conn.execute(sql.SQL("CREATE TABLE {} ({}{})").format(name, columns, unique))
            _hypertable(conn, table)
        else:
            conn.execute(
                sql.SQL("CREATE TABLE {} ({}{}) PARTITION BY RANGE (ts)").format(
                    name, columns, unique
                )
            )
        conn.execute(
            sql.SQL("CREATE INDEX {} ON {} (device_id, ts DESC)").format(
                sql.Identifier(f"{table.name}_device_ts"), name
            )
        )
    conn.execute("INSERT INTO storage_layout (kind) VALUES (%s)", (kind,))


def _hypertable(conn: Conn, table: SeriesTable) -> None:
    days = RETENTION_DAYS[table.retention]
    conn.execute("SELECT create_hypertable(%s, by_range('ts', %s::interval))", (table.name, CHUNK))
    conn.execute(
        sql.SQL(
            "ALTER TABLE {} SET (timescaledb.compress, timescaledb.compress_segmentby = "
            "'device_id', timescaledb.compress_orderby = 'ts DESC')"
        ).format(sql.Identifier(table.name))
    )
    conn.execute("SELECT add_compression_policy(%s, %s::interval)", (table.name, COMPRESS_AFTER))
    conn.execute(
        "SELECT add_retention_policy(%s, %s::interval)", (table.name, timedelta(days=days))
    )


def _days(now: datetime) -> list[date]:
    today = now.astimezone(UTC).date()
    return [today + timedelta(days=d) for d in range(-BEHIND_DAYS, AHEAD_DAYS + 1)]


def ensure_ahead(conn: Conn, now: datetime) -> int:
    """Create the partitions/chunks of the acceptance window; returns how many were new."""
    created = 0
    kind = layout_kind(conn)
    for table in SERIES:
        for day in _days(now):
            if day + timedelta(days=1) <= now.date() - timedelta(
                days=RETENTION_DAYS[table.retention]
            ):
                continue
            created += (_chunk_ahead if kind == "timescale" else _partition)(conn, table, day)
    return created


def _partition(conn: Conn, table: SeriesTable, day: date) -> int:
    name = f"{table.name}_p{day:%Y%m%d}"
    exists = conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()
    if exists is not None and exists[0] is not None:
        return 0
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})"
        ).format(
            sql.Identifier(name),
            sql.Identifier(table.name),
            sql.Literal(start),
            sql.Literal(start + CHUNK),
        )
    )
    return 1


def _chunk_ahead(conn: Conn, table: SeriesTable, day: date) -> int:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    row = conn.execute(
        "SELECT count(*) FROM show_chunks(%s::regclass, newer_than => %s, older_than => %s)",
        (table.name, start, start + CHUNK),
    ).fetchone()
    if row is not None and row[0]:
        return 0
    # TimescaleDB has no public "create chunk" call. A placeholder row inserted and deleted
    # in one committed transaction leaves its chunk behind and is never visible to anyone
    # (a rolled-back insert would take the chunk with it).
    cols = [part.split()[:2] for part in table.columns.split(", ")]
    names = sql.SQL(", ").join(sql.Identifier(c) for c, _ in cols)
    values = sql.SQL(", ").join(
        sql.Literal(start) if c == "ts" else sql.SQL(_PLACEHOLDER[t]) for c, t in cols
    )
    name = sql.Identifier(table.name)
    with conn.transaction():
        conn.execute(sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(name, names, values))
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE ts = {} AND device_id = ''").format(
                name, sql.Literal(start)
            )
        )
    return 1


_PLACEHOLDER = {
    "text": "''",
    "bigint": "0",
    "smallint": "0",
    "double": "0",
    "bytea": "''::bytea",
    "boolean": "false",
    "timestamptz": "now()",
}


def drop_expired(conn: Conn, now: datetime) -> list[str]:
    """Drop whole partitions/chunks past their table's retention; returns what was dropped."""
    kind = layout_kind(conn)
    dropped: list[str] = []
    for table in SERIES:
        cutoff = now - timedelta(days=RETENTION_DAYS[table.retention])
        if kind == "timescale":
            rows = conn.execute(
                "SELECT drop_chunks(%s::regclass, older_than => %s)", (table.name, cutoff)
            ).fetchall()
            dropped.extend(str(r[0]) for r in rows)
            continue
        for (name,) in conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass",
            (table.name,),
        ).fetchall():
            day = datetime.strptime(name.rsplit("_p", 1)[1], "%Y%m%d").replace(tzinfo=UTC)
            if day + CHUNK <= cutoff:
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
                dropped.append(name)
    return dropped


def compress_due(conn: Conn, now: datetime) -> int:
    """Compress chunks older than ``COMPRESS_AFTER`` (TimescaleDB only); returns how many."""
    if layout_kind(conn) != "timescale":
        return 0
    done = 0
    for table in SERIES:
        chunks = conn.execute(
            "SELECT c::text FROM show_chunks(%s::regclass, older_than => %s) c",
            (table.name, now - COMPRESS_AFTER),
        ).fetchall()
        for (chunk,) in chunks:
            # TimescaleDB's own compression job may be on the same chunk right now (it raises
            # DuplicateObject for the loser): skip it, whoever finishes, it ends compressed.
            try:
                with conn.transaction():
                    conn.execute(
                        "SELECT compress_chunk(%s::regclass, if_not_compressed => true)", (chunk,)
                    )
            except psycopg.errors.DuplicateObject:
                continue
            done += 1
    return done


def failed_jobs(conn: Conn) -> list[tuple[int, str, str]]:
    """TimescaleDB jobs whose last run failed: (job id, procedure, table)."""
    if layout_kind(conn) != "timescale":
        return []
    rows = conn.execute(
        "SELECT j.job_id, j.proc_name, coalesce(j.hypertable_name, '') "
        "FROM timescaledb_information.jobs j "
        "JOIN timescaledb_information.job_stats s USING (job_id) "
        "WHERE s.last_run_status = 'Failed'"
    ).fetchall()
    return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]


@dataclass(frozen=True, slots=True)
class RetentionDrift:
    """A series table whose installed retention differs from ``RETENTION_DAYS``."""

    table: str
    installed: str | None  # the policy's drop_after as installed, None when missing
    expected: str


def retention_drift(conn: Conn) -> list[RetentionDrift]:
    """Compare installed TimescaleDB retention policies with the retention map.

    Native partitions have no installed policy: ``drop_expired`` applies the map directly,
    so there is nothing that can drift.
    """
    if layout_kind(conn) != "timescale":
        return []
    installed = dict(
        conn.execute(
            "SELECT hypertable_name, config->>'drop_after' FROM timescaledb_information.jobs "
            "WHERE proc_name = 'policy_retention' AND hypertable_schema = current_schema()"
        ).fetchall()
    )
    drift = []
    for table in SERIES:
        expected = timedelta(days=RETENTION_DAYS[table.retention])
        have = installed.get(table.name)
        row = conn.execute("SELECT %s::interval = %s::interval", (have, expected)).fetchone()
        if have is None or not (row and row[0]):
            drift.append(RetentionDrift(table.name, have, f"{expected.days} days"))
    return drift


def reconcile_retention(conn: Conn, now: datetime) -> tuple[list[RetentionDrift], list[str]]:
    """Reinstall drifted retention policies and drop what is already past retention.

    Returns:
        (drift found and fixed, partitions or chunks dropped).
    """
    drift = retention_drift(conn)
    for d in drift:
        days = RETENTION_DAYS[next(t.retention for t in SERIES if t.name == d.table)]
        conn.execute("SELECT remove_retention_policy(%s, if_exists => true)", (d.table,))
        conn.execute(
            "SELECT add_retention_policy(%s, %s::interval)", (d.table, timedelta(days=days))
        )
    return drift, drop_expired(conn, now)
