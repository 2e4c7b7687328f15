"""The Grafana dashboard and the alert rules use only the series deploy/metrics.md promises."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.deploy.conftest import DEPLOY, load_yaml

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
BUILTIN = {"up": {"job", "instance"}}
PROMQL_WORDS = {
    "sum",
    "rate",
    "increase",
    "histogram_quantile",
    "by",
    "without",
    "and",
    "or",
    "unless",
    "on",
    "ignoring",
    "avg",
    "max",
    "min",
    "count",
}
REQUIRED_PANELS = {
    "qnect_ingest_frames_total",
    "qnect_commit_seconds_bucket",
    "qnect_batch_size_bucket",
    "qnect_inbox_depth",
    "qnect_broker_reconnects_total",
    "qnect_devices_online",
    "qnect_key_cache_hits_total",
    "qnect_key_cache_misses_total",
    "qnect_audit_events_total",
    "qnect_ota_devices",
}


def contract() -> dict[str, set[str]]:
    """Series name -> allowed labels, read from the table in deploy/metrics.md."""
    series: dict[str, set[str]] = dict(BUILTIN)
    row = re.compile(r"^\| `(qnect_[a-z0-9_]+)` \| (counter|gauge|histogram) \| ([^|]*) \|")
    for line in (DEPLOY / "metrics.md").read_text().splitlines():
        match = row.match(line)
        if not match:
            continue
        name, kind, label_cell = match.groups()
        labels = set(re.findall(r"`([a-z_]+)`", label_cell)) | {"job", "instance"}
        if kind == "histogram":
            for suffix in HISTOGRAM_SUFFIXES:
                series[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
        else:
            series[name] = labels
    return series


def names_and_labels(expr: str) -> tuple[set[str], set[str]]:
    """Metric names and label names an expression uses (enough PromQL for our expressions)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_strings)
    labels = set(re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", without_ranges))
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", without_ranges):
        labels |= {g.strip() for g in group.split(",") if g.strip()}
    stripped = re.sub(r"\{[^}]*\}", "", without_ranges)
    stripped = re.sub(r"\b(?:by|without)\s*\([^)]*\)", "", stripped)
    words = set(re.findall(r"\b([a-z_][a-z0-9_]*)\b", stripped)) - PROMQL_WORDS
    return words, labels


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every dashboard target."""
    board = json.loads((DEPLOY / "grafana" / "dashboards" / "qnect.json").read_text())
    return [
        (panel["title"], target["expr"]) for panel in board["panels"] for target in panel["targets"]
    ]


def alert_exprs() -> list[tuple[str, str]]:
    """(alert name, PromQL) of every alert rule."""
    rules = load_yaml(DEPLOY / "prometheus" / "alerts.yml")
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


def test_metrics_md_lists_every_series_of_the_contract() -> None:
    """Metrics md lists every series of the contract."""
    series = contract()
    for name in REQUIRED_PANELS:
        assert name in series, name
    assert "qnect_commit_seconds" not in series  # only its _bucket/_sum/_count exist
    assert {"result", "reason"} <= series["qnect_ingest_frames_total"]
    assert "decision" in series["qnect_audit_events_total"]
    assert "state" in series["qnect_ota_devices"]


def test_dashboard_parses_and_has_the_promised_panels() -> None:
    """Dashboard parses and has the promised panels."""
    board = json.loads((DEPLOY / "grafana" / "dashboards" / "qnect.json").read_text())
    assert board["uid"] == "qnect-ingest"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    used = set()
    for _title, expr in dashboard_exprs():
        used |= names_and_labels(expr)[0]
    assert used >= REQUIRED_PANELS
    exprs = {e for _, e in dashboard_exprs()}
    assert 'sum(rate(qnect_ingest_frames_total{result="accepted"}[1m]))' in exprs
    assert 'sum by (reason) (rate(qnect_ingest_frames_total{result="rejected"}[5m]))' in exprs
    quantiles = {re.match(r"histogram_quantile\(([0-9.]+),", e) for e in exprs} - {None}
    assert {"0.5", "0.99"} <= {m.group(1) for m in quantiles if m}


@pytest.mark.parametrize(("where", "expr"), dashboard_exprs() + alert_exprs())
def test_every_expression_uses_only_contracted_series_and_labels(where: str, expr: str) -> None:
    """Every expression uses only contracted series and labels."""
    series = contract()
    names, labels = names_and_labels(expr)
    assert names, f"{where}: no series in {expr!r}"
    unknown = names - set(series)
    assert not unknown, f"{where}: {sorted(unknown)} not in deploy/metrics.md"
    allowed = set().union(*(series[n] for n in names))
    assert labels <= allowed, f"{where}: labels {sorted(labels - allowed)} not in metrics.md"


def test_the_checker_catches_an_unknown_series() -> None:
    """The checker catches an unknown series."""
    names, labels = names_and_labels('sum by (zone) (rate(qnect_made_up_total{x="1"}[5m]))')
    assert names == {"qnect_made_up_total"}
    assert labels == {"zone", "x"}
    assert "qnect_made_up_total" not in contract()


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus() -> None:
    """Grafana provisioning points at the dashboard and prometheus."""
    datasources: dict[str, Any] = load_yaml(
        DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
    )
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    board = json.loads((DEPLOY / "grafana" / "dashboards" / "qnect.json").read_text())
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
    providers = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "qnect.yaml")
    (provider,) = providers["providers"]
    compose = load_yaml(DEPLOY / "compose.yaml")
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts
