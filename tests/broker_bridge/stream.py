"""Helpers for end-to-end tests: provision a fleet, stream it in a thread, check the tables."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import psycopg

from broker_bridge.mqtt import BrokerAddress
from crypto.keys import parse_root_key
from device_registry.model import RegistryKeys
from device_registry.postgres import provision
from device_registry.profiles import MODELS, PROFILES, PointType
from qnect import simulator
from qnect.rights import adopt, build
from tests.fix_bridge import count


def fleet(dsn: str, root_key_file: Path, per_model: int) -> list[dict[str, Any]]:
    """Provision *per_model* devices of every model; returns their credentials.

    The scales get an owner with explicit health consent, as without one their readings are
    refused (Art. 9).
    """
    root = parse_root_key(root_key_file.read_text())
    keys = RegistryKeys.from_root_key(root)
    creds: list[dict[str, Any]] = []
    with psycopg.connect(dsn) as conn:
        for model in MODELS:
            creds += [c.to_json() for c in provision(conn, keys, model, per_model)]
        scales = [c["device_id"] for c in creds if c["model"] == "scale"]
        adopt(conn, build(root), scales, email="fleet-owner@example.com")
    return creds


class Stream(threading.Thread):
    """A simulated fleet running in the background."""

    def __init__(self, creds: list[dict[str, Any]], url: str, **options: Any) -> None:
        super().__init__(name="fleet", daemon=True)
        self.creds, self.url, self.options = creds, url, options
        self.summary: dict[str, Any] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        """Run the fleet to completion."""
        try:
            self.summary = simulator.run_fleet(
                self.creds, BrokerAddress.parse(self.url), **self.options
            )
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            self.error = exc

    def result(self, timeout: float = 600) -> dict[str, Any]:
        """Wait for the fleet and return its summary."""
        self.join(timeout)
        assert not self.is_alive(), "fleet did not finish"
        if self.error is not None:
            raise self.error
        return self.summary


def plain_points(model: str) -> int:
    """Plain (unencrypted, numeric) data points per telemetry frame of *model*."""
    return sum(
        1 for p in PROFILES[model].points if p.key_class is None and p.type is not PointType.STRING
    )


def assert_complete(dsn: str, creds: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """Every good frame stored exactly once; data rows match the frames (nothing doubled)."""
    good = summary["sent"] - summary["sent_bad"]
    assert summary["unconfirmed"] == 0, summary
    assert summary["confirmed"] == good
    stored = count(dsn, "SELECT count(*) FROM frames")
    distinct = count(dsn, "SELECT count(DISTINCT (device_id, epoch, counter)) FROM frames")
    assert stored == distinct, "a frame is stored twice"
    assert stored == good, f"lost {good - stored} frames"
    with psycopg.connect(dsn) as conn:
        per_device: dict[str, int] = dict(
            conn.execute(
                "SELECT device_id, count(*) FROM frames WHERE kind = 1 GROUP BY device_id"
            ).fetchall()
        )
    models = {c["device_id"]: c["model"] for c in creds}
    expected_rows = sum(n * plain_points(models[d]) for d, n in per_device.items())
    assert count(dsn, "SELECT count(*) FROM telemetry") == expected_rows
