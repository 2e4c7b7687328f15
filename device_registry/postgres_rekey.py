"""PostgreSQL side of device root-key (DRK) rotation: stage, offer, commit, destroy, progress.

Owns the rotation columns of ``devices`` (0007_drk_rotation). A rotation of a device goes:

1. **stage** (``qnect keys rotate``): a random next key, wrapped under the current KEK with
   the associated data of its version, is stored as pending; only for a connected device
   whose current session already derives from its current key (so the offer can be sealed
   under that session and the device is not mid-way through an earlier rotation);
2. **offer** (bridge workers): due offers are claimed with ``SKIP LOCKED`` (each goes out
   through one worker) and sent on the device's downlink; resent after ``OFFER_RETRY``;
3. **commit** (the batch transaction that accepted the device's proof of possession, or a key
   exchange under the new version): current becomes previous, decrypt-only until
   ``drk_prev_until``; pending becomes current;
4. **destroy** (workers' periodic step, or ``qnect keys destroy-expired``): the previous
   key's blob is set to NULL once its grace ended; its version and deadline stay, so frames
   under it are refused with a specific reason.

Does not own: the protocol messages (``crypto.rekey``) or what the pipeline accepts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from crypto.keys import KEY_BYTES, KekRing
from crypto.rekey import MAX_DRK_VERSION
from device_registry.errors import RegistryUnavailable
from device_registry.model import root_key_context
from device_registry.postgres import current_kek_version

Random = Callable[[int], bytes]
OFFER_RETRY = timedelta(seconds=10)  # an unanswered offer is sent again (device reconnected)
OFFER_BATCH = 500  # offers one worker claims per pass: one short transaction


@dataclass(frozen=True, slots=True)
class RotationScope:
    """Which devices a rotation run covers: ids, models, or every device."""

    device_ids: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    everything: bool = False

    def params(self) -> dict[str, object]:
        """Query parameters of the scope filter."""
        return {"all": self.everything, "ids": list(self.device_ids), "models": list(self.models)}


@dataclass(frozen=True, slots=True)
class DueOffer:
    """An offer a worker has claimed: seal it under the device's current session."""

    device_id: str
    epoch: int
    from_version: int
    to_version: int


@dataclass(frozen=True, slots=True)
class Commit:
    """A proven rotation to commit: ``from_version`` becomes decrypt-only until ``until``."""

    device_id: str
    from_version: int
    to_version: int
    until: datetime


@dataclass(frozen=True, slots=True)
class RotationProgress:
    """Counts over a scope (active devices with a root key) since a run started."""

    total: int
    rotated: int  # committed since the run started
    pending: int  # staged or offered, not yet proven


# The scope filter of both queries: %(all)s, %(ids)s, %(models)s (RotationScope.params).
_ELIGIBLE = """
SELECT d.device_id, d.drk_version FROM devices d
JOIN device_sessions s ON s.device_id = d.device_id AND s.epoch = d.current_epoch
JOIN device_state st ON st.device_id = d.device_id
WHERE d.status = 'active' AND d.root_key_wrapped IS NOT NULL AND d.drk_next_version IS NULL
  AND s.drk_version = d.drk_version AND st.online
  AND (d.drk_rotated_at IS NULL OR d.drk_rotated_at < %(since)s)
  AND (%(all)s OR d.device_id = ANY(%(ids)s) OR d.model = ANY(%(models)s))
ORDER BY d.device_id LIMIT %(limit)s
FOR UPDATE OF d SKIP LOCKED
"""
_STAGE = """
UPDATE devices d SET drk_next_version = n.version, drk_next_wrapped = n.wrapped,
    drk_next_offered_at = NULL
FROM unnest(%s::text[], %s::integer[], %s::bytea[]) AS n(device_id, version, wrapped)
WHERE d.device_id = n.device_id AND d.drk_next_version IS NULL
"""
_PROGRESS = """
SELECT count(*),
       count(*) FILTER (WHERE d.drk_rotated_at >= %(since)s),
       count(*) FILTER (WHERE d.drk_next_version IS NOT NULL)
FROM devices d
WHERE d.status = 'active' AND d.root_key_wrapped IS NOT NULL
  AND (%(all)s OR d.device_id = ANY(%(ids)s) OR d.model = ANY(%(models)s))
"""


def stage(
    conn: psycopg.Connection[Any],
    ring: KekRing,
    scope: RotationScope,
    *,
    since: datetime,
    limit: int,
    rand: Random = os.urandom,
) -> int:
    """Stage next keys for up to *limit* eligible devices of *scope*; returns how many.

    Devices rotated at or after *since* (this run's start) are not rotated again.
    """
    with conn.transaction():
        kek_version = current_kek_version(conn)
        rows = conn.execute(_ELIGIBLE, {**scope.params(), "since": since, "limit": limit})
        ids, versions, blobs = [], [], []
        for device_id, version in rows.fetchall():
            if version >= MAX_DRK_VERSION:
                continue  # no version number left: such a device needs re-provisioning
            wrapped = ring.wrap(
                rand(KEY_BYTES),
                version=kek_version,
                context=root_key_context(device_id, version + 1),
                nonce=rand(12),
            )
            ids.append(device_id)
            versions.append(version + 1)
            blobs.append(wrapped)
        if ids:
            conn.execute(_STAGE, (ids, versions, blobs))
    return len(ids)


def progress(
    conn: psycopg.Connection[Any], scope: RotationScope, *, since: datetime
) -> RotationProgress:
    """Counts of *scope* for a run that started at *since* (database clock)."""
    row = conn.execute(_PROGRESS, {**scope.params(), "since": since}).fetchone()
    assert row is not None  # noqa: S101 - an aggregate always returns a row
    return RotationProgress(int(row[0]), int(row[1]), int(row[2]))


_CLAIM = """
WITH due AS (
    SELECT d.device_id FROM devices d
    JOIN device_state st ON st.device_id = d.device_id AND st.online
    WHERE d.drk_next_version IS NOT NULL AND d.status = 'active'
      AND (d.drk_next_offered_at IS NULL OR d.drk_next_offered_at < %(before)s)
    ORDER BY d.device_id LIMIT %(limit)s
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE devices d SET drk_next_offered_at = %(now)s FROM due
WHERE d.device_id = due.device_id
RETURNING d.device_id, d.current_epoch, d.drk_version, d.drk_next_version
"""


def claim_offers(
    conn: psycopg.Connection[Any], *, now: datetime, limit: int = OFFER_BATCH
) -> list[DueOffer]:
    """Claim the offers due now for connected devices (marked as sent at *now*).

    Raises:
        RegistryUnavailable: the database refused or cannot be reached.
    """
    params = {"now": now, "before": now - OFFER_RETRY, "limit": limit}
    try:
        with conn.transaction():
            rows = conn.execute(_CLAIM, params).fetchall()
    except psycopg.Error as exc:
        raise RegistryUnavailable(type(exc).__name__) from exc
    return [DueOffer(*row) for row in rows]


_COMMIT = """
UPDATE devices d SET
    drk_prev_version = d.drk_version, drk_prev_wrapped = d.root_key_wrapped,
    drk_prev_until = c.until,
    drk_version = d.drk_next_version, root_key_wrapped = d.drk_next_wrapped,
    drk_next_version = NULL, drk_next_wrapped = NULL, drk_next_offered_at = NULL,
    drk_rotated_at = statement_timestamp()
FROM unnest(%s::text[], %s::integer[], %s::integer[], %s::timestamptz[])
     AS c(device_id, from_version, to_version, until)
WHERE d.device_id = c.device_id AND d.drk_version = c.from_version
  AND d.drk_next_version = c.to_version AND d.status = 'active'
  AND d.root_key_wrapped IS NOT NULL
RETURNING d.device_id
"""


def commit_rotations(cur: psycopg.Cursor[Any], commits: Sequence[Commit]) -> list[Commit]:
    """Commit proven rotations in the caller's transaction; returns those committed now.

    A rotation already committed (a resent proof, or proof and key exchange in one batch) is
    not committed again and is not in the result.
    """
    unique = list({c.device_id: c for c in commits}.values())
    if not unique:
        return []
    cur.execute(
        _COMMIT,
        (
            [c.device_id for c in unique],
            [c.from_version for c in unique],
            [c.to_version for c in unique],
            [c.until for c in unique],
        ),
    )
    done = {row[0] for row in cur.fetchall()}
    return [c for c in unique if c.device_id in done]


_DESTROY = """
UPDATE devices SET drk_prev_wrapped = NULL
WHERE drk_prev_wrapped IS NOT NULL AND drk_prev_until <= %s
"""


def destroy_expired(conn: psycopg.Connection[Any], *, now: datetime) -> int:
    """Destroy previous root keys whose grace ended by *now*; returns how many.

    Raises:
        RegistryUnavailable: the database refused or cannot be reached.
    """
    try:
        return conn.execute(_DESTROY, (now,)).rowcount
    except psycopg.Error as exc:
        raise RegistryUnavailable(type(exc).__name__) from exc
