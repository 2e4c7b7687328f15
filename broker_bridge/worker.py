"""A bridge worker: MQTT batches in, one committed transaction per batch, acks after commit.

Loop: take a batch from the inbox → run the pipeline → write it in one transaction → commit →
publish key-exchange answers and storage receipts → PUBACK every message of the batch. A
database outage leaves the batch unacked and in memory; the worker reconnects with jittered
backoff and writes it again (the ledger makes the retry idempotent). SIGTERM finishes and acks
the batch in hand, then returns.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import stamina
import structlog

from broker_bridge.desired import DesiredConfig, DesiredService
from broker_bridge.metrics import WorkerMetrics
from broker_bridge.mqtt import BridgeClient
from broker_bridge.ota import OtaConfig, OtaService
from broker_bridge.receipts import receipt_topic, seal_receipt
from crypto.device_keys import MAX_COUNTER, encode_kx_response
from crypto.keys import KekRing
from crypto.rekey import RekeyOffer, offer_topic, seal_offer
from device_registry.errors import RegistryUnavailable
from device_registry.postgres_rekey import DueOffer, claim_offers, destroy_expired
from telemetry.directory import DeviceSource, Directory
from telemetry.errors import StorageFailed, Unavailable
from telemetry.pipeline import AcceptedFrame, Inbound, Outcome, Pipeline, PipelineConfig, Reject
from telemetry.postgres import Database, Written

log = structlog.get_logger("broker_bridge.worker")

DRAIN_QUIET_S = 2.0  # a retired session is empty once the broker sent nothing for this long

# Partitions are made two days ahead, so hourly would do; every 10 minutes is cheap.
MAINTENANCE_EVERY_S = 600.0
SEAL_EVERY_S = 30.0  # audit seal and presence sweep cadence (events wait at most this + 2 s)
OFFER_EVERY_S = 1.0  # root-key offers staged by `qnect keys rotate` go out within about this


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Tunables of a worker."""

    batch_max: int = 4000  # fewer, larger batches: per-device work (state, receipts) is per batch
    linger_s: float = 0.02  # waiting to fill a batch trades latency for fewer commits
    directory_ttl_ms: int = 2000
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    presence_stale: timedelta = timedelta(minutes=15)  # silent this long: swept offline
    ota: OtaConfig = field(default_factory=OtaConfig)
    desired: DesiredConfig = field(default_factory=DesiredConfig)


class Worker:
    """Owns one MQTT client and one database connection."""

    def __init__(
        self,
        client: BridgeClient,
        database: Database,
        source: DeviceSource,
        ring: KekRing,
        config: WorkerConfig,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._client = client
        self._db = database
        self._config = config
        self._directory = Directory(source, ring, ttl_ms=config.directory_ttl_ms)
        self._pipeline = Pipeline(self._directory, config.pipeline, os.urandom)
        self._next_maintenance = 0.0
        self._next_seal = 0.0
        self._next_offer = 0.0
        self._ota = OtaService(config.ota, os.urandom)
        self._next_ota = 0.0
        self._desired = DesiredService(config.desired, os.urandom)
        self._next_desired = 0.0
        # Receipt counters must be unique under a device's downlink key, which all workers
        # share: a random 63-bit start per worker, then +1; two workers' ranges of n receipts
        # overlap with probability about n / 2**62.
        self._receipt_counter = int.from_bytes(os.urandom(8), "big") >> 1
        self.batches = 0
        self._metrics = metrics or WorkerMetrics(0)
        self._counted = (0, 0, 0)  # (connections, cache hits, cache misses) already exported

    def run(self, stop: threading.Event, *, drain: bool = False) -> None:
        """Process batches until *stop* is set; the batch in hand is finished and acked.

        With *drain*, stop once the session has been empty for ``DRAIN_QUIET_S`` and end it.
        """
        self._client.start()
        quiet_since: float | None = None
        try:
            while not stop.is_set():
                batch = self._client.take(self._config.batch_max, self._config.linger_s, 0.25)
                self._metrics.inbox_depth.set(self._client.pending() + len(batch))
                if batch:
                    self._handle(batch, stop)
                    quiet_since = None
                    self._metrics.inbox_depth.set(self._client.pending())
                elif drain and self._client.idle():
                    quiet_since = quiet_since or time.monotonic()
                    if time.monotonic() - quiet_since > DRAIN_QUIET_S:
                        break
                elif time.monotonic() >= self._next_maintenance:
                    self._maintain()
                if time.monotonic() >= self._next_seal:
                    self._seal()
                if time.monotonic() >= self._next_offer:
                    self._offer()
                if time.monotonic() >= self._next_ota:
                    self._ota_tick()
                if time.monotonic() >= self._next_desired:
                    self._desired_tick()
                self._export_counts()
        finally:
            self._client.stop(end_session=drain and not stop.is_set())
            self._db.close()

    def _process(self, batch: list[Inbound]) -> tuple[Written, Outcome]:
        self._db.open()
        if time.monotonic() >= self._next_maintenance:
            self._maintain()
        now = datetime.now(UTC)
        outcome = self._pipeline.process(batch, now_ms=int(now.timestamp() * 1000))
        started = time.perf_counter()
        written = self._db.write(batch, outcome, now=now)
        self._metrics.commit_seconds.observe(time.perf_counter() - started)  # committed only
        return written, outcome

    def _export_counts(self) -> None:
        """Move what the client and the cache counted since the last call into the metrics."""
        connections = self._client.connections
        hits, misses = self._directory.hits, self._directory.misses
        before = self._counted
        if connections > 1:  # the first connection is not a reconnection
            self._metrics.reconnects.inc(connections - max(before[0], 1))
        self._metrics.cache_hits.inc(hits - before[1])
        self._metrics.cache_misses.inc(misses - before[2])
        self._counted = (max(connections, 1), hits, misses)

    def _write(self, batch: list[Inbound], stop: threading.Event) -> tuple[Written, Outcome] | None:
        """Process and commit, retrying while the database is away; None if told to stop."""
        for attempt in stamina.retry_context(
            on=(Unavailable, RegistryUnavailable), attempts=None, timeout=None, wait_max=5.0
        ):
            with attempt:
                if stop.is_set() and attempt.num > 1:
                    return None  # unacked: the broker redelivers to the next session
                try:
                    return self._process(batch)
                except (Unavailable, RegistryUnavailable) as exc:
                    log.warning("bridge.db_unavailable", error=str(exc), batch=len(batch))
                    raise
        raise AssertionError  # pragma: no cover - attempts=None retries forever

    def _handle(self, batch: list[Inbound], stop: threading.Event) -> None:
        started = time.perf_counter()
        try:
            result = self._write(batch, stop)
        except StorageFailed as exc:
            # The usual cause is a missing partition: make them, then try the batch once more
            # before writing message by message to find the one the database refuses.
            log.warning("bridge.batch_refused", sqlstate=exc.sqlstate, batch=len(batch))
            self._maintain()
            try:
                result = self._write(batch, stop)
            except StorageFailed:
                result = self._isolate(batch)
        if result is None:
            return
        written, outcome = result
        self._after_commit(written)
        acked = self._client.ack(batch)
        self.batches += 1
        self._metrics.committed(batch, outcome, written)
        log.info(
            "bridge.batch",
            messages=len(batch),
            stored=len(written.stored),
            duplicates=len(written.duplicates),
            rejected=len(outcome.rejects) + len(written.kx_rejects),
            key_exchanges=len(written.sessions),
            acked=acked,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )

    def _isolate(self, batch: list[Inbound]) -> tuple[Written, Outcome]:
        """Write messages one by one after a data error, quarantining any that fails alone."""
        total, outcome_all = Written(), Outcome()
        for msg in batch:
            for attempt in stamina.retry_context(
                on=(Unavailable, RegistryUnavailable), attempts=None, timeout=None
            ):
                with attempt:
                    try:
                        written, outcome = self._process([msg])
                    except StorageFailed as exc:
                        outcome = Outcome(
                            rejects=[
                                Reject(
                                    0,
                                    None,
                                    "other",
                                    "storage_error",
                                    exc.sqlstate or "",
                                    len(msg.payload),
                                )
                            ]
                        )
                        written = self._db.write([msg], outcome, now=datetime.now(UTC))
            total.stored += written.stored
            total.duplicates += written.duplicates
            total.sessions += written.sessions
            outcome_all.rejects += outcome.rejects
        return total, outcome_all

    def _after_commit(self, written: Written) -> None:
        now_ms = int(time.time() * 1000)
        for commit in written.rotated:
            self._directory.rotated(commit.device_id, until=commit.until, now_ms=now_ms)
        if written.rotated:
            log.info("bridge.root_keys_rotated", devices=len(written.rotated))
        for kx, session in written.sessions:
            if self._directory.device(kx.device_id) is None:
                continue
            self._directory.rekeyed(session, since=datetime.now(UTC), now_ms=now_ms)
            answer = encode_kx_response(
                kx.kx_key,
                kx.device_id,
                kx.request,
                epoch=session.epoch,
                server_nonce=kx.server_nonce,
            )
            self._client.publish(f"devices/{kx.device_id}/down/kx", answer, qos=1)
        self._receipts(written.stored + written.duplicates)
        if written.ota:
            try:
                assert self._db.conn is not None  # noqa: S101 - the batch was just written
                answers = self._ota.answers(self._db.conn, self._directory, written.ota)
            except RegistryUnavailable:
                self._db.close()  # the devices ask again when no chunk comes
                return
            self._client.publish_many(answers)

    def _ota_tick(self) -> None:
        """Move OTA campaigns on and send the offers that are due."""
        self._next_ota = time.monotonic() + self._config.ota.tick_s
        try:
            self._db.open()
            assert self._db.conn is not None  # noqa: S101 - open() connected
            offers = self._ota.tick(self._db.conn, self._directory, now=datetime.now(UTC))
        except (Unavailable, RegistryUnavailable):
            self._db.close()
            return
        self._client.publish_many(offers)  # QoS 0: an unanswered offer is claimed again

    def _desired_tick(self) -> None:
        """Send the desired states that are due, sealed; delete old plaintext retained ones."""
        self._next_desired = time.monotonic() + self._config.desired.tick_s
        try:
            self._db.open()
            assert self._db.conn is not None  # noqa: S101 - open() connected
            due = self._desired.tick(self._db.conn, self._directory, now=datetime.now(UTC))
        except (Unavailable, RegistryUnavailable):
            self._db.close()
            return
        for topic in due.clear_retained:  # an empty retained message deletes the old one
            self._client.publish(topic, b"", qos=1, retain=True)
        self._client.publish_many(due.frames)  # QoS 0: an unconfirmed state is claimed again

    def _receipts(self, frames: Sequence[AcceptedFrame]) -> None:
        by_session: dict[tuple[str, int], list[int]] = defaultdict(list)
        for f in frames:
            by_session[(f.device_id, f.epoch)].append(f.counter)
        receipts = []
        for (device_id, epoch), counters in by_session.items():
            session = self._directory.session(device_id, epoch)
            if session is None:
                continue
            self._receipt_counter = self._receipt_counter % MAX_COUNTER + 1
            payload = seal_receipt(session[0], device_id, counters, counter=self._receipt_counter)
            receipts.append((receipt_topic(device_id), payload))
        self._client.publish_many(receipts)

    def _seal(self) -> None:
        """Seal the audit log, sweep presence, destroy root keys whose grace ended."""
        self._next_seal = time.monotonic() + SEAL_EVERY_S
        now = datetime.now(UTC)
        try:
            sealed = self._db.seal_audit(now)
            swept = self._db.sweep_presence(now, self._config.presence_stale)
            assert self._db.conn is not None  # noqa: S101 - the calls above connected
            destroyed = destroy_expired(self._db.conn, now=now)
        except (Unavailable, RegistryUnavailable):
            self._db.close()
            return
        if sealed or swept or destroyed:
            log.info(
                "bridge.periodic",
                audit_sealed=sealed,
                presence_swept=swept,
                root_keys_destroyed=destroyed,
            )

    def _offer(self) -> None:
        """Send the root-key offers that are due (each claimed by one worker)."""
        self._next_offer = time.monotonic() + OFFER_EVERY_S
        now = datetime.now(UTC)
        try:
            self._db.open()
            assert self._db.conn is not None  # noqa: S101 - open() connected
            due = claim_offers(self._db.conn, now=now)
            if due:
                now_ms = int(now.timestamp() * 1000)
                ids = {d.device_id for d in due}
                epochs = {(d.device_id, d.epoch) for d in due}
                self._directory.prepare(ids, epochs, (), now_ms=now_ms, refresh=ids)
        except (Unavailable, RegistryUnavailable):
            self._db.close()
            return
        offers = [o for d in due if (o := self._seal_offer(d)) is not None]
        self._client.publish_many(offers)  # QoS 0: an unanswered offer is claimed again
        if due:
            log.info("bridge.root_key_offers", due=len(due), sent=len(offers))

    def _seal_offer(self, due: DueOffer) -> tuple[str, bytes] | None:
        device = self._directory.device(due.device_id)
        session = self._directory.session(due.device_id, due.epoch)
        if device is None or session is None or device.pending is None:
            return None  # revoked, or no session yet: offered again after the retry delay
        pending = device.pending
        if pending.key is None or pending.version != due.to_version:
            return None
        offer = RekeyOffer(device.drk_version, pending.version, pending.key)
        self._receipt_counter = self._receipt_counter % MAX_COUNTER + 1
        frame = seal_offer(session[0], due.device_id, offer, counter=self._receipt_counter)
        return offer_topic(due.device_id), frame

    def _maintain(self) -> None:
        self._next_maintenance = time.monotonic() + MAINTENANCE_EVERY_S
        try:
            summary = self._db.maintain(datetime.now(UTC))
        except Unavailable:
            self._next_maintenance = time.monotonic() + 5.0
            return
        if summary is not None:
            log.info("bridge.maintenance", **summary)
