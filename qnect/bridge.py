"""Process wiring of bridge workers: one process per worker, supervised and restarted.

Session names: every worker's MQTT client id is ``qnect-bridge-<name>-<index>``, where *name*
is this deployment member's ``QNECT_BRIDGE_NAME`` (default: the host name), so several
``qnect bridge`` processes (hosts, compose replicas) share one broker without taking over each
other's sessions. A supervisor drains only its own sessions with an index of K or more (left by
a larger run of the same member) and the unnamed ``qnect-bridge-<index>`` sessions of releases
before names existed.

Shutdown: SIGTERM makes ``/readyz`` answer 503 at once, then every worker stops taking batches,
finishes, commits and acknowledges the batch in hand and disconnects; a worker still busy after
``SHUTDOWN_S`` is killed (its unacknowledged messages are redelivered), so the supervisor exits
0 within ``SHUTDOWN_S`` plus a second.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import FrameType

import stamina
import structlog
from prometheus_client import multiprocess

from broker_bridge.metrics import WorkerMetrics
from broker_bridge.mqtt import BridgeClient
from broker_bridge.worker import Worker, WorkerConfig
from device_registry.postgres import PostgresDeviceSource
from privacy.audit import AuditKeys
from qnect.bridge_http import OnlineDevices, bridge_registry, serving
from qnect.logs import configure
from qnect.settings import Settings
from telemetry.errors import Unavailable
from telemetry.pipeline import PipelineConfig
from telemetry.postgres import Database

log = structlog.get_logger("qnect.bridge")
RESTART_DELAY_S = 1.0  # a crashing worker is restarted; its persistent session keeps its share
# Workers get this long after SIGTERM to commit and ack the batch in hand (a 4000-message
# batch commits in ~0.2 s); past it they are killed, inside the 10 s a container runtime or
# systemd is told to wait (compose stop_grace_period and TimeoutStopSec are longer still).
SHUTDOWN_S = 8.0
SESSION_PREFIX = "qnect-bridge-"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus-client in every worker


def session_id(name: str | None, index: int) -> str:
    """The MQTT client id of worker *index* of member *name* (None: a pre-name session)."""
    return f"{SESSION_PREFIX}{index}" if name is None else f"{SESSION_PREFIX}{name}-{index}"


@dataclass(frozen=True, slots=True)
class BridgeOptions:
    """What a worker process needs besides the environment."""

    index: int
    batch_max: int = 4000
    drain: bool = False  # a session of a retired worker: empty it, then end it
    workers: int = 1  # how many share the subscription: each enforces 1/workers of a rate
    name: str | None = None  # the member's name; None only to drain a pre-name session

    @property
    def client_id(self) -> str:
        """The worker's MQTT client id."""
        return session_id(self.name, self.index)


def run_worker(options: BridgeOptions) -> None:
    """Entry point of one worker process: run until SIGTERM/SIGINT."""
    configure()
    settings = Settings()  # type: ignore[call-arg]  # read from the environment
    stop = threading.Event()

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Workers also seal the audit log during maintenance (one at a time, by advisory lock).
    database = Database(
        settings.database_url.get_secret_value(), AuditKeys.from_root(settings.root_key())
    )
    client_id = options.client_id
    client = BridgeClient(settings.bridge_address(), client_id, drain=options.drain)
    config = WorkerConfig(
        batch_max=options.batch_max,
        pipeline=PipelineConfig(
            epoch_grace_ms=int(settings.epoch_grace_s * 1000),
            drk_grace_ms=int(settings.drk_grace_s * 1000),
            rates=settings.rate_config().per_worker(options.workers),
        ),
        presence_stale=timedelta(seconds=settings.presence_stale_s),
        ota=settings.ota_config(),
        desired=settings.desired_config(),
    )
    source = PostgresDeviceSource(lambda: database.conn)
    worker = Worker(
        client, database, source, settings.kek_ring(), config, WorkerMetrics(options.index)
    )
    for attempt in stamina.retry_context(on=Unavailable, attempts=None, timeout=None):
        with attempt:
            if stop.is_set():
                return  # told to stop while the database was away: nothing was taken yet
            if options.drain and not database.lock_session(client_id):
                # Another member drains it (pre-name sessions are everyone's to drain); two
                # drainers of one client id would only take the session from each other.
                log.info("bridge.drained_elsewhere", worker=options.index)
                database.close()
                return
            database.register_session(client_id)
    log.info("bridge.worker_started", worker=options.index, drain=options.drain)
    worker.run(stop, drain=options.drain)
    if options.drain and not stop.is_set():
        database.retire_session(client_id)
        database.close()
    log.info("bridge.worker_stopped", worker=options.index, batches=worker.batches)


class _Supervisor:
    """Keeps worker processes (and drains of retired sessions) running."""

    def __init__(
        self, batch_max: int, workers: int, name: str, metrics_dir: str, stop: threading.Event
    ) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._batch_max = batch_max
        self._workers = workers
        self._name = name
        self._metrics_dir = metrics_dir
        self.workers: dict[int, multiprocessing.process.BaseProcess] = {}
        self.drains: dict[str, multiprocessing.process.BaseProcess] = {}
        self.draining = stop  # set by SIGTERM: readiness is false from that moment on

    def spawn(self, index: int, *, drain: bool = False, name: str | None = "") -> None:
        options = BridgeOptions(
            index,
            self._batch_max,
            drain=drain,
            workers=self._workers,
            name=self._name if name == "" else name,
        )
        proc = self._ctx.Process(target=run_worker, args=(options,), name=f"worker-{index}")
        proc.start()
        if drain:
            self.drains[options.client_id] = proc
        else:
            self.workers[index] = proc

    def ready(self) -> bool:
        """Not draining, and every worker process alive."""
        return not self.draining.is_set() and all(p.is_alive() for p in self.workers.values())

    def check(self) -> None:
        for client_id, proc in list(self.drains.items()):
            if not proc.is_alive():
                del self.drains[client_id]
                self._buried(proc)
                if proc.exitcode != 0:
                    name, index = _parse(client_id, self._name)
                    self.spawn(index, drain=True, name=name)
        for index, proc in list(self.workers.items()):
            if not proc.is_alive():
                log.warning("bridge.worker_died", worker=index, exitcode=proc.exitcode)
                self._buried(proc)
                time.sleep(RESTART_DELAY_S)
                self.spawn(index)

    def _buried(self, proc: multiprocessing.process.BaseProcess) -> None:
        if proc.pid is not None:  # its gauges leave the scrape; its counters stay counted
            multiprocess.mark_process_dead(proc.pid, self._metrics_dir)  # type: ignore[no-untyped-call]

    def stop(self) -> None:
        """SIGTERM every worker, wait up to ``SHUTDOWN_S``, kill what is still running."""
        started = time.monotonic()
        everyone = [*self.workers.values(), *self.drains.values()]
        for proc in everyone:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: the worker finishes and acks its batch
        for proc in everyone:
            proc.join(max(0.0, started + SHUTDOWN_S - time.monotonic()))
        killed = [proc for proc in everyone if proc.is_alive()]
        for proc in killed:
            proc.kill()  # unacked messages stay with the broker and are redelivered
            proc.join(1)
        log.info(
            "bridge.stopped",
            seconds=round(time.monotonic() - started, 2),
            workers=len(everyone),
            killed=len(killed),
        )


def supervise(
    workers: int, stop: threading.Event, batch_max: int = 4000, settings: Settings | None = None
) -> None:
    """Run *workers* processes, restarting any that dies, until *stop* is set.

    Sessions of this member beyond *workers* left by a larger run are drained and ended, since
    the broker keeps routing their share of the shared subscription to them (with *workers* 0
    all of them, and then it returns). With
    ``QNECT_METRICS_PORT`` set, ``/metrics``, ``/readyz`` and ``/healthz`` are served there.
    """
    settings = settings or Settings()  # type: ignore[call-arg]  # from the environment
    metrics_dir = tempfile.mkdtemp(prefix="qnect-metrics-")
    # Spawned workers inherit the environment: each records into its own files in this
    # directory, which the endpoint merges. A fresh directory per run: counters start at 0.
    os.environ[MULTIPROC_ENV] = metrics_dir
    supervisor = _Supervisor(batch_max, workers, settings.bridge_name, metrics_dir, stop)
    with ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, metrics_dir, ignore_errors=True)
        if settings.metrics_port is not None:
            online = OnlineDevices(Database(settings.database_url.get_secret_value()))
            cleanup.callback(online.close)
            registry = bridge_registry(metrics_dir, online)
            cleanup.enter_context(
                serving(settings.metrics_host, settings.metrics_port, registry, supervisor.ready)
            )
        for index in range(workers):
            supervisor.spawn(index)
        for name, index in _retired(settings, workers, stop):
            log.info("bridge.draining_retired_session", worker=index, legacy=name is None)
            supervisor.spawn(index, drain=True, name=name)
        while not stop.wait(0.5):
            supervisor.check()
            if workers == 0 and not supervisor.drains:
                log.info("bridge.member_retired", name=settings.bridge_name)
                break  # `--workers 0`: every session of this member is drained and ended
        supervisor.stop()


def _parse(client_id: str, own: str) -> tuple[str | None, int]:
    """(member name or None for a pre-name session, index) of one of our session ids."""
    rest = client_id.removeprefix(SESSION_PREFIX)
    if rest.isdigit():
        return None, int(rest)
    return own, int(rest.removeprefix(f"{own}-"))


def owned(client_ids: list[str], name: str) -> list[tuple[str | None, int]]:
    """Sessions member *name* answers for: its own, and the pre-name ones (``qnect-bridge-N``)."""
    mine: list[tuple[str | None, int]] = []
    for client_id in client_ids:
        if not client_id.startswith(SESSION_PREFIX):
            continue
        rest = client_id.removeprefix(SESSION_PREFIX)
        if rest.isdigit():
            mine.append((None, int(rest)))
        elif rest.startswith(f"{name}-") and rest.removeprefix(f"{name}-").isdigit():
            mine.append((name, int(rest.removeprefix(f"{name}-"))))
    return mine


def _retired(
    settings: Settings, workers: int, stop: threading.Event
) -> list[tuple[str | None, int]]:
    """This member's registered sessions beyond the *workers* now configured, and pre-name ones.

    Other members' sessions are theirs: draining one would take it over from a live peer.
    """
    database = Database(settings.database_url.get_secret_value())
    ids: list[str] = []
    for attempt in stamina.retry_context(on=Unavailable, attempts=None, timeout=None):
        with attempt:
            if stop.is_set():
                break
            ids = database.sessions()
    database.close()
    return sorted(
        (
            (name, index)
            for name, index in owned(ids, settings.bridge_name)
            if name is None or index >= workers
        ),
        key=lambda s: (s[0] or "", s[1]),
    )


def worker_pids(supervisor_pid: int) -> list[int]:
    """Live worker processes of a ``qnect bridge`` supervisor (read from /proc).

    Skips multiprocessing's resource tracker and zombies (a killed worker stays one until the
    supervisor reaps it).
    """
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(ppid) == supervisor_pid and state != "Z" and b"resource_tracker" not in cmdline:
            pids.append(int(entry.name))
    return pids
