"""Device identities at the broker, and revocation (PostgreSQL side).

The registry is the source of truth for which devices may connect; the broker (Mosquitto's
dynamic security) is kept in step from here by ``qnect.broker``.
"""

from __future__ import annotations

from typing import Any

import psycopg

from device_registry.model import RegistryKeys

SCAN_BATCH = 10_000  # rows per fetch when listing a large fleet


def broker_identities(
    conn: psycopg.Connection[Any], keys: RegistryKeys, device_ids: list[str] | None = None
) -> tuple[dict[str, str], list[str]]:
    """Active devices with their broker passwords, and revoked device ids.

    With *device_ids*, only those devices; otherwise the whole fleet.
    """
    active: dict[str, str] = {}
    revoked: list[str] = []
    with conn.cursor(name="broker_identities") as cur:
        cur.itersize = SCAN_BATCH
        if device_ids is None:
            cur.execute("SELECT device_id, status FROM devices")
        else:
            cur.execute(
                "SELECT device_id, status FROM devices WHERE device_id = ANY(%s)", (device_ids,)
            )
        for device_id, status in cur:
            if status == "active":
                active[device_id] = keys.broker.device(device_id)
            else:
                revoked.append(device_id)
    return active, revoked


def revoke_device(conn: psycopg.Connection[Any], device_id: str) -> bool:
    """Revoke *device_id*: refuse its frames and destroy its wrapped root keys (in one commit).

    Returns whether the device existed and was active. Its data stays (and stays readable:
    data keys belong to the owner's binding, not to the device).
    """
    with conn.transaction():
        row = conn.execute(
            "UPDATE devices SET status = 'revoked', root_key_wrapped = NULL, "
            # Every other version goes too: a pending next key and a decrypt-only previous one.
            "drk_next_version = NULL, drk_next_wrapped = NULL, drk_prev_wrapped = NULL "
            "WHERE device_id = %s AND status = 'active' RETURNING device_id",
            (device_id,),
        ).fetchone()
    return row is not None


def database_ready(dsn: str) -> bool:
    """Whether the registry's database answers a query within 2 s."""
    try:
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True
