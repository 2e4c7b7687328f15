"""``GET /metrics`` of the HTTP API: the Prometheus series of ``deploy/metrics.md`` it exports.

Owns the route and the API's own series. ``qnect_audit_events_total`` is counted where audit
events are written (``privacy.postgres_audit``) and ``qnect_ota_devices`` is declared here with
no samples: OTA campaigns do not exist yet, so no state has a count to report. Does not own
readiness or the error table (``api.app``, ``qnect.api_server``). The registry is
prometheus-client's process-wide default, so series of the libraries below join without wiring.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric


class OtaDevices:
    """Collector of ``qnect_ota_devices`` (by ``state``): declared, no samples before OTA."""

    def collect(self) -> Iterable[Metric]:
        """The gauge family, without samples until OTA campaigns exist."""
        yield GaugeMetricFamily(
            "qnect_ota_devices", "Devices per OTA state in active campaigns", labels=["state"]
        )

    def describe(self) -> Iterable[Metric]:
        """The names this collector exports (so a registry refuses a second copy)."""
        return self.collect()


def metrics_router(registry: CollectorRegistry = REGISTRY) -> APIRouter:
    """The ``/metrics`` route rendering *registry* (OTA collector registered once on it)."""
    with contextlib.suppress(ValueError):  # already registered by an earlier app
        registry.register(OtaDevices())
    router = APIRouter(tags=["health"])

    @router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
