"""The ``qnect bridge`` supervisor's HTTP endpoint: ``/metrics``, ``/readyz``, ``/healthz``.

Owns the exposition of the bridge's series (``deploy/metrics.md``): worker processes record into
prometheus-client's multiprocess directory and every scrape merges their files, so one endpoint
per ``qnect bridge`` covers all its workers, restarted ones included (counters of a dead process
stay counted; its gauges are dropped by ``mark_process_dead``). Adds the one series that belongs
to the deployment rather than to a worker: devices online, read from the database at most every
``ONLINE_TTL_S``. Does not own the workers or their lifetimes (``qnect.bridge``).

``/readyz`` answers 503 from the moment the supervisor starts draining (SIGTERM) and while a
worker is down; ``/healthz`` answers 200 while the process serves HTTP.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from telemetry.errors import Unavailable
from telemetry.postgres import Database

log = structlog.get_logger("qnect.bridge_http")

ONLINE_TTL_S = 5.0  # a count(*) over device_state per scrape burst, not per scrape


class OnlineDevices:
    """Collector of ``qnect_devices_online`` from the presence state (cached, thread-safe)."""

    def __init__(self, database: Database) -> None:
        """Count through *database* (a connection of the supervisor's own)."""
        self._db = database
        self._lock = threading.Lock()
        self._value: int | None = None
        self._read_at = float("-inf")

    def collect(self) -> Iterable[Metric]:
        """The gauge; no sample while the database has never answered."""
        with self._lock:
            if time.monotonic() - self._read_at > ONLINE_TTL_S:
                try:
                    self._value = self._db.devices_online()
                    self._read_at = time.monotonic()
                except Unavailable:
                    log.warning("bridge.metrics_db_unavailable")
            value = self._value
        family = GaugeMetricFamily("qnect_devices_online", "Devices whose presence is online")
        if value is not None:
            family.add_metric([], value)
        yield family

    def close(self) -> None:
        """Drop the database connection."""
        with self._lock:
            self._db.close()


def bridge_registry(metrics_dir: str, online: OnlineDevices) -> CollectorRegistry:
    """The registry one scrape renders: every worker's files plus devices online."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics_dir)  # type: ignore[no-untyped-call]  # untyped upstream
    registry.register(online)
    return registry


def _handler(
    registry: CollectorRegistry, ready: Callable[[], bool]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._answer(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/readyz":
                is_ready = ready()
                body = b'{"status": "ready"}' if is_ready else b'{"status": "draining"}'
                self._answer(200 if is_ready else 503, body, "application/json")
            elif path == "/healthz":
                self._answer(200, b'{"status": "ok"}', "application/json")
            else:
                self._answer(404, b"not found\n", "text/plain")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base name
            del format, args  # scrapes every 15 s are not worth a log line

    return Handler


@contextmanager
def serving(
    host: str, port: int, registry: CollectorRegistry, ready: Callable[[], bool]
) -> Iterator[ThreadingHTTPServer]:
    """Serve the endpoint on *host*:*port* in a daemon thread for the duration of the block."""
    server = ThreadingHTTPServer((host, port), _handler(registry, ready))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    log.info("bridge.metrics_serving", port=server.server_address[1])
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
