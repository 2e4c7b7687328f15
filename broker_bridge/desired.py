"""Desired state on the bridge workers: deliver what the app set, sealed, until confirmed.

Each worker runs ``tick`` every ``DesiredConfig.tick_s``: it claims the due deliveries
(``device_registry.postgres_shadow``: newest version only, each claimed by one worker with
``SKIP LOCKED``; due again after the retry period, or at once when the device re-keyed, i.e.
reconnected) and seals each under the device's current session downlink key. Frames go out
after the claim committed, at QoS 0 and not retained: a lost frame is claimed again after the
retry period, and the broker keeps nothing (retained plaintext would outlive every session).
The device applies the values; the report carrying them confirms the version (the
``device_shadow_confirm`` trigger), which ends the deliveries.

Does not own: the frame format (``broker_bridge.desired_frames``) or the SQL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog

from broker_bridge.desired_frames import desired_topic, seal_desired
from crypto.device_keys import MAX_COUNTER
from device_registry.postgres_shadow import DueDesired, claim_desired, claim_retained
from telemetry.directory import Directory

log = structlog.get_logger("broker_bridge.desired")

Random = Callable[[int], bytes]
Publish = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class DesiredConfig:
    """Tunables of desired-state delivery on a worker (from ``QNECT_DESIRED_*``)."""

    tick_s: float = 1.0  # an app change reaches an online device within about this
    # Sent, not confirmed this long: send again. Devices report at least every few seconds to
    # minutes; a shorter period would mostly resend frames whose confirmation is on its way.
    retry: timedelta = field(default=timedelta(seconds=30))


@dataclass(frozen=True, slots=True)
class DesiredTick:
    """What one tick sends: sealed frames, and topics whose retained message is deleted."""

    frames: Publish
    clear_retained: list[str]


class DesiredService:
    """One worker's desired-state side; the database connection and directory are the worker's."""

    def __init__(self, config: DesiredConfig, rand: Random) -> None:
        self.config = config
        # Counters must be unique under a device's downlink key, which every worker shares:
        # a random 63-bit start, then +1 (as the worker's receipts).
        self._counter = int.from_bytes(rand(8), "big") >> 1

    def tick(self, conn: Any, directory: Directory, *, now: datetime) -> DesiredTick:
        """Claim due deliveries and retained clean-ups; returns what to publish.

        Raises:
            RegistryUnavailable: the database refused or cannot be reached.
        """
        cleared = [desired_topic(d) for d in claim_retained(conn)]
        due = claim_desired(conn, now=now, retry=self.config.retry)
        if not due:
            return DesiredTick([], cleared)
        ids = {d.device_id for d in due}
        epochs = {(d.device_id, d.epoch) for d in due}
        directory.prepare(ids, epochs, (), now_ms=int(now.timestamp() * 1000))
        frames = [f for d in due if (f := self._seal(d, directory)) is not None]
        log.info("bridge.desired_sent", due=len(due), sent=len(frames))
        return DesiredTick(frames, cleared)

    def _seal(self, due: DueDesired, directory: Directory) -> tuple[str, bytes] | None:
        if directory.device(due.device_id) is None:
            return None  # revoked, or keys unreadable
        session = directory.session(due.device_id, due.epoch)
        if session is None:
            return None  # no such session: claimed again after the retry period
        self._counter = self._counter % MAX_COUNTER + 1
        frame = seal_desired(
            session[0], due.device_id, due.version, due.desired, counter=self._counter
        )
        return desired_topic(due.device_id), frame
