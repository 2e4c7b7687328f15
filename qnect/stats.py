"""Ingest counts from the database: accepted frames and rejects per reason (for ``qnect stats``)."""

from __future__ import annotations

import psycopg


def stats(dsn: str) -> dict[str, object]:
    """Accepted frames (every kind) and rejected messages per reason, counted from the tables."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM frames").fetchone()
        accepted = int(row[0]) if row else 0
        rejected = {
            str(reason): int(n)
            for reason, n in conn.execute(
                "SELECT reason, sum(occurrences) FROM quarantine GROUP BY reason ORDER BY reason"
            )
        }
        devices = conn.execute("SELECT count(*) FROM devices").fetchone()
    return {
        "accepted": accepted,
        "rejected": rejected,
        "rejected_total": sum(rejected.values()),
        "devices": int(devices[0]) if devices else 0,
    }


def device_stats(dsn: str, device_id: str) -> dict[str, object]:
    """Accepted frames and rejects per reason of one device (the per-device reject counters)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM frames WHERE device_id = %s", (device_id,))
        accepted = row.fetchone()
        rejected = {
            str(reason): int(n)
            for reason, n in conn.execute(
                "SELECT reason, sum(occurrences) FROM quarantine WHERE device_id = %s "
                "GROUP BY reason ORDER BY reason",
                (device_id,),
            )
        }
        limited = {
            str(detail).removeprefix("limit="): int(n)
            for detail, n in conn.execute(
                "SELECT detail, sum(occurrences) FROM quarantine "
                "WHERE device_id = %s AND reason = 'rate_limited' GROUP BY detail ORDER BY detail",
                (device_id,),
            )
        }
    return {
        "device_id": device_id,
        "accepted": int(accepted[0]) if accepted else 0,
        "rejected": rejected,
        "rate_limited_by_limit": limited,
    }
