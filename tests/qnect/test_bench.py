"""`qnect bench --quick` runs end to end and reports every figure (values are not asserted)."""

from __future__ import annotations

import os

from tests.fix_bridge import qnect_json
from tests.fix_db import admin_dsn

FIGURES = {
    "broker_pipe_msgs_per_s",
    "copy_rows_per_s",
    "naive_msgs_per_s",
    "pipeline_msgs_per_s",
    "latency_ms_p50",
    "latency_ms_p95",
    "latency_ms_p99",
    "lost",
    "duplicated",
    "cpu_s_per_1k_msgs",
    "worker_peak_rss_mb",
    "cores",
}


def test_quick_bench_reports_all_figures_and_loses_nothing() -> None:
    """The quick benchmark finishes, prints one JSON object with every figure, 0 lost/doubled."""
    env = dict(os.environ, QNECT_DATABASE_URL=admin_dsn())
    result = qnect_json("bench", "--quick", "--json", env=env)
    assert set(result) >= FIGURES
    assert result["lost"] == 0
    assert result["duplicated"] == 0
    assert all(result[k] > 0 for k in ("broker_pipe_msgs_per_s", "pipeline_msgs_per_s"))
