"""The staleness sweep: silent devices go offline, with an event, without beating newer news."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg

from telemetry.postgres import Database


def _state(conn: psycopg.Connection[tuple[object, ...]], device_id: str) -> tuple[object, ...]:
    row = conn.execute(
        "SELECT online, presence_epoch, since FROM device_state WHERE device_id = %s",
        (device_id,),
    ).fetchone()
    assert row is not None
    return row


def test_silent_devices_are_swept_offline_once(db_dsn: str) -> None:
    """Online devices silent past the cutoff go offline with a 'sweep' event; others stay."""
    now = datetime.now(UTC)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO devices (device_id, model, binding, mac_enc) VALUES "
            "('silentaaaaaaaaaa', 'plug', 'b1', ''), ('chattyaaaaaaaaaa', 'plug', 'b2', '')"
        )
        conn.execute(
            "INSERT INTO device_state (device_id, online, presence_epoch, since, last_seen) "
            "VALUES ('silentaaaaaaaaaa', true, 7, %(old)s, %(old)s), "
            "('chattyaaaaaaaaaa', true, 3, %(old)s, %(now)s)",
            {"old": now - timedelta(minutes=30), "now": now},
        )
    db = Database(db_dsn)
    try:
        assert db.sweep_presence(now, timedelta(minutes=15)) == 1
        assert db.sweep_presence(now, timedelta(minutes=15)) == 0  # already offline
    finally:
        db.close()
    with psycopg.connect(db_dsn) as conn:
        assert _state(conn, "silentaaaaaaaaaa") == (False, 7, now)
        assert _state(conn, "chattyaaaaaaaaaa")[0] is True
        events = conn.execute(
            "SELECT device_id, epoch, online, source FROM presence_events"
        ).fetchall()
    assert events == [("silentaaaaaaaaaa", 7, False, "sweep")]
