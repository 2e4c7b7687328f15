"""OTA campaigns: the per-device state machine, wave plans and the halt rule (pure).

Per device and campaign::

    pending ─offer─▶ offered ─▶ downloading ─▶ verifying ─▶ installing ─▶ succeeded
                        │            │              │             │
                        └────────────┴──────────────┴─────────────┴──▶ failed | timed_out
    pending (never reached within the timeout) ─▶ skipped;  abort / halt ─▶ cancelled

The server keeps this state, not the device's connection: a device that reboots mid-download
comes back to the same row and resumes from the offset it holds (the server re-offers a
stalled device, and the device asks for the chunk at its offset). Reports only move a device
forward; a duplicate or an older report (redelivery, reordering across workers) changes
nothing, except that a ``downloading`` report may raise the offset. A late ``succeeded`` (after a
timeout or an abort) is recorded, because the device did install it.

Waves: devices are ordered by a hash of (campaign, device) and cut at cumulative percentages,
e.g. 1 → 10 → 50 → 100. The next wave starts when every device of the current one is
terminal; the campaign halts as soon as the current wave's failures (``failed`` and
``timed_out``) pass the threshold, as hawkBit's error threshold and AWS Jobs' abort criteria do.

Does not own: storage and locking (``postgres_ota``), the manifest (``crypto.firmware``).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from crypto.errors import MalformedManifest
from crypto.firmware import version_key

MAX_WAVES = 10


class DeviceOta(StrEnum):
    """State of one device in one campaign."""

    PENDING = "pending"
    OFFERED = "offered"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    INSTALLING = "installing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


class CampaignStatus(StrEnum):
    """State of a campaign."""

    RUNNING = "running"
    PAUSED = "paused"  # no new offers; devices already under way finish
    HALTED = "halted"  # a wave passed the failure threshold; like paused, but final
    COMPLETED = "completed"
    ABORTED = "aborted"  # no new offers, no more chunks; unfinished devices cancelled


REPORTABLE = frozenset(
    {
        DeviceOta.DOWNLOADING,
        DeviceOta.VERIFYING,
        DeviceOta.INSTALLING,
        DeviceOta.SUCCEEDED,
        DeviceOta.FAILED,
    }
)
IN_FLIGHT = frozenset(
    {DeviceOta.OFFERED, DeviceOta.DOWNLOADING, DeviceOta.VERIFYING, DeviceOta.INSTALLING}
)
ACTIVE = IN_FLIGHT | {DeviceOta.PENDING}
FAILURES = frozenset({DeviceOta.FAILED, DeviceOta.TIMED_OUT})
TERMINAL = frozenset(DeviceOta) - ACTIVE
_RANK = {
    DeviceOta.PENDING: 0,
    DeviceOta.OFFERED: 1,
    DeviceOta.DOWNLOADING: 2,
    DeviceOta.VERIFYING: 3,
    DeviceOta.INSTALLING: 4,
    DeviceOta.SUCCEEDED: 5,
    DeviceOta.FAILED: 5,
}
# Why a device refused or failed, as devices report it (anything else is refused at ingest).
FAILURE_REASONS = frozenset(
    {
        "bad_signature",
        "malformed_manifest",
        "incompatible_model",
        "rollback_seq",
        "rollback_version",
        "below_min_version",
        "checksum",
        "download_failed",
        "install_failed",
        "busy",
    }
)
SERVER_REASONS = frozenset({"timeout", "version_mismatch", "aborted", "halted"})


@dataclass(frozen=True, slots=True)
class ProgressReport:
    """One authenticated ``up/ota`` report, as the ingest pipeline validated it."""

    index: int  # position in the broker batch
    device_id: str
    epoch: int  # the session it came under (a chunk answer is sealed for it)
    campaign_id: int
    state: DeviceOta
    offset: int  # bytes of the artifact the device holds
    firmware: str | None = None  # with ``succeeded``: the version now running
    reason: str | None = None  # with ``failed``


@dataclass(frozen=True, slots=True)
class Transition:
    """What a report does to a device's row."""

    state: DeviceOta
    offset: int
    reason: str | None


def advance(
    current: DeviceOta, offset: int, report: ProgressReport, *, target_version: str
) -> Transition | None:
    """The new state of a device after *report*; None when the report changes nothing.

    Args:
        current: the stored state.
        offset: the stored offset.
        report: the device's report.
        target_version: the campaign's firmware version (a success must name it).
    """
    reported = report.state
    reason: str | None
    if reported is DeviceOta.SUCCEEDED and report.firmware != target_version:
        reported, reason = DeviceOta.FAILED, "version_mismatch"
    else:
        reason = report.reason if reported is DeviceOta.FAILED else None
    late_success = current in {DeviceOta.TIMED_OUT, DeviceOta.CANCELLED}
    if current is DeviceOta.PENDING or (current in TERMINAL and not late_success):
        return None  # never offered (a forged or stale report), or final
    if late_success and reported is not DeviceOta.SUCCEEDED:
        return None
    if _RANK.get(current, 5) > _RANK[reported]:
        return None  # older than what is stored: reordered or redelivered
    new_offset = max(offset, report.offset)
    if reported is current and new_offset == offset:
        return None  # a duplicate
    return Transition(reported, new_offset, reason)


def plan_waves(
    campaign_id: int, device_ids: Iterable[str], percents: Sequence[int]
) -> dict[str, int]:
    """Assign devices to waves: hash order, cut at cumulative *percents* (ceil).

    Returns:
        device id -> wave index (0-based).
    """
    order = sorted(
        device_ids,
        key=lambda d: hashlib.sha256(f"{campaign_id}:{d}".encode()).digest(),
    )
    n, start, waves = len(order), 0, {}
    for wave, pct in enumerate(percents):
        end = min(n, math.ceil(n * pct / 100))
        for device_id in order[start:end]:
            waves[device_id] = wave
        start = max(start, end)
    return waves


def check_waves(percents: Sequence[int]) -> None:
    """Refuse a wave list that is not strictly increasing percentages ending at 100.

    Raises:
        ValueError: with a message naming the rule.
    """
    if not 1 <= len(percents) <= MAX_WAVES:
        raise ValueError(f"1..{MAX_WAVES} waves")
    if any(not 0 < p <= 100 for p in percents) or percents[-1] != 100:
        raise ValueError("wave percentages are in 1..100 and the last is 100")
    if any(b <= a for a, b in itertools.pairwise(percents)):
        raise ValueError("wave percentages must increase")


def targeted(
    firmware: str | None, *, from_min: str, from_max: str, target: str, min_version: str
) -> bool:
    """Whether a device running *firmware* belongs in a campaign.

    It must report a version, within [from_min, from_max], older than the target and not
    older than the artifact's minimum previous version.
    """
    if firmware is None:
        return False
    try:
        key = version_key(firmware)
    except MalformedManifest:
        return False
    return (
        version_key(from_min) <= key <= version_key(from_max)
        and key < version_key(target)
        and key >= version_key(min_version)
    )


@dataclass(frozen=True, slots=True)
class WaveCounts:
    """The current wave of a campaign, counted."""

    total: int
    terminal: int
    failures: int


class Decision(StrEnum):
    """What the controller does with a running campaign."""

    WAIT = "wait"
    NEXT_WAVE = "next_wave"
    COMPLETE = "complete"
    HALT = "halt"


def decide(counts: WaveCounts, *, threshold: float, last_wave: bool) -> Decision:
    """Halt as soon as failures pass the threshold; else advance once the wave is terminal."""
    if counts.total and counts.failures / counts.total > threshold:
        return Decision.HALT
    if counts.terminal < counts.total:
        return Decision.WAIT
    return Decision.COMPLETE if last_wave else Decision.NEXT_WAVE


def state_counts(rows: Iterable[tuple[int, str, int]]) -> dict[int, dict[str, int]]:
    """(wave, state, n) rows -> {wave: {state: n}}, for status views."""
    out: dict[int, dict[str, int]] = {}
    for wave, state, n in rows:
        out.setdefault(wave, {})[state] = n
    return out


def wave_counts(states: Mapping[str, int]) -> WaveCounts:
    """Counts of one wave from its {state: n}."""
    total = sum(states.values())
    terminal = sum(n for s, n in states.items() if DeviceOta(s) in TERMINAL)
    failures = sum(n for s, n in states.items() if DeviceOta(s) in FAILURES)
    return WaveCounts(total, terminal, failures)
