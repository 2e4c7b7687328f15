"""Retention classes and how long each is kept (pure data; the DPO owns the numbers).

Storage keeps one table per retention class so that expiry drops whole chunks or partitions
instead of deleting rows (research/privacy-crypto.md section 5.2).
"""

from __future__ import annotations

from enum import StrEnum


class RetentionClass(StrEnum):
    """How long a kind of stored data lives."""

    USAGE = "usage"  # non-personal-ish numeric telemetry
    NETWORK = "network"  # MAC, IP, SSID reports
    LOCATION = "location"
    HEALTH = "health"
    MEDIA = "media"
    LEDGER = "ledger"  # frame identities kept for de-duplication and accounting
    PRESENCE = "presence"


RETENTION_DAYS: dict[RetentionClass, int] = {
    RetentionClass.USAGE: 90,
    RetentionClass.NETWORK: 30,
    RetentionClass.LOCATION: 30,
    RetentionClass.HEALTH: 365,  # until erasure or consent withdrawal shreds the key sooner
    RetentionClass.MEDIA: 30,
    # The ledger must outlive the oldest timestamp a frame may carry (validation's max age),
    # otherwise a late redelivery could be stored twice.
    RetentionClass.LEDGER: 35,
    RetentionClass.PRESENCE: 90,
}
