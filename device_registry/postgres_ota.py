"""PostgreSQL side of running OTA campaigns: controller, offers, progress (bridge workers).

* **control** (one worker at a time, advisory lock, every ``QNECT_OTA_TICK_S``): devices with
  no progress for the device timeout become ``timed_out``; pending devices of a released wave
  nobody could reach in that time become ``skipped``; then each running campaign's current
  wave is judged (``device_registry.ota.decide``): halt, next wave, complete, or wait;
* **claim offers** (``SKIP LOCKED``: each offer goes out through one worker): pending devices
  of released waves of running campaigns, and devices under way that made no progress for the
  retry interval (a device that rebooted and lost the offer gets it again, and resumes), only
  while they are online;
* **apply reports** (inside the ingest batch's transaction, before the broker is acked): rows
  locked in a fixed order (no deadlock between workers), moved by ``ota.advance``; the answer
  for each report (the next chunk, or a cancel) is sent after COMMIT.

Does not own: the message formats (``broker_bridge.ota_frames``), campaign creation and
status changes (``postgres_firmware``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from device_registry.errors import RegistryUnavailable
from device_registry.ota import (
    ACTIVE,
    IN_FLIGHT,
    TERMINAL,
    CampaignStatus,
    Decision,
    DeviceOta,
    ProgressReport,
    advance,
    decide,
    wave_counts,
)

Conn = psycopg.Connection[Any]
_CONTROL_LOCK = 0x716E6F74  # advisory lock: one campaign controller at a time
OFFER_BATCH = 500  # offers one worker claims per pass: one short transaction
_ACTIVE = sorted(s.value for s in ACTIVE)
_IN_FLIGHT = sorted(s.value for s in IN_FLIGHT)
_RANK = {s: i for i, s in enumerate(DeviceOta)}  # tie-break among reports in one batch


@dataclass(frozen=True, slots=True)
class DueOtaOffer:
    """An offer a worker has claimed: seal it under the device's current session."""

    device_id: str
    epoch: int
    campaign_id: int
    artifact_id: int
    manifest: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class OtaAnswer:
    """What to send a device after the batch with its report committed."""

    device_id: str
    epoch: int
    campaign_id: int
    cancel: bool  # else: the chunk at ``offset`` of ``artifact_id``
    artifact_id: int = 0
    offset: int = 0
    size: int = 0


def control(conn: Conn, *, now: datetime, timeout: timedelta) -> dict[int, Decision]:
    """Time out stale devices and move campaigns on; {campaign: decision} for those that moved.

    Raises:
        RegistryUnavailable: the database refused or cannot be reached.
    """
    try:
        with conn.transaction():
            locked = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (_CONTROL_LOCK,))
            row = locked.fetchone()
            if not row or not row[0]:
                return {}
            _time_out(conn, now - timeout, now)
            return _judge(conn, now)
    except psycopg.Error as exc:
        raise RegistryUnavailable(type(exc).__name__) from exc


def _time_out(conn: Conn, cutoff: datetime, now: datetime) -> None:
    conn.execute(
        "UPDATE ota_devices SET state = 'timed_out', reason = 'timeout', updated_at = %s "
        "WHERE state = ANY(%s) AND updated_at < %s",
        (now, _IN_FLIGHT, cutoff),
    )
    conn.execute(
        "UPDATE ota_devices o SET state = 'skipped', reason = 'timeout', updated_at = %s "
        "FROM ota_campaigns c WHERE c.campaign_id = o.campaign_id AND c.status = 'running' "
        "AND o.state = 'pending' AND o.wave <= c.current_wave AND c.wave_started_at < %s",
        (now, cutoff),
    )


def _judge(conn: Conn, now: datetime) -> dict[int, Decision]:
    running = conn.execute(
        "SELECT campaign_id, current_wave, cardinality(waves), failure_threshold "
        "FROM ota_campaigns WHERE status = 'running' ORDER BY campaign_id FOR UPDATE"
    ).fetchall()
    moved: dict[int, Decision] = {}
    for campaign_id, wave, waves, threshold in running:
        rows = conn.execute(
            "SELECT state, count(*) FROM ota_devices WHERE campaign_id = %s AND wave = %s "
            "GROUP BY state",
            (campaign_id, wave),
        ).fetchall()
        counts = wave_counts({state: int(n) for state, n in rows})
        decision = decide(counts, threshold=threshold, last_wave=wave >= waves - 1)
        if decision is Decision.WAIT:
            continue
        moved[campaign_id] = decision
        if decision is Decision.HALT:
            conn.execute(
                "UPDATE ota_campaigns SET status = 'halted', halted_wave = current_wave, "
                "finished_at = %s WHERE campaign_id = %s",
                (now, campaign_id),
            )
            conn.execute(
                "UPDATE ota_devices SET state = 'cancelled', reason = 'halted', updated_at = %s "
                "WHERE campaign_id = %s AND state = 'pending'",
                (now, campaign_id),
            )
        elif decision is Decision.NEXT_WAVE:
            conn.execute(
                "UPDATE ota_campaigns SET current_wave = current_wave + 1, wave_started_at = %s "
                "WHERE campaign_id = %s",
                (now, campaign_id),
            )
        else:
            conn.execute(
                "UPDATE ota_campaigns SET status = 'completed', finished_at = %s "
                "WHERE campaign_id = %s",
                (now, campaign_id),
            )
    return moved


_CLAIM = """
WITH due AS (
    SELECT o.campaign_id, o.device_id FROM ota_devices o
    JOIN ota_campaigns c ON c.campaign_id = o.campaign_id
    JOIN device_state st ON st.device_id = o.device_id AND st.online
    WHERE o.state = ANY(%(active)s) AND o.wave <= c.current_wave
      AND (c.status = 'running' OR (c.status IN ('paused', 'halted') AND o.state <> 'pending'))
      AND (o.offered_at IS NULL OR greatest(o.offered_at, o.updated_at) < %(before)s)
    ORDER BY o.campaign_id, o.wave, o.device_id LIMIT %(limit)s
    FOR UPDATE OF o SKIP LOCKED
)
UPDATE ota_devices o SET
    state = CASE WHEN o.state = 'pending' THEN 'offered' ELSE o.state END,
    updated_at = CASE WHEN o.state = 'pending' THEN %(now)s ELSE o.updated_at END,
    offered_at = %(now)s, offers = o.offers + 1
FROM due, ota_campaigns c, firmware_artifacts a, devices d
WHERE o.campaign_id = due.campaign_id AND o.device_id = due.device_id
  AND c.campaign_id = o.campaign_id AND a.artifact_id = c.artifact_id
  AND d.device_id = o.device_id AND d.status = 'active'
RETURNING o.device_id, d.current_epoch, o.campaign_id, a.artifact_id, a.manifest, a.signature
"""


def claim_offers(
    conn: Conn, *, now: datetime, retry: timedelta, limit: int = OFFER_BATCH
) -> list[DueOtaOffer]:
    """Claim the offers due now (marked as sent at *now*).

    Raises:
        RegistryUnavailable: the database refused or cannot be reached.
    """
    params = {"active": _ACTIVE, "before": now - retry, "limit": limit, "now": now}
    try:
        with conn.transaction():
            rows = conn.execute(_CLAIM, params).fetchall()
    except psycopg.Error as exc:
        raise RegistryUnavailable(type(exc).__name__) from exc
    return [DueOtaOffer(r[0], r[1], r[2], r[3], bytes(r[4]), bytes(r[5])) for r in rows]


_LOCK_ROWS = """
SELECT o.device_id, o.campaign_id, o.state, o.received, c.status, a.version, a.artifact_id,
       a.size
FROM ota_devices o JOIN ota_campaigns c USING (campaign_id)
JOIN firmware_artifacts a USING (artifact_id)
WHERE (o.device_id, o.campaign_id) IN (SELECT * FROM unnest(%s::text[], %s::bigint[]))
ORDER BY o.device_id, o.campaign_id
FOR UPDATE OF o
"""
_UPDATE = """
UPDATE ota_devices o SET state = u.state, received = u.received, reason = u.reason,
    updated_at = %s
FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::bigint[], %s::text[])
     AS u(device_id, campaign_id, state, received, reason)
WHERE o.device_id = u.device_id AND o.campaign_id = u.campaign_id
"""


def apply_reports(
    cur: psycopg.Cursor[Any], reports: Sequence[ProgressReport], *, now: datetime
) -> list[OtaAnswer]:
    """Apply progress reports in the caller's transaction; the answers to send after COMMIT.

    Of several reports of one device and campaign in a batch, the most advanced counts.
    Reports for campaigns the device is not in are ignored.
    """
    latest: dict[tuple[str, int], ProgressReport] = {}
    for r in reports:
        key = (r.device_id, r.campaign_id)
        old = latest.get(key)
        if old is None or (_RANK[r.state], r.offset) >= (_RANK[old.state], old.offset):
            latest[key] = r
    if not latest:
        return []
    keys = sorted(latest)
    cur.execute(_LOCK_ROWS, ([k[0] for k in keys], [k[1] for k in keys]))
    updates, answers = [], []
    for (
        device_id,
        campaign_id,
        state,
        received,
        status,
        version,
        artifact_id,
        size,
    ) in cur.fetchall():
        report = latest[(device_id, campaign_id)]
        current = DeviceOta(state)
        step = advance(current, received, report, target_version=version)
        if step is not None:
            updates.append((device_id, campaign_id, step.state.value, step.offset, step.reason))
            current = step.state
        answer = _answer(report, current, CampaignStatus(status), artifact_id, size)
        if answer is not None:
            answers.append(answer)
    if updates:
        cur.execute(_UPDATE, (now, *(list(col) for col in zip(*updates, strict=True))))
    return answers


def _answer(
    report: ProgressReport,
    state: DeviceOta,
    status: CampaignStatus,
    artifact_id: int,
    size: int,
) -> OtaAnswer | None:
    if report.state is not DeviceOta.DOWNLOADING:
        return None
    if state in TERMINAL or status is CampaignStatus.ABORTED:
        return OtaAnswer(report.device_id, report.epoch, report.campaign_id, cancel=True)
    if report.offset >= size:
        return None  # complete: the device verifies next
    return OtaAnswer(
        report.device_id,
        report.epoch,
        report.campaign_id,
        cancel=False,
        artifact_id=artifact_id,
        offset=report.offset,
        size=size,
    )


def artifact_content(conn: Conn, artifact_id: int) -> bytes | None:
    """The bytes of an artifact (None if there is no such artifact).

    Raises:
        RegistryUnavailable: the database refused or cannot be reached.
    """
    try:
        row = conn.execute(
            "SELECT content FROM firmware_artifacts WHERE artifact_id = %s", (artifact_id,)
        ).fetchone()
    except psycopg.Error as exc:
        raise RegistryUnavailable(type(exc).__name__) from exc
    return bytes(row[0]) if row else None


def ota_state_counts(dsn: str) -> dict[str, int]:
    """Devices per OTA state in running and paused campaigns (for ``qnect_ota_devices``)."""
    with psycopg.connect(dsn, connect_timeout=2) as conn:
        rows = conn.execute(
            "SELECT d.state, count(*) FROM ota_devices d JOIN ota_campaigns c USING (campaign_id) "
            "WHERE c.status IN ('running', 'paused') GROUP BY d.state"
        ).fetchall()
    return {str(state): int(n) for state, n in rows}
