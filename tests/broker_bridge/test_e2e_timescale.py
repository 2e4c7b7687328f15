"""The end-to-end ingest test again, on the TimescaleDB layout wherever the extension exists."""

from __future__ import annotations

import pytest

from tests.broker_bridge.test_e2e_ingest import (
    test_fleet_of_200_arrives_completely_and_bad_frames_are_quarantined as fleet_test,
)
from tests.broker_bridge.test_e2e_ingest import (
    test_personal_fields_are_ciphertext_and_metrics_are_numbers as secrecy_test,
)

pytestmark = pytest.mark.timescale


@pytest.fixture(scope="module")
def db_dsn(timescale_dsn: str) -> str:
    """This module's database uses hypertables."""
    return timescale_dsn


test_fleet_on_hypertables = fleet_test
test_secrecy_on_hypertables = secrecy_test
