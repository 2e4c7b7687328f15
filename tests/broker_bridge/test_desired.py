"""Desired state end to end: app PATCH -> bridge worker -> sealed downlink -> device -> report.

A real PostgreSQL, the secure Mosquitto (dynamic security, devices over TLS), a real
``qnect bridge``, the API in process and a simulated device speaking protocol v1.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import paho.mqtt.client as paho
import psycopg
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import SecretStr

from broker_bridge.desired_frames import desired_topic, open_desired, seal_desired
from broker_bridge.mqtt import BrokerAddress
from crypto import device_keys
from crypto.device_keys import Flags
from crypto.errors import DecryptionFailed, MalformedFrame
from crypto.keys import parse_root_key
from device_registry.model import RegistryKeys
from qnect.api_server import build_app
from qnect.settings import Settings
from qnect.settings_api import ApiSettings
from qnect.simulator import SimDevice, Tally
from tests.api.home import Member, bearer, login, new_member
from tests.fix_bridge import count
from tests.fix_mqtt import SecureBroker

FAST = {"QNECT_DESIRED_TICK_S": "0.1"}  # deliveries within a tenth of a second


class RecordingDevice(SimDevice):
    """A simulated device that also keeps what arrives on its desired-state topic."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received: list[tuple[bytes, bool]] = []  # (payload, retain flag)

    def _on_message(self, c: paho.Client, u: object, msg: paho.MQTTMessage) -> None:
        if msg.topic.endswith("/down/desired"):
            self.received.append((bytes(msg.payload), bool(msg.retain)))
        super()._on_message(c, u, msg)


def wait(predicate: Callable[[], object], what: str, timeout: float = 15) -> None:
    """Wait until *predicate* is true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def client(db_dsn: str, root_key_file: Path) -> Iterator[TestClient]:
    """The API in process."""
    settings = Settings(database_url=SecretStr(db_dsn), root_key_file=root_key_file)
    with TestClient(build_app(settings, ApiSettings())) as c:
        yield c


def member(db_dsn: str, root_key_file: Path, name: str, model: str) -> Member:
    """A household member owning one device of *model*."""
    root = parse_root_key(root_key_file.read_text())
    return new_member(db_dsn, RegistryKeys.from_root_key(root), root, name, models=(model,))


def device(broker: SecureBroker, creds: dict[str, Any]) -> RecordingDevice:
    """A simulated device with broker credentials, not connected yet."""
    broker.push([creds])
    return RecordingDevice(creds, BrokerAddress.parse(broker.device_url), Tally(), random.Random(3))


def shadow(client: TestClient, me: dict[str, str], device_id: str) -> dict[str, Any]:
    """The app's view of a device."""
    answer = client.get(f"/v1/me/devices/{device_id}", headers=me)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def mqtt_client(address: BrokerAddress, client_id: str) -> paho.Client:
    """A connected paho client with its own network thread."""
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    if address.username is not None:
        c.username_pw_set(address.username, address.password)
    if address.tls:
        c.tls_set(ca_certs=address.ca_file)
    connected = threading.Event()
    c.on_connect = lambda *_a: connected.set()
    c.connect(address.host, address.port)
    c.loop_start()
    assert connected.wait(10), "no CONNACK"
    return c


def publish_as_bridge(broker: SecureBroker, topic: str, payload: bytes, *, retain: bool) -> None:
    """Publish on a device's downlink as the ``bridge`` identity (the only one allowed to)."""
    c = mqtt_client(broker.service_address("bridge"), f"test-bridge-{os.getpid()}")
    try:
        c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)
    finally:
        c.loop_stop()
        c.disconnect()


def retained(broker: SecureBroker, creds: dict[str, Any]) -> list[bytes]:
    """Retained messages on a device's desired topic, read with the device's own login."""
    address = BrokerAddress.parse(broker.device_url).with_login(
        creds["device_id"], creds["mqtt_password"]
    )
    got: list[bytes] = []
    c = mqtt_client(address, creds["device_id"])
    c.on_message = lambda _c, _u, msg: got.append(bytes(msg.payload)) if msg.retain else None
    try:
        c.subscribe(desired_topic(creds["device_id"]), qos=1)
        time.sleep(0.5)  # a retained message comes right after SUBACK
    finally:
        c.loop_stop()
        c.disconnect()
    return got


def test_online_device_applies_sealed_desired_state_and_confirms(
    db_dsn: str,
    client: TestClient,
    root_key_file: Path,
    secure_broker: SecureBroker,
    secure_bridge_factory: Any,
) -> None:
    """PATCH -> sealed unretained frame -> applied -> report confirms; an older version ignored."""
    alice = member(db_dsn, root_key_file, "alice", "thermostat")
    thermostat = alice.devices["thermostat"]
    secure_bridge_factory(workers=1, **FAST)
    sim = device(secure_broker, alice.creds["thermostat"])
    sim.connect()
    me = bearer(login(client, "alice")["access_token"])
    wait(lambda: shadow(client, me, thermostat)["online"], "the device online")

    url = f"/v1/me/devices/{thermostat}/desired"
    patch = {"desired": {"setpoint_c": 22.5, "mode": "cool"}}
    done = client.patch(url, json=patch, headers={**me, "If-Match": '"0"'})
    assert done.status_code == 200, done.text
    wait(lambda: sim.desired_version == 1, "version 1 at the device")
    assert sim.settings == {"setpoint_c": 225, "mode": "cool"}
    first, was_retained = sim.received[0]
    assert not was_retained
    header = device_keys.parse_header(first)  # a downlink frame of the current session
    assert header.flags == Flags.DOWN | Flags.RANDOM_COUNTER
    assert header.epoch == sim.epoch
    assert b"setpoint_c" not in first
    assert b"cool" not in first
    assert shadow(client, me, thermostat)["confirmed_at"] is None  # not reported yet

    sim.desired_step()  # the device's next report carries the settings
    wait(lambda: shadow(client, me, thermostat)["confirmed_at"], "confirmation")
    state = shadow(client, me, thermostat)
    assert state["reported"]["setpoint_c"] == 22.5
    assert state["reported"]["mode"] == "cool"
    assert state["version"] == 1

    done = client.patch(url, json={"desired": {"setpoint_c": 19}, "version": 1}, headers=me)
    assert done.status_code == 200, done.text
    wait(lambda: sim.desired_version == 2, "version 2 at the device")
    assert sim.settings == {"setpoint_c": 190, "mode": "cool"}
    sim.desired_step()
    wait(lambda: shadow(client, me, thermostat)["confirmed_at"], "confirmation of v2")

    # Version 1's frame again (a replay, or a late resend): opens, but is older, so ignored.
    publish_as_bridge(secure_broker, desired_topic(thermostat), first, retain=False)
    wait(lambda: sim.desired_ignored == 1, "version 1 ignored")
    assert sim.desired_version == 2
    assert sim.settings == {"setpoint_c": 190, "mode": "cool"}
    sim.close()


def test_offline_device_gets_desired_state_when_it_connects(
    db_dsn: str,
    client: TestClient,
    root_key_file: Path,
    secure_broker: SecureBroker,
    secure_bridge_factory: Any,
) -> None:
    """Set while offline: nothing sent or retained; after connect and key exchange it arrives."""
    bob = member(db_dsn, root_key_file, "bob", "plug")
    plug = bob.devices["plug"]
    creds = bob.creds["plug"]
    secure_bridge_factory(workers=1, **FAST)
    sim = device(secure_broker, creds)
    # What the API of old left behind: plaintext desired state, retained on the broker.
    legacy = msgpack.packb({"v": 1, "version": 1, "desired": {"relay_on": False}})
    publish_as_bridge(secure_broker, desired_topic(plug), legacy, retain=True)
    me = bearer(login(client, "bob")["access_token"])
    done = client.patch(
        f"/v1/me/devices/{plug}/desired",
        json={"desired": {"relay_on": True}},
        headers={**me, "If-Match": '"0"'},
    )
    assert done.status_code == 200, done.text
    with psycopg.connect(db_dsn, autocommit=True) as conn:  # as the migration marks old rows
        conn.execute(
            "UPDATE device_shadows SET plain_retained = true WHERE device_id = %s", (plug,)
        )
    query = f"SELECT count(*) FROM device_shadows WHERE device_id = '{plug}' AND "  # noqa: S608
    wait(lambda: count(db_dsn, query + "NOT plain_retained"), "the retained clean-up")
    time.sleep(0.3)  # a few ticks: an offline device is not sent anything
    assert count(db_dsn, query + "sent_version IS NULL") == 1
    assert retained(secure_broker, creds) == []  # the broker keeps nothing for the device

    sim.connect()
    wait(lambda: sim.desired_version == 1, "version 1 after connecting")
    assert sim.settings == {"relay_on": True}
    assert all(not r for _, r in sim.received)
    assert sim.telemetry()["relay_on"] is True
    sim.desired_step()
    wait(lambda: shadow(client, me, plug)["confirmed_at"], "confirmation")
    assert shadow(client, me, plug)["reported"]["relay_on"] is True

    # Reconnected (a new session) before confirming: sent again under the new session.
    done = client.patch(
        f"/v1/me/devices/{plug}/desired",
        json={"desired": {"relay_on": False}, "version": 1},
        headers=me,
    )
    assert done.status_code == 200, done.text
    wait(lambda: sim.desired_version == 2, "version 2")
    before = len(sim.received)
    sim.reconnect()
    wait(lambda: len(sim.received) > before, "the resend after the key exchange")
    header = device_keys.parse_header(sim.received[-1][0])
    assert header.epoch == sim.sessions[max(sim.sessions)].epoch
    assert sim.desired_version == 2
    sim.desired_step()
    wait(lambda: shadow(client, me, plug)["confirmed_at"], "confirmation of v2")
    sim.close()


def test_frames_open_only_for_their_device_topic_and_session() -> None:
    """A desired frame opens under its session; another device, session or body fails."""
    root = os.urandom(32)
    keys = device_keys.session_keys(
        root, "dev", epoch=3, device_nonce=os.urandom(16), server_nonce=os.urandom(16)
    )
    other = device_keys.session_keys(
        root, "dev", epoch=4, device_nonce=os.urandom(16), server_nonce=os.urandom(16)
    )
    frame = seal_desired(keys, "dev", 7, {"relay_on": True}, counter=99)
    state = open_desired(keys, "dev", frame)
    assert (state.version, state.values) == (7, {"relay_on": True})
    with pytest.raises(DecryptionFailed):
        open_desired(keys, "dew", frame)
    with pytest.raises(DecryptionFailed):
        open_desired(other, "dev", frame)
    bad = device_keys.seal_frame(
        keys.down,
        epoch=3,
        counter=5,
        plaintext=msgpack.packb({"v": "7", "d": {}}),
        device_id="dev",
        topic=desired_topic("dev"),
        flags=Flags.DOWN | Flags.RANDOM_COUNTER,
    )
    with pytest.raises(MalformedFrame):
        open_desired(keys, "dev", bad)
