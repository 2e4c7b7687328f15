"""Sliding replay window over 64-bit frame counters (pure; IPsec/OSCORE style).

Owns: deciding whether a counter is new, already seen, or too old to tell, and recording a
counter as seen. The caller records a counter only after its frame's tag verified, so forged
frames cannot move the window (the Matter implementation note in research/privacy-crypto.md).
"""

from __future__ import annotations

from enum import Enum

WINDOW_BITS = 256  # covers the disorder of a shared subscription spreading one device over workers


class Freshness(Enum):
    """What a window says about a counter."""

    NEW = "new"
    SEEN = "seen"
    TOO_OLD = "too_old"  # below the window: this window cannot tell; ask durable state


class ReplayWindow:
    """Highest counter seen plus a bitmap of the ``size`` counters below it."""

    __slots__ = ("_bits", "highest", "size")

    def __init__(self, size: int = WINDOW_BITS) -> None:
        """Start an empty window of *size* counters."""
        self.size = size
        self.highest = 0
        self._bits = 0  # bit i set: counter (highest - i) seen

    def check(self, counter: int) -> Freshness:
        """Classify *counter* without changing the window."""
        if counter > self.highest:
            return Freshness.NEW
        offset = self.highest - counter
        if offset >= self.size:
            return Freshness.TOO_OLD
        return Freshness.SEEN if self._bits >> offset & 1 else Freshness.NEW

    def record(self, counter: int) -> None:
        """Mark *counter* as seen (call only after the frame authenticated)."""
        if counter > self.highest:
            shift = counter - self.highest
            # A jump past the whole window forgets it (and keeps the shift bounded).
            bits = 0 if shift >= self.size else self._bits << shift
            self._bits = (bits | 1) & ((1 << self.size) - 1)
            self.highest = counter
        elif self.highest - counter < self.size:
            self._bits |= 1 << (self.highest - counter)
