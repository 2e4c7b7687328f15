"""Prometheus series of one bridge worker; ``deploy/metrics.md`` is the contract.

Owns the metric objects of a worker and the translation of a committed batch into them. Does not
own the exposition: the ``qnect bridge`` supervisor serves the series of all its workers from
prometheus-client's multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``, set before the workers
start), so a worker only records. Label values come from fixed sets (results, reject codes,
worker indices); never a device id, a topic or anything from a payload.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from telemetry.pipeline import Inbound, Outcome
from telemetry.postgres import Written

# Frames per committed batch, up to the batch cap (4000); most live batches are small.
BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 4000)
# One batch's storage transaction: the bench's p99 publish-to-commit was ~0.25 s at half the
# drain rate, so the interesting range is a few ms to a few seconds (a slow or restarting DB).
COMMIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
NO_REASON = "none"  # the reason label of frames that were not rejected


class WorkerMetrics:
    """The series one worker process writes (created per worker, not at import)."""

    def __init__(self, worker: int, registry: CollectorRegistry | None = None) -> None:
        """Create the series for worker *worker*.

        Args:
            worker: the worker's index (the ``worker`` label).
            registry: where to register them; None in worker processes, whose values the
                supervisor reads from the multiprocess directory.
        """
        label = str(worker)
        self.frames = Counter(
            "qnect_ingest_frames",
            "Uplink frames handled, by result and reject reason",
            ["result", "reason"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "qnect_batch_size",
            "Frames per committed batch",
            ["worker"],
            buckets=BATCH_BUCKETS,
            registry=registry,
        ).labels(label)
        self.commit_seconds = Histogram(
            "qnect_commit_seconds",
            "Time of one batch's storage transaction, first write to COMMIT",
            ["worker"],
            buckets=COMMIT_BUCKETS,
            registry=registry,
        ).labels(label)
        self.inbox_depth = Gauge(
            "qnect_inbox_depth",
            "Frames received from the broker and not yet committed and acknowledged",
            ["worker"],
            multiprocess_mode="livesum",  # a dead worker's last value must not linger
            registry=registry,
        ).labels(label)
        self.reconnects = Counter(
            "qnect_broker_reconnects",
            "Reconnections of the worker's MQTT session",
            ["worker"],
            registry=registry,
        ).labels(label)
        self.cache_hits = Counter(
            "qnect_key_cache_hits",
            "Device and session key lookups answered from the worker's cache",
            ["worker"],
            registry=registry,
        ).labels(label)
        self.cache_misses = Counter(
            "qnect_key_cache_misses",
            "Device and session key lookups that went to the database",
            ["worker"],
            registry=registry,
        ).labels(label)
        self.frames.labels("accepted", NO_REASON)  # the series exist from the start, at 0
        self.inbox_depth.set(0)
        self.reconnects.inc(0)

    def committed(self, batch: Sequence[Inbound], outcome: Outcome, written: Written) -> None:
        """Count a committed batch the way ``qnect stats`` counts the tables.

        ``accepted`` is a frame new to the ledger; a reject is one quarantine occurrence (a
        stored frame sent again is ``replay``); a broker redelivery of a frame already stored
        is ``duplicate`` (the quarantine does not count it either). Key exchanges and last
        wills are not frames.
        """
        self.batch_size.observe(len(batch))
        if written.stored:
            self.frames.labels("accepted", NO_REASON).inc(len(written.stored))
        redelivered = sum(1 for f in written.duplicates if batch[f.index].dup)
        if redelivered:
            self.frames.labels("duplicate", NO_REASON).inc(redelivered)
        reasons = Tally(r.code for r in outcome.rejects + written.kx_rejects)
        reasons["replay"] += len(written.duplicates) - redelivered
        for reason, n in reasons.items():
            if n:
                self.frames.labels("rejected", reason).inc(n)
