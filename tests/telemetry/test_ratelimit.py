"""Per-device token buckets: live rate with burst, and a separate backlog allowance."""

from __future__ import annotations

from telemetry.ratelimit import Limit, RateConfig, RateLimiter

CONFIG = RateConfig(live_per_s=5, live_burst=20, backlog_per_s=100, backlog_burst=1000)


def test_burst_then_sustained_rate():
    """A device gets its burst at once, then tokens at the sustained rate."""
    limiter = RateLimiter(CONFIG)
    allowed = [limiter.allow("d", backlog=False, now_ms=0) for _ in range(25)]
    assert allowed.count(None) == 20
    assert allowed[20:] == [Limit.LIVE] * 5
    assert [limiter.allow("d", backlog=False, now_ms=1000) for _ in range(6)].count(None) == 5


def test_backlog_has_its_own_allowance():
    """A device out of live tokens may still flush frames it buffered while offline."""
    limiter = RateLimiter(CONFIG)
    for _ in range(20):
        limiter.allow("d", backlog=False, now_ms=0)
    assert limiter.allow("d", backlog=False, now_ms=0) is Limit.LIVE
    backlog = [limiter.allow("d", backlog=True, now_ms=0) for _ in range(1001)]
    assert backlog.count(None) == 1000
    assert backlog[-1] is Limit.BACKLOG


def test_devices_are_independent_and_time_never_runs_backwards():
    """One device's flood does not cost another; an earlier clock reading refills nothing."""
    limiter = RateLimiter(CONFIG)
    for _ in range(20):
        limiter.allow("a", backlog=False, now_ms=5000)
    assert limiter.allow("b", backlog=False, now_ms=5000) is None
    assert limiter.allow("a", backlog=False, now_ms=0) is Limit.LIVE


def test_workers_share_the_limit():
    """K round-robin workers each enforce 1/K of every limit."""
    share = CONFIG.per_worker(2)
    assert (share.live_per_s, share.live_burst) == (2.5, 10)
    assert (share.backlog_per_s, share.backlog_burst) == (50, 500)
    assert CONFIG.per_worker(0) == CONFIG


def test_tracking_is_bounded():
    """The least recently seen device is forgotten first (and starts again with a full burst)."""
    limiter = RateLimiter(CONFIG, max_devices=2)
    for _ in range(20):
        limiter.allow("a", backlog=False, now_ms=0)
    limiter.allow("b", backlog=False, now_ms=0)
    limiter.allow("c", backlog=False, now_ms=0)
    assert limiter.allow("a", backlog=False, now_ms=0) is None


def test_a_backlog_queued_at_the_broker_is_not_a_flood():
    """Frames sent 1 s apart but arriving together (bridge catching up) refill by their stamps."""
    limiter = RateLimiter(CONFIG)
    stamps = [i * 1000 for i in range(100)]
    assert all(
        limiter.allow("d", backlog=False, now_ms=200_000, stamp_ms=t) is None for t in stamps
    )


def test_a_flood_with_honest_stamps_runs_dry():
    """A device stamping 100 frames within one second gets its burst and its rate only."""
    limiter = RateLimiter(CONFIG)
    results = [
        limiter.allow("d", backlog=False, now_ms=i * 10, stamp_ms=i * 10) for i in range(100)
    ]
    assert results.count(None) == 20 + 4  # burst, plus about one second at 5/s
