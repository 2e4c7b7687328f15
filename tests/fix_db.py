"""PostgreSQL fixtures: a fresh, migrated database per test module on the real server.

``QNECT_TEST_DSN`` names an existing database on the server (default: the local ``test``
database); each module gets its own database created next to it and dropped afterwards. If the
server cannot be reached the whole run stops (a missing service fails CI, it is not skipped).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from qnect.migrate import migrate
from qnect.settings import create_root_key_file
from telemetry.postgres_layout import timescale_available

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def admin_dsn() -> str:
    """DSN of the database the test databases are created from."""
    return os.environ.get("QNECT_TEST_DSN", DEFAULT_DSN)


def with_dbname(dsn: str, name: str) -> str:
    """Replace the database name of *dsn*."""
    return dsn.rsplit("/", 1)[0] + "/" + name


def pytest_sessionstart(session: pytest.Session) -> None:
    """Warm up: abort the run at once if PostgreSQL is not there."""
    del session
    try:
        with psycopg.connect(admin_dsn(), connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        pytest.exit(f"PostgreSQL not reachable at QNECT_TEST_DSN: {exc}", returncode=3)


def create_database(timescale: str = "off") -> str:
    """Create and migrate a new database; returns its DSN."""
    name = f"qnect_t_{secrets.token_hex(4)}"
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = with_dbname(admin_dsn(), name)
    migrate(dsn, timescale=timescale)
    return dsn


def drop_database(dsn: str) -> None:
    """Drop a test database (forcing out the TimescaleDB scheduler if it is connected)."""
    name = dsn.rsplit("/", 1)[1]
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="module")
def db_dsn() -> Iterator[str]:
    """A fresh database on the plain-PostgreSQL layout (native partitions)."""
    dsn = create_database("off")
    yield dsn
    drop_database(dsn)


@pytest.fixture(scope="module")
def root_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root key file for this module."""
    path = tmp_path_factory.mktemp("keys") / "root.key"
    create_root_key_file(path)
    return path


@pytest.fixture
def conn(db_dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit connection to the module's database."""
    with psycopg.connect(db_dsn, autocommit=True) as c:
        yield c


@pytest.fixture(scope="module")
def timescale_dsn() -> Iterator[str]:
    """A database on the TimescaleDB layout, where the extension can be created here."""
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        if not timescale_available(conn):
            pytest.skip("timescaledb extension not installed on this server")
    dsn = create_database("on")
    # TimescaleDB's scheduler would run the retention and compression policies at times of
    # its choosing, racing the tests' own maintenance calls (DuplicateObject on a chunk it is
    # compressing). The policies stay installed; the application runs maintenance itself.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs "
            "WHERE job_id >= 1000"
        )
    yield dsn
    drop_database(dsn)
