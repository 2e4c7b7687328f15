"""OTA on the bridge workers: the campaign controller, offers, and chunk answers.

Each worker runs ``tick`` every ``OtaConfig.tick_s`` (the controller step runs in one worker at
a time; offers are claimed with ``SKIP LOCKED``) and, after each committed batch, answers the
progress reports in it: a ``downloading`` report at offset ``o`` gets the chunk at ``o``.
Answers are sent after COMMIT and at QoS 0: a lost chunk is asked for again by the device
(it re-sends its offset when nothing arrives), a lost offer is claimed again after the retry
interval, so nothing here needs to be remembered across a worker restart.

Does not own: the state machine (``device_registry.ota``), the SQL
(``device_registry.postgres_ota``) or the message formats (``broker_bridge.ota_frames``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog

from broker_bridge.ota_frames import Cancel, Chunk, Message, Offer, ota_topic, seal_message
from crypto.device_keys import MAX_COUNTER
from device_registry.postgres_ota import (
    DueOtaOffer,
    OtaAnswer,
    artifact_content,
    claim_offers,
    control,
)
from telemetry.directory import Directory

log = structlog.get_logger("broker_bridge.ota")

ARTIFACT_CACHE = 4  # artifacts kept in memory per worker: campaigns running at once are few
Random = Callable[[int], bytes]
Publish = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class OtaConfig:
    """Tunables of OTA on a worker (from ``QNECT_OTA_*``)."""

    tick_s: float = 1.0  # controller and offer cadence
    offer_retry: timedelta = field(default=timedelta(seconds=30))  # re-offer a silent device
    device_timeout: timedelta = field(default=timedelta(minutes=15))  # no progress: timed_out
    chunk_bytes: int = 16 * 1024  # downlink chunk size (the uplink size cap does not apply)


class OtaService:
    """One worker's OTA side; the database connection and directory are the worker's."""

    def __init__(self, config: OtaConfig, rand: Random) -> None:
        self.config = config
        # Counters must be unique under a device's downlink key, which every worker shares:
        # a random 63-bit start, then +1 (as the worker's receipts).
        self._counter = int.from_bytes(rand(8), "big") >> 1
        self._artifacts: OrderedDict[int, bytes] = OrderedDict()

    def tick(self, conn: Any, directory: Directory, *, now: datetime) -> Publish:
        """Run the controller, claim due offers; returns the sealed offers to publish.

        Raises:
            RegistryUnavailable: the database refused or cannot be reached.
        """
        moved = control(conn, now=now, timeout=self.config.device_timeout)
        for campaign_id, decision in moved.items():
            log.info("bridge.ota_campaign", campaign_id=campaign_id, decision=decision.value)
        due = claim_offers(conn, now=now, retry=self.config.offer_retry)
        if not due:
            return []
        ids = {d.device_id for d in due}
        epochs = {(d.device_id, d.epoch) for d in due}
        directory.prepare(ids, epochs, (), now_ms=int(now.timestamp() * 1000))
        offers = [o for d in due if (o := self._offer(d, directory)) is not None]
        log.info("bridge.ota_offers", due=len(due), sent=len(offers))
        return offers

    def _offer(self, due: DueOtaOffer, directory: Directory) -> tuple[str, bytes] | None:
        offer = Offer(due.campaign_id, due.manifest, due.signature, self.config.chunk_bytes)
        return self._seal(directory, due.device_id, due.epoch, offer)

    def answers(self, conn: Any, directory: Directory, todo: Sequence[OtaAnswer]) -> Publish:
        """Chunks and cancels for the reports of a committed batch.

        Raises:
            RegistryUnavailable: an artifact could not be loaded.
        """
        out = []
        for answer in todo:
            message: Message
            if answer.cancel:
                message = Cancel(answer.campaign_id)
            else:
                content = self._content(conn, answer.artifact_id)
                if content is None:
                    continue
                end = answer.offset + self.config.chunk_bytes
                message = Chunk(answer.campaign_id, answer.offset, content[answer.offset : end])
            sealed = self._seal(directory, answer.device_id, answer.epoch, message)
            if sealed is not None:
                out.append(sealed)
        return out

    def _content(self, conn: Any, artifact_id: int) -> bytes | None:
        content = self._artifacts.get(artifact_id)
        if content is None:
            content = artifact_content(conn, artifact_id)
            if content is None:
                return None
            self._artifacts[artifact_id] = content
            if len(self._artifacts) > ARTIFACT_CACHE:
                self._artifacts.popitem(last=False)
        self._artifacts.move_to_end(artifact_id)
        return content

    def _seal(
        self, directory: Directory, device_id: str, epoch: int, message: Message
    ) -> tuple[str, bytes] | None:
        session = directory.session(device_id, epoch)
        if session is None:
            return None  # no such session any more: the device re-keyed; it asks again
        self._counter = self._counter % MAX_COUNTER + 1
        frame = seal_message(session[0], device_id, message, counter=self._counter)
        return ota_topic(device_id), frame
