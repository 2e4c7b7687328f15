"""Per-device rate limits: a live token bucket and a separate backlog allowance (pure).

Owns the decision "may this device's frame be accepted now". A frame stamped before the
device's current connection was established is *backlog* (buffered while offline) and draws
on its own, larger bucket, so a device that was offline for hours can flush its buffer while a
device flooding live frames is held to its sustained rate. Excess is rejected with
``rate_limited`` and the limit it hit, never dropped silently.

Each bridge worker keeps its own buckets. The broker's shared subscription hands out messages
round-robin, so with K workers each sees about 1/K of every device's frames: the worker is
configured with the per-device limits divided by K (``RateConfig.per_worker``).
Buckets live in memory: a restarted worker starts with full buckets, which errs on the side of
accepting data.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum

MAX_TRACKED_DEVICES = 200_000  # LRU bound: ~100 B per device, ~20 MB at most per worker


class Limit(StrEnum):
    """Which allowance a frame drew on (the reject detail names it)."""

    LIVE = "live"
    BACKLOG = "backlog"


@dataclass(frozen=True, slots=True)
class RateConfig:
    """Per-device limits: sustained frames per second and burst, live and backlog."""

    live_per_s: float = 50.0
    live_burst: float = 500.0
    backlog_per_s: float = 1_000.0
    backlog_burst: float = 50_000.0

    def per_worker(self, workers: int) -> RateConfig:
        """The share of each limit one of *workers* round-robin workers enforces."""
        k = max(1, workers)
        return RateConfig(
            self.live_per_s / k,
            self.live_burst / k,
            self.backlog_per_s / k,
            self.backlog_burst / k,
        )


class _Bucket:
    __slots__ = ("at_ms", "stamp_ms", "tokens")

    def __init__(self, tokens: float, at_ms: int, stamp_ms: int) -> None:
        self.tokens, self.at_ms, self.stamp_ms = tokens, at_ms, stamp_ms

    def take(self, rate: float, burst: float, now_ms: int, stamp_ms: int) -> bool:
        # Refill by whichever clock advanced more: arrival time (a device with a stuck clock
        # still gets its rate) or the device's own stamps (a bridge catching up on a backlog
        # that queued at the broker sees frames arrive fast that were sent at a normal pace).
        # A flooding device advances both slowly and runs dry.
        elapsed = max(0, now_ms - self.at_ms, stamp_ms - self.stamp_ms) / 1000
        self.tokens = min(burst, self.tokens + elapsed * rate)
        self.at_ms = max(self.at_ms, now_ms)
        self.stamp_ms = max(self.stamp_ms, stamp_ms)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class RateLimiter:
    """Token buckets per (device, limit), bounded by an LRU."""

    def __init__(self, config: RateConfig, max_devices: int = MAX_TRACKED_DEVICES) -> None:
        """Start with no device tracked (every device begins with a full burst)."""
        self.config = config
        self._max = max_devices
        self._buckets: OrderedDict[tuple[str, Limit], _Bucket] = OrderedDict()

    def allow(
        self, device_id: str, *, backlog: bool, now_ms: int, stamp_ms: int | None = None
    ) -> Limit | None:
        """Take one token; returns ``None`` when allowed, else the limit that was hit.

        Args:
            device_id: whose bucket.
            backlog: the frame was stamped before the device's current connection.
            now_ms: arrival time.
            stamp_ms: the frame's own timestamp (validated); defaults to arrival time.
        """
        stamp = now_ms if stamp_ms is None else stamp_ms
        limit = Limit.BACKLOG if backlog else Limit.LIVE
        c = self.config
        rate, burst = (
            (c.backlog_per_s, c.backlog_burst) if backlog else (c.live_per_s, c.live_burst)
        )
        key = (device_id, limit)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(burst, now_ms, stamp)
            if len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return None if bucket.take(rate, burst, now_ms, stamp) else limit
