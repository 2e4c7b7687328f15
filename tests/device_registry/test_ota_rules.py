"""The OTA state machine, wave plans and the halt rule (pure)."""

from __future__ import annotations

import pytest

from device_registry.ota import (
    Decision,
    DeviceOta,
    ProgressReport,
    WaveCounts,
    advance,
    check_waves,
    decide,
    plan_waves,
    targeted,
    wave_counts,
)

S = DeviceOta


def report(state: DeviceOta, offset: int = 0, **kw: str) -> ProgressReport:
    """A report of *state*."""
    return ProgressReport(0, "d", 1, 1, state, offset, kw.get("fw"), kw.get("reason"))


def step(current: DeviceOta, got: ProgressReport, offset: int = 0) -> DeviceOta | None:
    """The state after *got*, or None."""
    t = advance(current, offset, got, target_version="2.0.0")
    return None if t is None else t.state


def test_reports_move_devices_forward_only() -> None:
    """Forward moves apply; older, duplicate and post-final reports change nothing."""
    assert step(S.OFFERED, report(S.DOWNLOADING)) is S.DOWNLOADING
    assert step(S.DOWNLOADING, report(S.DOWNLOADING, 100), 50) is S.DOWNLOADING
    assert step(S.DOWNLOADING, report(S.DOWNLOADING, 50), 50) is None  # duplicate
    assert step(S.INSTALLING, report(S.DOWNLOADING, 10)) is None  # reordered
    assert step(S.SUCCEEDED, report(S.FAILED, reason="checksum")) is None
    assert step(S.PENDING, report(S.DOWNLOADING)) is None  # never offered
    assert step(S.OFFERED, report(S.FAILED, reason="bad_signature")) is S.FAILED


def test_offsets_never_go_back() -> None:
    """A late, lower offset keeps the stored one."""
    t = advance(S.DOWNLOADING, 300, report(S.VERIFYING, 200), target_version="2.0.0")
    assert t is not None
    assert (t.state, t.offset) == (S.VERIFYING, 300)


def test_success_must_name_the_target_version() -> None:
    """A success with another version is a failure; a late success after timeout counts."""
    t = advance(S.INSTALLING, 0, report(S.SUCCEEDED, fw="1.9.0"), target_version="2.0.0")
    assert t is not None
    assert (t.state, t.reason) == (S.FAILED, "version_mismatch")
    assert step(S.TIMED_OUT, report(S.SUCCEEDED, fw="2.0.0")) is S.SUCCEEDED
    assert step(S.CANCELLED, report(S.SUCCEEDED, fw="2.0.0")) is S.SUCCEEDED
    assert step(S.TIMED_OUT, report(S.DOWNLOADING, 10)) is None


def test_waves_cut_at_cumulative_percentages() -> None:
    """1/10/50/100 % of 500 devices: 5, 45, 200, 250; deterministic per campaign."""
    ids = [f"d{i}" for i in range(500)]
    plan = plan_waves(7, ids, (1, 10, 50, 100))
    sizes = [sum(1 for w in plan.values() if w == k) for k in range(4)]
    assert sizes == [5, 45, 200, 250]
    assert plan == plan_waves(7, reversed(ids), (1, 10, 50, 100))
    assert plan != plan_waves(8, ids, (1, 10, 50, 100))
    assert plan_waves(1, ["a"], (1, 100)) == {"a": 0}


@pytest.mark.parametrize("waves", [(), (10, 5, 100), (1, 50), (0, 100), (1,) * 11])
def test_bad_wave_lists(waves: tuple[int, ...]) -> None:
    """Empty, decreasing, not ending at 100, zero, too many: refused."""
    with pytest.raises(ValueError, match="wave"):
        check_waves(waves)


def test_halt_as_soon_as_failures_pass_the_threshold() -> None:
    """Halt beats waiting; a clean terminal wave advances, the last one completes."""
    assert decide(WaveCounts(45, 10, 3), threshold=0.05, last_wave=False) is Decision.HALT
    assert decide(WaveCounts(45, 45, 2), threshold=0.05, last_wave=False) is Decision.NEXT_WAVE
    assert decide(WaveCounts(45, 44, 2), threshold=0.05, last_wave=False) is Decision.WAIT
    assert decide(WaveCounts(10, 10, 0), threshold=0.0, last_wave=True) is Decision.COMPLETE
    assert decide(WaveCounts(0, 0, 0), threshold=0.0, last_wave=False) is Decision.NEXT_WAVE
    counts = wave_counts({"succeeded": 3, "timed_out": 1, "failed": 1, "downloading": 2})
    assert counts == WaveCounts(7, 5, 2)


def test_targeting_by_firmware_range() -> None:
    """In range, older than the target and not below the artifact's minimum."""
    kw = {"from_min": "1.0.0", "from_max": "1.9.9", "target": "2.0.0", "min_version": "1.2.0"}
    assert targeted("1.4.2", **kw)
    assert not targeted("1.1.0", **kw)  # below the minimum previous version
    assert not targeted("2.0.0", **kw)
    assert not targeted(None, **kw)
    assert not targeted("garbage", **kw)
