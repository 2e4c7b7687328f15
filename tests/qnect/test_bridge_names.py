"""Scale-out naming: each `qnect bridge` owns `qnect-bridge-<name>-<i>` and drains only those."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
import pydantic
import pytest
from pydantic import SecretStr

from qnect.bridge import owned, session_id
from qnect.local_broker import free_port
from qnect.settings import Settings
from tests.broker_bridge.stream import Stream, assert_complete, fleet
from tests.fix_bridge import bridge_env, qnect
from tests.fix_mqtt import Broker
from tests.qnect.ops import scrape, total, wait_status


def test_session_ids_carry_the_member_name() -> None:
    """Ids are per member; a member owns its own ids and the pre-name ones, nobody else's."""
    assert session_id("host-a", 3) == "qnect-bridge-host-a-3"
    assert session_id(None, 3) == "qnect-bridge-3"
    ids = [
        "qnect-bridge-a-0",
        "qnect-bridge-a-12",
        "qnect-bridge-a-b-1",  # member "a-b", not "a"
        "qnect-bridge-b-0",
        "qnect-bridge-7",  # a session from before names existed
        "someone-else",
    ]
    assert owned(ids, "a") == [("a", 0), ("a", 12), (None, 7)]
    assert owned(ids, "a-b") == [("a-b", 1), (None, 7)]


def test_bridge_name_defaults_to_the_host_name_and_is_checked(root_key_file: Path) -> None:
    """QNECT_BRIDGE_NAME defaults to the host name; a name unfit for a client id is refused."""
    settings = Settings(database_url=SecretStr("postgresql://x/y"), root_key_file=root_key_file)
    assert settings.bridge_name
    with pytest.raises(pydantic.ValidationError):
        Settings(
            database_url=SecretStr("postgresql://x/y"),
            root_key_file=root_key_file,
            bridge_name="a/b",
        )


def _sessions(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {r[0] for r in conn.execute("SELECT client_id FROM bridge_sessions")}


def test_two_members_share_a_broker_and_drain_only_their_own(
    db_dsn: str, broker: Broker, root_key_file: Path, bridge_factory: Any
) -> None:
    """Members "a" and "b" run side by side without taking over sessions; "a" drains only its own.

    Registered before: a-0..a-3 (a ran 4 workers), b-5, c-0 (a member not running now) and a
    pre-name session. With 2 workers each, a drains a-2 and a-3, b drains b-5, one of them the
    pre-name session (under an advisory lock), and nobody touches c-0.
    """
    legacy = "qnect-bridge-7"
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        for client_id in [
            *(f"qnect-bridge-a-{i}" for i in range(4)),
            "qnect-bridge-b-5",
            "qnect-bridge-c-0",
            legacy,
        ]:
            conn.execute("INSERT INTO bridge_sessions (client_id) VALUES (%s)", (client_id,))
    ports = {"a": free_port(), "b": free_port()}
    for name, port in ports.items():
        bridge_factory(workers=2, QNECT_BRIDGE_NAME=name, QNECT_METRICS_PORT=str(port))
        wait_status(f"http://127.0.0.1:{port}/readyz")
    deadline = time.monotonic() + 30
    while {"qnect-bridge-a-2", "qnect-bridge-a-3", "qnect-bridge-b-5", legacy} & _sessions(db_dsn):
        assert time.monotonic() < deadline, _sessions(db_dsn)
        time.sleep(0.2)
    assert _sessions(db_dsn) == {
        "qnect-bridge-a-0",
        "qnect-bridge-a-1",
        "qnect-bridge-b-0",
        "qnect-bridge-b-1",
        "qnect-bridge-c-0",  # c's own business: only c drains it
    }
    creds = fleet(db_dsn, root_key_file, 4)
    stream = Stream(creds, broker.url, messages=20, seed=8)
    stream.start()
    assert_complete(db_dsn, creds, stream.result(120))
    for port in ports.values():  # a client-id collision would show as takeovers
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
        assert total(samples, "qnect_broker_reconnects_total") == 0
        assert total(samples, "qnect_ingest_frames_total", result="accepted") > 0


def test_workers_zero_retires_a_member(db_dsn: str, broker: Broker, root_key_file: Path) -> None:
    """`qnect bridge --workers 0` with a member's name drains all its sessions, then exits 0."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        for i in range(2):
            conn.execute(
                "INSERT INTO bridge_sessions (client_id) VALUES (%s) ON CONFLICT DO NOTHING",
                (f"qnect-bridge-gone-{i}",),
            )
    env = bridge_env(db_dsn, broker, root_key_file, QNECT_BRIDGE_NAME="gone")
    done = qnect("bridge", "--workers", "0", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not {s for s in _sessions(db_dsn) if s.startswith("qnect-bridge-gone-")}
