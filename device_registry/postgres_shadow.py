"""PostgreSQL side of delivering desired state to devices (bridge workers).

The app's writes (``postgres_home.PostgresHome.set_desired``) only store a new desired state
and version; the ``device_shadow_confirm`` trigger confirms it when a later report carries
every desired value. In between, bridge workers:

* **claim deliveries** (``SKIP LOCKED``: each goes out through one worker): shadows that are
  unconfirmed and non-empty, of an active device that is online, whose newest version was not
  sent yet, or was sent under another session (the device re-keyed: a reconnect), or was sent
  longer ago than the retry period. Claiming marks the row sent (version, epoch, time), so
  only the newest version goes out, and a lost message is sent again after the retry period;
* **claim retained clean-ups**: shadows from before workers delivered desired state may have a
  plaintext retained message on the broker; each is claimed once, to be overwritten with an
  empty retained message (which deletes it).

Does not own: the frame format (``broker_bridge.desired_frames``), sealing or publishing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from device_registry.errors import RegistryUnavailable

Conn = psycopg.Connection[Any]
DELIVERY_BATCH = 500  # deliveries one worker claims per pass: one short transaction


@dataclass(frozen=True, slots=True)
class DueDesired:
    """A desired state a worker has claimed: seal it under the device's current session."""

    device_id: str
    epoch: int
    version: int
    desired: dict[str, object]


_CLAIM = """
WITH due AS (
    SELECT sh.device_id FROM device_shadows sh
    JOIN devices d ON d.device_id = sh.device_id AND d.status = 'active'
    JOIN device_state st ON st.device_id = sh.device_id AND st.online
    WHERE sh.confirmed_at IS NULL AND sh.desired <> '{}' AND d.current_epoch > 0
      AND (sh.sent_version IS DISTINCT FROM sh.version
           OR sh.sent_epoch IS DISTINCT FROM d.current_epoch
           OR sh.sent_at < %(before)s)
    ORDER BY sh.device_id LIMIT %(limit)s
    FOR UPDATE OF sh SKIP LOCKED
)
UPDATE device_shadows sh SET sent_version = sh.version, sent_epoch = d.current_epoch,
    sent_at = %(now)s
FROM due, devices d
WHERE sh.device_id = due.device_id AND d.device_id = sh.device_id
RETURNING sh.device_id, d.current_epoch, sh.version, sh.desired
"""

_CLEAR = """
WITH due AS (
    SELECT device_id FROM device_shadows WHERE plain_retained
    ORDER BY device_id LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE device_shadows sh SET plain_retained = false FROM due
WHERE sh.device_id = due.device_id
RETURNING sh.device_id
"""


def claim_desired(
    conn: Conn, *, now: datetime, retry: timedelta, limit: int = DELIVERY_BATCH
) -> list[DueDesired]:
    """Claim the desired states due for delivery now (marked as sent at *now*).

    Raises:
        RegistryUnavailable: the database refused or cannot be reached.
    """
    params = {"now": now, "before": now - retry, "limit": limit}
    try:
        with conn.transaction():
            rows = conn.execute(_CLAIM, params).fetchall()
    except psycopg.Error as exc:
        raise RegistryUnavailable(type(exc).__name__) from exc
    return [DueDesired(str(r[0]), int(r[1]), int(r[2]), dict(r[3])) for r in rows]


def claim_retained(conn: Conn, *, limit: int = DELIVERY_BATCH) -> list[str]:
    """Claim devices whose plaintext retained desired state is still to be deleted.

    Raises:
        RegistryUnavailable: the database refused or cannot be reached.
    """
    try:
        with conn.transaction():
            rows = conn.execute(_CLEAR, {"limit": limit}).fetchall()
    except psycopg.Error as exc:
        raise RegistryUnavailable(type(exc).__name__) from exc
    return [str(r[0]) for r in rows]
