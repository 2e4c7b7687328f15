"""Shared readers for the deploy artifacts (pure file reads; no Docker engine needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def load_yaml(path: Path) -> Any:
    """Parse YAML the way Compose and Prometheus do (anchors and merge keys resolved)."""
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    """deploy/compose.yaml, parsed."""
    data = load_yaml(DEPLOY / "compose.yaml")
    assert isinstance(data, dict)
    return data
