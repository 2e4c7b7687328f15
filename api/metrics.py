"""``GET /metrics`` of the HTTP API: the Prometheus series of ``deploy/metrics.md`` it exports.

Owns the route and the API's own series. ``qnect_audit_events_total`` is counted where audit
events are written (``privacy.postgres_audit``); ``qnect_ota_devices`` counts the devices of
running and paused campaigns per state, from a source the composition root sets (read at
most every ``OTA_CACHE_S``; no samples while it is unset or the database is away). Does not own
readiness or the error table (``api.app``, ``qnect.api_server``). The registry is
prometheus-client's process-wide default, so series of the libraries below join without wiring.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

OTA_CACHE_S = 5.0  # a scrape every few seconds must not become a query every few seconds


class OtaDevices:
    """Collector of ``qnect_ota_devices`` (by ``state``)."""

    def __init__(self) -> None:
        """No source yet: the family is declared without samples."""
        self.source: Callable[[], Mapping[str, int]] | None = None
        self._lock = threading.Lock()
        self._cached: Mapping[str, int] = {}
        self._at = -OTA_CACHE_S

    def _counts(self) -> Mapping[str, int]:
        with self._lock:
            if self.source is not None and time.monotonic() - self._at >= OTA_CACHE_S:
                try:
                    self._cached = self.source()
                except Exception:  # noqa: BLE001 - a scrape must not fail with the database
                    self._cached = {}
                self._at = time.monotonic()
            return self._cached

    def collect(self) -> Iterable[Metric]:
        """The gauge family with one sample per state of active campaigns."""
        family = GaugeMetricFamily(
            "qnect_ota_devices", "Devices per OTA state in active campaigns", labels=["state"]
        )
        for state, count in sorted(self._counts().items()):
            family.add_metric([state], count)
        yield family

    def describe(self) -> Iterable[Metric]:
        """The names this collector exports (so a registry refuses a second copy)."""
        yield GaugeMetricFamily(
            "qnect_ota_devices", "Devices per OTA state in active campaigns", labels=["state"]
        )


OTA_DEVICES = OtaDevices()  # process-wide, like the registry it joins


def metrics_router(registry: CollectorRegistry = REGISTRY) -> APIRouter:
    """The ``/metrics`` route rendering *registry* (OTA collector registered once on it)."""
    with contextlib.suppress(ValueError):  # already registered by an earlier app
        registry.register(OTA_DEVICES)
    router = APIRouter(tags=["health"])

    @router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
