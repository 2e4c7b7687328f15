"""Device sessions: one per key exchange, identified by (device, epoch) (pure data)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A stored session: the nonces its keys derive from."""

    device_id: str
    epoch: int
    device_nonce: bytes
    server_nonce: bytes
    cid: int
    superseded_at: datetime | None
    drk_version: int = 1  # the root-key version the session's keys derive from
