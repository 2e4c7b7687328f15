"""Process wiring of bridge workers: one process per worker, supervised and restarted."""

from __future__ import annotations

import multiprocessing
import signal
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import FrameType

import stamina
import structlog

from broker_bridge.mqtt import BridgeClient
from broker_bridge.worker import Worker, WorkerConfig
from device_registry.postgres import PostgresDeviceSource
from privacy.audit import AuditKeys
from qnect.logs import configure
from qnect.settings import Settings
from telemetry.errors import Unavailable
from telemetry.pipeline import PipelineConfig
from telemetry.postgres import Database

log = structlog.get_logger("qnect.bridge")
RESTART_DELAY_S = 1.0  # a crashing worker is restarted; its persistent session keeps its share


@dataclass(frozen=True, slots=True)
class BridgeOptions:
    """What a worker process needs besides the environment."""

    index: int
    batch_max: int = 4000
    drain: bool = False  # a session of a retired worker: empty it, then end it
    workers: int = 1  # how many share the subscription: each enforces 1/workers of a rate


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
    client = BridgeClient(
        settings.bridge_address(), f"qnect-bridge-{options.index}", drain=options.drain
    )
    config = WorkerConfig(
        batch_max=options.batch_max,
        pipeline=PipelineConfig(
            epoch_grace_ms=int(settings.epoch_grace_s * 1000),
            drk_grace_ms=int(settings.drk_grace_s * 1000),
            rates=settings.rate_config().per_worker(options.workers),
        ),
        presence_stale=timedelta(seconds=settings.presence_stale_s),
    )
    worker = Worker(
        client, database, PostgresDeviceSource(lambda: database.conn), settings.kek_ring(), config
    )
    client_id = f"qnect-bridge-{options.index}"
    for attempt in stamina.retry_context(on=Unavailable, attempts=None, timeout=None):
        with attempt:
            database.register_session(client_id)
    log.info("bridge.worker_started", worker=options.index, drain=options.drain)
    worker.run(stop, drain=options.drain)
    if options.drain and not stop.is_set():
        database.retire_session(client_id)
        database.close()
    log.info("bridge.worker_stopped", worker=options.index, batches=worker.batches)


class _Supervisor:
    """Keeps worker processes (and drains of retired sessions) running."""

    def __init__(self, batch_max: int, workers: int) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._batch_max = batch_max
        self._workers = workers
        self.workers: dict[int, multiprocessing.process.BaseProcess] = {}
        self.drains: dict[int, multiprocessing.process.BaseProcess] = {}

    def spawn(self, index: int, *, drain: bool = False) -> None:
        options = BridgeOptions(index, self._batch_max, drain=drain, workers=self._workers)
        proc = self._ctx.Process(target=run_worker, args=(options,), name=f"worker-{index}")
        proc.start()
        (self.drains if drain else self.workers)[index] = proc

    def check(self) -> None:
        for index, proc in list(self.drains.items()):
            if not proc.is_alive():
                del self.drains[index]
                if proc.exitcode != 0:
                    self.spawn(index, drain=True)
        for index, proc in list(self.workers.items()):
            if not proc.is_alive():
                log.warning("bridge.worker_died", worker=index, exitcode=proc.exitcode)
                time.sleep(RESTART_DELAY_S)
                self.spawn(index)

    def stop(self) -> None:
        everyone = [*self.workers.values(), *self.drains.values()]
        for proc in everyone:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: the worker finishes and acks its batch
        for proc in everyone:
            proc.join(30)


def supervise(workers: int, stop: threading.Event, batch_max: int = 4000) -> None:
    """Run *workers* processes, restarting any that dies, until *stop* is set.

    Sessions of workers beyond *workers* left by a larger deployment are drained and ended,
    since the broker keeps routing their share of the shared subscription to them.
    """
    supervisor = _Supervisor(batch_max, workers)
    for index in range(workers):
        supervisor.spawn(index)
    for index in _retired(workers):
        log.info("bridge.draining_retired_session", worker=index)
        supervisor.spawn(index, drain=True)
    while not stop.wait(0.5):
        supervisor.check()
    supervisor.stop()


def _retired(workers: int) -> list[int]:
    """Indices of registered bridge sessions beyond the *workers* now configured."""
    settings = Settings()  # type: ignore[call-arg]
    database = Database(settings.database_url.get_secret_value())
    for attempt in stamina.retry_context(on=Unavailable, attempts=None, timeout=None):
        with attempt:
            ids = database.sessions()
    database.close()
    indices = [int(c.rsplit("-", 1)[1]) for c in ids if c.startswith("qnect-bridge-")]
    return sorted(i for i in indices if i >= workers)


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
