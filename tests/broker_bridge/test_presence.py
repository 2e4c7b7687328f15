"""Presence from key exchanges, status reports and sealed last wills, ordered by session epoch."""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path
from typing import Any

import psycopg

from broker_bridge.mqtt import BrokerAddress
from qnect.simulator import SimDevice, Tally
from tests.broker_bridge.stream import fleet
from tests.fix_mqtt import Broker


def state(dsn: str, device_id: str) -> tuple[bool | None, int | None]:
    """(online, presence epoch) of a device."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT online, presence_epoch FROM device_state WHERE device_id = %s", (device_id,)
        ).fetchone()
    return (row[0], row[1]) if row else (None, None)


def wait_state(dsn: str, device_id: str, expected: tuple[bool, int], timeout: float = 15) -> None:
    """Wait until the device's presence is *expected*."""
    deadline = time.monotonic() + timeout
    while state(dsn, device_id) != expected:
        assert time.monotonic() < deadline, f"presence stayed {state(dsn, device_id)}"
        time.sleep(0.05)


def drop_connection(device: SimDevice) -> None:
    """Cut the device's TCP connection without DISCONNECT, so the broker sends its will."""
    assert device._client is not None
    sock = device._client.socket()
    assert isinstance(sock, socket.socket)
    device._client.on_disconnect = None
    device._client.loop_stop()
    sock.shutdown(socket.SHUT_RDWR)
    device._client = None


def test_will_marks_offline_and_late_will_never_overrides_newer_session(
    db_dsn: str, broker: Broker, root_key_file: Path, bridge_factory: Any
) -> None:
    """A will sets offline for its epoch; an older session's will after a re-key is ignored."""
    cred = fleet(db_dsn, root_key_file, 1)[0]
    bridge_factory(workers=1)
    address = BrokerAddress.parse(broker.url)
    first = SimDevice(cred, address, Tally(), random.Random(1))
    first.connect()
    wait_state(db_dsn, first.device_id, (True, first.epoch))
    drop_connection(first)
    wait_state(db_dsn, first.device_id, (False, first.epoch))

    old = SimDevice(cred, address, Tally(), random.Random(2))
    old.connect()  # session n
    new = SimDevice(cred, address, Tally(), random.Random(3))
    new.client_id += "-b"  # both connections stay up until we cut the old one
    new.connect()  # session n + 1 (same device, a second connection)
    assert new.epoch == old.epoch + 1
    wait_state(db_dsn, new.device_id, (True, new.epoch))
    drop_connection(old)  # session n's will arrives after n + 1 went online
    time.sleep(2.0)
    assert state(db_dsn, new.device_id) == (True, new.epoch)
    new.close()
