"""deploy/prometheus/: `promtool check config` (which also checks the rule files it names).

promtool comes with Debian's `prometheus` package; `.ci/run` installs it when missing. The test
skips only where it could not be installed.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.deploy.conftest import DEPLOY, load_yaml

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (apt-get install --no-install-recommends prometheus)",
)


@needs_promtool
def test_promtool_accepts_the_config_and_its_rules() -> None:
    """Promtool accepts the config and its rules."""
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout + result.stderr


@needs_promtool
def test_promtool_rejects_a_broken_config(tmp_path) -> None:
    """Promtool rejects a broken config."""
    broken = tmp_path / "prometheus.yml"
    broken.write_text("scrape_configs:\n  - job_name: x\n    scrape_interval: soon\n")
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "config", str(broken)], capture_output=True, check=False, timeout=60
    )
    assert result.returncode != 0


def test_scrapes_every_bridge_container_and_the_api() -> None:
    """Scrapes every bridge container and the api."""
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    bridge = jobs["qnect-bridge"]["dns_sd_configs"][0]
    assert bridge["names"] == ["bridge"]
    assert bridge["type"] == "A"
    compose = load_yaml(DEPLOY / "compose.yaml")
    metrics_port = compose["services"]["bridge"]["environment"]["QNECT_METRICS_PORT"]
    assert bridge["port"] == int(metrics_port)
    assert jobs["qnect-api"]["static_configs"][0]["targets"] == ["api:8000"]
    assert jobs["qnect-api"]["metrics_path"] == "/metrics"
