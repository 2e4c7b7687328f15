"""Device identity at the broker: dynamic security, TLS, revocation, sync (issue 4).

Everything runs against the deploy configuration (``secure_broker``: Mosquitto with dynamic
security and a TLS listener whose certificates the fixture generates) and real bridge workers.
"""

from __future__ import annotations

import getpass
import random
import socket
import ssl
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack
import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from broker_bridge.dynsec import LOADGEN, create_device, set_default_access
from broker_bridge.mqtt import BrokerAddress
from broker_bridge.mqtt_admin import DynsecAdmin
from crypto import device_keys
from crypto.broker_secrets import BrokerSecrets
from crypto.keys import parse_root_key
from crypto.pairing import proof as pairing_proof
from device_registry.model import RegistryKeys, root_key_context
from device_registry.postgres import provision
from device_registry.postgres_identity import revoke_device
from device_registry.postgres_pairing import activate, issue_token
from privacy.postgres import create_household, create_subject
from qnect.local_broker import dynsec_plugin, free_port, init_dynsec_file, wait_listening
from qnect.local_tls import ensure_local_tls
from qnect.simulator import SimDevice, Tally, run_fleet
from tests.broker_bridge.stream import Stream, fleet
from tests.broker_bridge.test_presence import drop_connection, state, wait_state
from tests.fix_bridge import REPO, bridge_env, qnect, qnect_json
from tests.fix_mqtt import SecureBroker

NOT_AUTHORIZED = 135


class Raw:
    """A bare paho client that records what the broker answered."""

    def __init__(self, address: BrokerAddress, client_id: str, user: str | None, pw: str | None):
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
        )
        if user is not None:
            self.client.username_pw_set(user, pw)
        if address.tls:
            self.client.tls_set(ca_certs=address.ca_file)
        self.connack: int | None = None
        self.acks: dict[int, int] = {}
        self.subacks: list[int] = []
        self.disconnected = threading.Event()
        self.answered = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_publish = lambda _c, _u, mid, rc, _p: self.acks.__setitem__(mid, rc.value)
        self.client.on_subscribe = lambda _c, _u, _m, rcs, _p: self.subacks.extend(
            r.value for r in rcs
        )
        self.client.on_disconnect = lambda *_a: self.disconnected.set()
        # One thread drives the connection: OpenSSL must not read and write one TLS session
        # from two threads at once (paho's loop_start plus publishing from the test would).
        self.client.connect(address.host, address.port, keepalive=30)
        assert self.pump_until(self.answered.is_set), "no CONNACK"

    def pump_until(self, done: Any, timeout: float = 10) -> bool:
        """Run the network loop in this thread until *done()* or *timeout*."""
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            self.client.loop(timeout=0.05)
        return bool(done())

    def _on_connect(self, _c: object, _u: object, _f: object, reason: Any, _p: object) -> None:
        self.connack = reason.value
        self.answered.set()

    def publish(self, topic: str, payload: bytes) -> int:
        """Publish at QoS 1; returns the PUBACK reason code."""
        info = self.client.publish(topic, payload, qos=1)
        self.pump_until(lambda: info.mid in self.acks)
        return self.acks[info.mid]

    def subscribe(self, topic: str) -> int:
        """Subscribe at QoS 1; returns the SUBACK reason code."""
        before = len(self.subacks)
        self.client.subscribe(topic, qos=1)
        self.pump_until(lambda: len(self.subacks) > before)
        return self.subacks[-1]

    def close(self) -> None:
        """Disconnect and stop the loop."""
        self.client.disconnect()


def device(cred: dict[str, Any], broker: SecureBroker, seed: int = 1) -> SimDevice:
    """A simulated device connected over TLS with its own credentials (key exchange done)."""
    d = SimDevice(cred, BrokerAddress.parse(broker.device_url), Tally(), random.Random(seed))
    d.connect()
    return d


@pytest.fixture(scope="module")
def creds(db_dsn: str, root_key_file: Path, secure_broker: SecureBroker) -> list[dict[str, Any]]:
    """One device per model, created at the broker as provisioning would."""
    made = fleet(db_dsn, root_key_file, 1)
    secure_broker.push(made)
    return made


def test_device_cannot_touch_another_devices_topics(
    db_dsn: str,
    secure_broker: SecureBroker,
    creds: list[dict[str, Any]],
    secure_bridge_factory: Any,
) -> None:
    """A publishes into and subscribes to B's topics: refused by the broker; nothing for B."""
    secure_bridge_factory(workers=1)
    a, b = creds[0], creds[1]
    victim = b["device_id"]
    own = device(a, secure_broker)  # TLS + own credentials + key exchange through the bridge
    own.close()
    address = BrokerAddress.parse(secure_broker.device_url)

    def login() -> Raw:
        raw = Raw(address, a["device_id"], a["device_id"], a["mqtt_password"])
        assert raw.connack == 0
        return raw

    # Mosquitto 2.0.11 answers a denied publish with PUBACK 135 and then drops the connection
    # ("Bad socket read/write"), so each attempt gets a fresh one.
    frame = bytes(64)
    forbidden = [f"devices/{victim}/up/{kind}" for kind in ("telemetry", "status", "info", "kx")]
    forbidden += [f"devices/{victim}/down/receipt", f"devices/{a['device_id']}/down/receipt"]
    for topic in forbidden:
        raw = login()
        assert raw.publish(topic, frame) == NOT_AUTHORIZED, topic
        raw.pump_until(raw.disconnected.is_set, timeout=3)
        raw.close()
    raw = login()
    try:
        for topic in (f"devices/{victim}/down/#", f"devices/{victim}/up/#", "devices/#", "#"):
            assert raw.subscribe(topic) >= 0x80, topic
        assert raw.subscribe("$share/ingest/devices/+/up/#") >= 0x80
        assert raw.subscribe(f"devices/{a['device_id']}/down/#") == 1  # its own: QoS 1
    finally:
        raw.close()
    time.sleep(3)  # anything that slipped through would be processed by now
    with psycopg.connect(db_dsn) as conn:
        for table in ("quarantine", "frames", "device_sessions", "device_state"):
            query = f"SELECT count(*) FROM {table} WHERE device_id = %s"  # noqa: S608 - fixed names
            row = conn.execute(query.encode(), (victim,)).fetchone()
            assert row == (0,), table


def test_wrong_credentials_are_refused(
    secure_broker: SecureBroker, creds: list[dict[str, Any]]
) -> None:
    """Wrong password, another device's password, a foreign client id, anonymous: refused."""
    a, b = creds[0], creds[1]
    address = BrokerAddress.parse(secure_broker.device_url)
    attempts = [
        (a["device_id"], a["device_id"], "wrong-password"),
        (a["device_id"], a["device_id"], b["mqtt_password"]),
        ("someone-else", a["device_id"], a["mqtt_password"]),  # client id is pinned
        (b["device_id"], a["device_id"], a["mqtt_password"]),  # B's client id with A's login
        (a["device_id"], None, None),  # anonymous
    ]
    for client_id, user, pw in attempts:
        raw = Raw(address, client_id, user, pw)
        assert raw.connack == NOT_AUTHORIZED, (client_id, user)
    # The internal listener refuses devices' wrong passwords the same way.
    raw = Raw(secure_broker.address, a["device_id"], a["device_id"], "nope")
    assert raw.connack == NOT_AUTHORIZED


def test_tls_listener_requires_a_trusted_certificate(
    secure_broker: SecureBroker, creds: list[dict[str, Any]], tmp_path: Path
) -> None:
    """A client that does not trust the broker's CA fails the handshake; plain MQTT gets nothing."""
    untrusted = ensure_local_tls(tmp_path / "other").ca
    context = ssl.create_default_context(cafile=str(untrusted))
    with (
        socket.create_connection(("127.0.0.1", secure_broker.tls_port), timeout=5) as sock,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(sock, server_hostname="127.0.0.1")
    trusted = ssl.create_default_context(cafile=str(secure_broker.tls.ca))  # type: ignore[union-attr]
    with (
        socket.create_connection(("127.0.0.1", secure_broker.tls_port), timeout=5) as sock,
        trusted.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() in {"TLSv1.2", "TLSv1.3"}
    with socket.create_connection(("127.0.0.1", secure_broker.tls_port), timeout=5) as sock:
        connect = b"\x10\x10\x00\x04MQTT\x05\x02\x00\x1e\x00\x00\x03abc"  # MQTT 5 CONNECT
        sock.sendall(connect)
        try:
            answer = sock.recv(16)
        except (ConnectionResetError, TimeoutError):
            answer = b""
        assert not answer.startswith(b"\x20"), "plain MQTT got a CONNACK on the TLS listener"


def _quarantined(dsn: str, device_id: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM quarantine WHERE device_id = %s", (device_id,))
        found = row.fetchone()
    return int(found[0]) if found else 0


def _revoke_env(db_dsn: str, broker: SecureBroker, root_key_file: Path) -> dict[str, str]:
    return bridge_env(db_dsn, broker, root_key_file)


def test_revoked_device_is_disconnected_refused_and_its_frames_rejected(
    db_dsn: str,
    root_key_file: Path,
    secure_broker: SecureBroker,
    secure_bridge_factory: Any,
) -> None:
    """`qnect device revoke`: kicked within 2 s, cannot reconnect, in-flight frames refused."""
    cred = fleet(db_dsn, root_key_file, 1)[0]
    secure_broker.push([cred])
    secure_bridge_factory(workers=1)
    sim = device(cred, secure_broker)
    # A frame sealed under the live session, held back as if still queued in the broker.
    body = msgpack.packb({"t": int(time.time() * 1000), "d": sim.telemetry()})
    _counter, late_frame = sim.seal("telemetry", body)
    kicked = threading.Event()
    assert sim._client is not None
    sim._client.on_disconnect = lambda *_a: kicked.set()

    started = time.monotonic()
    result = qnect_json(
        "device", "revoke", cred["device_id"], env=_revoke_env(db_dsn, secure_broker, root_key_file)
    )
    assert result == {"revoked": True, "disconnected": True}
    assert kicked.wait(2.0), "revoked device still connected after 2 s"
    print(f"\nrevoked device disconnected {time.monotonic() - started:.2f} s after the command")

    with psycopg.connect(db_dsn) as conn:
        row = conn.execute(
            "SELECT status, root_key_wrapped IS NULL AND drk_next_wrapped IS NULL "
            "AND drk_prev_wrapped IS NULL FROM devices WHERE device_id = %s",
            (cred["device_id"],),
        ).fetchone()
    assert row == ("revoked", True)
    with pytest.raises(ConnectionRefusedError):
        device(cred, secure_broker, seed=2)

    assert secure_broker.secrets is not None
    loadgen = Raw(secure_broker.service_address(LOADGEN), "loadgen-1", LOADGEN, None)
    assert loadgen.connack == NOT_AUTHORIZED
    injector = Raw(
        secure_broker.address, "loadgen-2", LOADGEN, secure_broker.secrets.service(LOADGEN)
    )
    # Workers cache devices for up to 2 s (telemetry.directory DEFAULT_TTL_MS): a frame that
    # arrives later than that after the revocation is refused; the kick above came sooner.
    time.sleep(max(0.0, started + 2.5 - time.monotonic()))
    try:
        assert injector.publish(sim.topic("telemetry"), late_frame) == 0
    finally:
        injector.close()
    deadline = time.monotonic() + 15
    while not _quarantined(db_dsn, cred["device_id"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    with psycopg.connect(db_dsn) as conn:
        reasons = conn.execute(
            "SELECT reason, detail FROM quarantine WHERE device_id = %s", (cred["device_id"],)
        ).fetchall()
    assert reasons == [("device_revoked", "")]

    # Revoking again is a no-op that says so.
    again = qnect(
        "device", "revoke", cred["device_id"], env=_revoke_env(db_dsn, secure_broker, root_key_file)
    )
    assert again.returncode == 0
    assert "already revoked" in again.stderr


def test_sync_rebuilds_a_broker_restored_from_an_empty_backup(
    db_dsn: str, root_key_file: Path, secure_broker: SecureBroker, secure_bridge_factory: Any
) -> None:
    """`qnect broker sync` after losing dynsec.json: devices connect again; idempotent."""
    cred = fleet(db_dsn, root_key_file, 1)[2]
    env = bridge_env(db_dsn, secure_broker, root_key_file)
    secure_broker.stop()
    (secure_broker.data_dir / "dynsec.json").unlink()  # the backup predates every device
    secure_broker.start()
    first = qnect_json("broker", "sync", env=env)
    assert first["created"] >= 1
    with psycopg.connect(db_dsn) as conn:
        active = conn.execute("SELECT count(*) FROM devices WHERE status = 'active'").fetchone()
    assert active is not None
    assert first["created"] == active[0]
    again = qnect_json("broker", "sync", env=env)
    assert again == {"created": 0, "removed": 0, "services": 1}
    secure_bridge_factory(workers=1)  # the bridge identity came back too
    sim = device(cred, secure_broker, seed=3)
    assert sim.epoch > 0
    sim.close()
    # The benchmark's loadgen identity is not the registry's: sync never creates it.
    with secure_broker.admin() as admin:
        assert LOADGEN not in admin.state().clients


def test_simulated_fleet_streams_over_tls_with_its_own_credentials(
    db_dsn: str, root_key_file: Path, secure_broker: SecureBroker, secure_bridge_factory: Any
) -> None:
    """The production path end to end: every frame confirmed, every device its own login."""
    made = fleet(db_dsn, root_key_file, 3)
    secure_broker.push(made)
    secure_bridge_factory(workers=2)
    summary = run_fleet(
        made, BrokerAddress.parse(secure_broker.device_url), messages=20, confirm_timeout_s=120
    )
    assert summary["unconfirmed"] == 0, summary
    ids = [c["device_id"] for c in made]
    with psycopg.connect(db_dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM frames WHERE device_id = ANY(%s)", (ids,)
        ).fetchone()
    assert row is not None
    assert row[0] >= 20 * len(made)


def test_presence_survives_100_rapid_reconnects_with_late_wills(
    db_dsn: str, root_key_file: Path, secure_broker: SecureBroker, secure_bridge_factory: Any
) -> None:
    """Presence stays right through 100 reconnects with late wills.

    A third of the connections are cut, so the broker fires their wills; then every old
    connection's will is delivered again, late and shuffled. Presence stays online at the
    newest session; cutting that one finally says offline.
    """
    cred = fleet(db_dsn, root_key_file, 1)[3]
    secure_broker.push([cred])
    secure_bridge_factory(workers=2)  # two workers: wills and key exchanges race each other
    rng = random.Random(5)
    sim = device(cred, secure_broker, seed=5)
    root = bytes.fromhex(cred["root_key"])
    wills: list[bytes] = []
    for i in range(100):
        wills.append(_will_frame(sim, root))
        if i % 3 == 0:
            drop_connection(sim)  # the broker publishes this connection's will now
            sim.connect()
        else:
            sim.reconnect()  # clean DISCONNECT: no will from the broker
    newest = sim.epoch
    wait_state(db_dsn, sim.device_id, (True, newest))
    rng.shuffle(wills)
    for frame in wills:  # late: every one belongs to an older session
        sim.publish(sim.topic("status"), frame)
    time.sleep(3)
    assert state(db_dsn, sim.device_id) == (True, newest)
    with psycopg.connect(db_dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM presence_events WHERE device_id = %s AND NOT online",
            (sim.device_id,),
        ).fetchone()
    assert row is not None
    assert row[0] >= 34  # the wills of the cut connections were seen, and kept as events
    drop_connection(sim)
    wait_state(db_dsn, sim.device_id, (False, newest))


def _will_frame(sim: SimDevice, root: bytes) -> bytes:
    """The sealed last will of *sim*'s current connection (what the broker holds for it)."""
    return device_keys.seal_frame(
        device_keys.will_keys(root, sim.device_id),
        epoch=0,
        counter=sim._cid,
        plaintext=msgpack.packb({"t": int(time.time() * 1000), "d": {"online": False}}),
        device_id=sim.device_id,
        topic=sim.topic("status"),
        flags=device_keys.Flags.WILL,
    )


def test_shipped_production_config_starts_and_serves_devices_over_tls(
    tmp_path: Path, root_key_file: Path, db_dsn: str
) -> None:
    """`mosquitto -c deploy/mosquitto/mosquitto.conf` (paths and ports moved into tmp) works."""
    text = (REPO / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    tls = ensure_local_tls(tmp_path / "certs")
    port, tls_port = free_port(), free_port()
    replaced = {
        "listener 1883 127.0.0.1": f"listener {port} 127.0.0.1",
        "listener 8883": f"listener {tls_port} 127.0.0.1",
        "/etc/mosquitto/certs/server.crt": str(tls.cert),
        "/etc/mosquitto/certs/server.key": str(tls.key),
        "/etc/mosquitto/certs/ca.crt": str(tls.ca),
        "/var/lib/mosquitto/": f"{tmp_path}/",
        "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so": dynsec_plugin(),
        "log_dest syslog": f"log_dest file {tmp_path}/mosquitto.log",
    }
    for old, new in replaced.items():
        assert old in text, old
        text = text.replace(old, new)
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"user {getpass.getuser()}\n" + text)
    secrets = BrokerSecrets(parse_root_key(root_key_file.read_text()))
    init_dynsec_file(tmp_path / "dynsec.json", secrets.service("admin"))
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL)
    try:
        wait_listening(proc, port, what="mosquitto", timeout_s=10)
        cred = fleet(db_dsn, root_key_file, 1)[4]
        with DynsecAdmin(BrokerAddress("127.0.0.1", port), secrets.service("admin")) as admin:
            admin.run(
                [set_default_access(), *create_device(cred["device_id"], cred["mqtt_password"])]
            )
        address = BrokerAddress("127.0.0.1", tls_port, tls=True, ca_file=str(tls.ca))
        raw = Raw(address, cred["device_id"], cred["device_id"], cred["mqtt_password"])
        assert raw.connack == 0
        assert raw.subscribe(f"devices/{cred['device_id']}/down/#") == 1
        raw.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_concurrent_admins_never_take_each_others_responses(secure_broker: SecureBroker) -> None:
    """Two admin connections interleave batches; each gets exactly its own answers."""
    with secure_broker.admin() as one, secure_broker.admin() as two:
        for i in range(5):
            a = one.run([{"command": "listRoles", "count": -1}, {"command": "getDefaultACLAccess"}])
            b = two.run([{"command": "listClients", "count": -1}])
            assert [r["command"] for r in a] == ["listRoles", "getDefaultACLAccess"], i
            assert [r["command"] for r in b] == ["listClients"], i


def test_paired_device_gets_an_operational_key_and_the_factory_key_is_retired(
    db_dsn: str, root_key_file: Path, secure_broker: SecureBroker, secure_bridge_factory: Any
) -> None:
    """Pairing gives the device an operational root key; the factory key is retired.

    The bridge offers the staged key on the downlink while the device streams; nothing is
    rejected; after the grace the factory key is destroyed.
    """
    keys = RegistryKeys.from_root_key(parse_root_key(root_key_file.read_text()))
    now = datetime.now(UTC)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        household = create_household(conn)
        owner = create_subject(conn, keys.ring.kek(1), household, email="o@x.test", name=None)
        cred = provision(conn, keys, "plug", 1)[0]
        token = issue_token(conn, owner, household, now=now).token
        ts_ms = int(now.timestamp() * 1000)
        tag = pairing_proof(cred.root_key, cred.device_id, token, household, ts_ms)
        done = activate(
            conn,
            keys.ring,
            device_id=cred.device_id,
            token=token,
            household_id=household,
            ts_ms=ts_ms,
            proof=tag,
            now=now,
        )
    assert done.operational_key_staged
    creds = [cred.to_json()]
    secure_broker.push(creds)
    secure_bridge_factory(workers=1, QNECT_DRK_GRACE_S="2")
    stream = Stream(creds, secure_broker.device_url, messages=120, rate=30, seed=3)
    stream.start()
    deadline = time.monotonic() + 30
    query = "SELECT drk_version, drk_prev_version FROM devices WHERE device_id = %s"
    while True:
        with psycopg.connect(db_dsn) as conn:
            row = conn.execute(query, (cred.device_id,)).fetchone()
        if row == (2, 1):
            break
        assert time.monotonic() < deadline, f"not rotated: {row}"
        time.sleep(0.2)
    summary = stream.result()
    assert summary["unconfirmed"] == 0, summary
    assert _quarantined(db_dsn, cred.device_id) == 0
    with psycopg.connect(db_dsn) as conn:
        wrapped = conn.execute(
            "SELECT root_key_wrapped FROM devices WHERE device_id = %s", (cred.device_id,)
        ).fetchone()
    assert wrapped is not None
    operational = keys.ring.unwrap(wrapped[0], context=root_key_context(cred.device_id, 2))
    assert operational != cred.root_key
    time.sleep(2.5)
    env = bridge_env(db_dsn, secure_broker, root_key_file)
    qnect_json("keys", "destroy-expired", env=env)
    with psycopg.connect(db_dsn) as conn:
        gone = conn.execute(
            "SELECT drk_prev_wrapped IS NULL FROM devices WHERE device_id = %s", (cred.device_id,)
        ).fetchone()
    assert gone == (True,)


def test_offline_sync_writes_the_whole_broker_in_linear_time(
    db_dsn: str, root_key_file: Path, secure_broker: SecureBroker, secure_bridge_factory: Any
) -> None:
    """`qnect broker sync --offline`: a stopped broker gets every identity at once, and works."""
    keys = RegistryKeys.from_root_key(parse_root_key(root_key_file.read_text()))
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        bulk = provision(conn, keys, "plug", 5000)
        revoke_device(conn, bulk[0].device_id)
    env = bridge_env(db_dsn, secure_broker, root_key_file)
    secure_broker.stop()
    started = time.monotonic()
    written = qnect_json(
        "broker", "sync", "--offline", str(secure_broker.data_dir / "dynsec.json"), env=env
    )
    took = time.monotonic() - started
    with psycopg.connect(db_dsn) as conn:
        active = conn.execute("SELECT count(*) FROM devices WHERE status = 'active'").fetchone()
    assert active is not None
    assert written["devices"] == active[0] >= 5000
    print(f"\noffline sync: {written['devices']} devices written in {took:.1f} s (incl. CLI start)")
    secure_broker.start()
    with secure_broker.admin() as admin:  # the derived admin works; the file holds everyone
        state = admin.state()
    assert bulk[1].device_id in state.clients
    assert bulk[0].device_id not in state.clients  # revoked: absent
    secure_bridge_factory(workers=1)
    sim = device(bulk[-1].to_json(), secure_broker, seed=9)
    assert sim.epoch > 0
    sim.close()
    refused = Raw(
        BrokerAddress.parse(secure_broker.device_url),
        bulk[0].device_id,
        bulk[0].device_id,
        bulk[0].mqtt_password,
    )
    assert refused.connack == NOT_AUTHORIZED


def test_bridge_over_tls_loses_nothing(
    db_dsn: str, root_key_file: Path, secure_broker: SecureBroker, secure_bridge_factory: Any
) -> None:
    """Workers on the TLS listener (one TLS session read and written under one lock)."""
    made = fleet(db_dsn, root_key_file, 4)
    secure_broker.push(made)
    secure_bridge_factory(workers=2, QNECT_MQTT_URL=secure_broker.device_url)
    summary = run_fleet(
        made,
        BrokerAddress.parse(secure_broker.device_url),
        messages=100,
        confirm_timeout_s=120,
        isolated=True,
    )
    assert summary["unconfirmed"] == 0, summary
    assert summary["reconnects"] == 0, summary
    ids = [c["device_id"] for c in made]
    with psycopg.connect(db_dsn) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT (device_id, epoch, counter)) FROM frames "
            "WHERE device_id = ANY(%s)",
            (ids,),
        ).fetchone()
    assert row is not None
    assert row[0] == row[1] >= 100 * len(made)
