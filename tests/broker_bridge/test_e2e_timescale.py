"""The end-to-end ingest test again, on the TimescaleDB layout wherever the extension exists."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from telemetry.postgres_layout import timescale_available
from tests.broker_bridge.test_e2e_ingest import (
    test_fleet_of_200_arrives_completely_and_bad_frames_are_quarantined as fleet_test,
)
from tests.broker_bridge.test_e2e_ingest import (
    test_personal_fields_are_ciphertext_and_metrics_are_numbers as secrecy_test,
)
from tests.fix_db import admin_dsn, create_database, drop_database

pytestmark = pytest.mark.timescale


@pytest.fixture(scope="module")
def db_dsn() -> Iterator[str]:
    """This module's database uses hypertables."""
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        if not timescale_available(conn):
            pytest.skip("timescaledb extension not installed on this server")
    dsn = create_database("on")
    yield dsn
    drop_database(dsn)


test_fleet_on_hypertables = fleet_test
test_secrecy_on_hypertables = secrecy_test
