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
