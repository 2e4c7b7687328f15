"""Process wiring of bridge workers: one process per worker, supervised and restarted."""

from __future__ import annotations

import multiprocessing
import signal
import threading
import time
from dataclasses import dataclass
from types import FrameType

import structlog

from broker_bridge.mqtt import BridgeClient, BrokerAddress
from broker_bridge.worker import Worker, WorkerConfig
from device_registry.postgres import PostgresDeviceSource
from qnect.logs import configure
from qnect.settings import Settings
from telemetry.pipeline import PipelineConfig
from telemetry.postgres import Database

log = structlog.get_logger("qnect.bridge")
RESTART_DELAY_S = 1.0  # a crashing worker is restarted; its persistent session keeps its share


@dataclass(frozen=True, slots=True)
class BridgeOptions:
    """What a worker process needs besides the environment."""

    index: int
    batch_max: int = 2000


def run_worker(options: BridgeOptions) -> None:
    """Entry point of one worker process: run until SIGTERM/SIGINT."""
    configure()
    settings = Settings()  # type: ignore[call-arg]  # read from the environment
    stop = threading.Event()

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    database = Database(settings.database_url.get_secret_value())
    client = BridgeClient(BrokerAddress.parse(settings.mqtt_url), f"qnect-bridge-{options.index}")
    config = WorkerConfig(
        batch_max=options.batch_max,
        pipeline=PipelineConfig(epoch_grace_ms=int(settings.epoch_grace_s * 1000)),
    )
    worker = Worker(
        client, database, PostgresDeviceSource(lambda: database.conn), settings.keks(), config
    )
    log.info("bridge.worker_started", worker=options.index)
    worker.run(stop)
    log.info("bridge.worker_stopped", worker=options.index, batches=worker.batches)


def supervise(workers: int, stop: threading.Event, batch_max: int = 2000) -> None:
    """Run *workers* processes, restarting any that dies, until *stop* is set."""
    ctx = multiprocessing.get_context("spawn")
    procs: dict[int, multiprocessing.process.BaseProcess] = {}

    def spawn(i: int) -> None:
        proc = ctx.Process(target=run_worker, args=(BridgeOptions(i, batch_max),), name=f"w{i}")
        proc.start()
        procs[i] = proc

    for i in range(workers):
        spawn(i)
    while not stop.wait(0.5):
        for i, proc in list(procs.items()):
            if not proc.is_alive():
                log.warning("bridge.worker_died", worker=i, exitcode=proc.exitcode)
                time.sleep(RESTART_DELAY_S)
                spawn(i)
    for proc in procs.values():
        if proc.pid is not None and proc.is_alive():
            proc.terminate()  # SIGTERM: the worker finishes and acks its batch
    for proc in procs.values():
        proc.join(30)
