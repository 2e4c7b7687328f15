"""End-to-end benchmark: the pipeline next to the physical limits, measured in one run.

Everything runs on this machine against a scratch database (on the server of
``QNECT_DATABASE_URL`` or the local default) and a private Mosquitto with the deploy
configuration; nothing else is touched. Figures, each measured here and now:

* ``broker_pipe_msgs_per_s``: a backlog of pre-encoded frames drained from a persistent session
  by a paho subscriber that only counts and acks (the ceiling of any Python consumer);
* ``naive_msgs_per_s``: the same drain with one autocommit INSERT per message;
* ``copy_rows_per_s``: binary COPY of equivalent rows into the same tables (database ceiling);
* ``pipeline_msgs_per_s``: K bridge workers draining a backlog of N sealed frames that was
  published while they were down, until every frame is committed;
* ``latency_ms_p50/p95/p99``: publish → storage receipt at a fixed offered rate (half the
  measured pipeline rate), a bound on publish → commit;
* ``lost``, ``duplicated``, ``cpu_s_per_1k_msgs`` and ``worker_peak_rss_mb`` of the workers.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mqtt5
import msgpack
import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from psycopg import sql

from broker_bridge.dynsec import BRIDGE, LOADGEN, create_device, create_service, set_default_access
from broker_bridge.mqtt import BrokerAddress
from broker_bridge.mqtt_admin import DynsecAdmin
from crypto.broker_secrets import BrokerSecrets
from crypto.keys import parse_root_key
from device_registry.model import RegistryKeys
from device_registry.postgres import provision
from device_registry.profiles import MODELS
from qnect import local_broker
from qnect.bridge import worker_pids
from qnect.migrate import layout, migrate
from qnect.rights import adopt, build
from qnect.settings import create_root_key_file
from qnect.simulator import Pump, SimDevice, Tally, telemetry_values

LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
WARMUP_S = 1.0
Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """Sizes of a run."""

    devices: int = 1000  # devices that send
    provisioned: int = 0  # extra devices only provisioned (registry size for the RSS figure)
    messages: int = 200_000  # backlog size for the pipeline and broker-pipe phases
    workers: int = 2
    naive_messages: int = 20_000  # the naive consumer is slow; a smaller backlog suffices
    latency_s: float = 10.0
    timescale: str = "auto"


@dataclass
class Frame:
    """A sealed uplink frame ready to publish."""

    device_id: str
    counter: int
    topic: str
    payload: bytes


@dataclass
class Env:
    """The scratch services of a run."""

    dsn: str
    broker: subprocess.Popen[bytes]
    url: str
    root_key_file: Path
    loadgen_url: str  # the benchmark's own identity: publishes as any device, bench/ topics
    creds: list[dict[str, Any]] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """Process environment for qnect subprocesses."""
        return dict(
            os.environ,
            QNECT_DATABASE_URL=self.dsn,
            QNECT_MQTT_URL=self.url,
            QNECT_ROOT_KEY_FILE=str(self.root_key_file),
            # The load generator stamps a whole backlog within seconds, which per device is a
            # flood: the limits are policy, not capacity, so they are lifted here (the token
            # buckets still run on every frame).
            QNECT_RATE_LIVE_PER_S="1e9",
            QNECT_RATE_LIVE_BURST="1e9",
        )


def _scalar(dsn: str, query: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query.encode()).fetchone()
        return int(row[0]) if row and row[0] is not None else 0


@contextlib.contextmanager
def scratch(admin_dsn: str, options: BenchOptions, say: Progress) -> Iterator[Env]:
    """Create a scratch database, root key and broker; remove them afterwards."""
    name = f"qnect_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = admin_dsn.rsplit("/", 1)[0] + "/" + name
    with tempfile.TemporaryDirectory(prefix="qnect-bench-") as tmp:
        key = Path(tmp) / "root.key"
        create_root_key_file(key)
        port = local_broker.free_port()
        secrets_ = BrokerSecrets(parse_root_key(key.read_text()))
        # The deploy configuration: dynamic security, so ACL checks are part of every figure.
        broker = local_broker.start_mosquitto(
            Path(tmp) / "mosquitto", port, admin_password=secrets_.service("admin")
        )
        try:
            address = BrokerAddress("127.0.0.1", port)
            with DynsecAdmin(address, secrets_.service("admin")) as admin:
                admin.run(
                    [
                        set_default_access(),
                        *create_service(BRIDGE, secrets_.service(BRIDGE)),
                        *create_service(LOADGEN, secrets_.service(LOADGEN)),
                    ]
                )
            migrate(dsn, timescale=options.timescale)
            say(f"scratch database {name}, mosquitto (dynamic security) on 127.0.0.1:{port}")
            loadgen = f"mqtt://{LOADGEN}:{secrets_.service(LOADGEN)}@127.0.0.1:{port}"
            yield Env(dsn, broker, f"mqtt://127.0.0.1:{port}", key, loadgen)
        finally:
            broker.terminate()
            broker.wait(10)
            with psycopg.connect(admin_dsn, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


def _provision(env: Env, options: BenchOptions, say: Progress) -> None:
    keys = RegistryKeys.from_root_key(parse_root_key(env.root_key_file.read_text()))
    with psycopg.connect(env.dsn) as conn:
        per_model = max(1, options.devices // len(MODELS))
        for model in MODELS:
            env.creds += [c.to_json() for c in provision(conn, keys, model, per_model)]
        # Scale readings are stored only under an owner's explicit health consent.
        scales = [str(c["device_id"]) for c in env.creds if c["model"] == "scale"]
        adopt(conn, build(parse_root_key(env.root_key_file.read_text())), scales, email="b@x.test")
        # Only devices that connect need a broker identity; the idle ones stay in the registry.
        with DynsecAdmin(BrokerAddress.parse(env.url), keys.broker.service("admin")) as admin:
            admin.run(
                [c for d in env.creds for c in create_device(d["device_id"], d["mqtt_password"])]
            )
        extra = options.provisioned
        while extra > 0:
            provision(conn, keys, "plug", min(extra, 5000))
            extra -= 5000
    say(f"provisioned {len(env.creds)} sending devices (+{options.provisioned} idle)")


# -- MQTT helpers ------------------------------------------------------------------------------
def _client(client_id: str, url: str, *, clean: bool, manual_ack: bool = False) -> paho.Client:
    address = BrokerAddress.parse(url)
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5,
        manual_ack=manual_ack,
    )
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = 4000
    if address.username is not None:
        client.username_pw_set(address.username, address.password)
    client.connect(address.host, address.port, clean_start=clean, properties=props)
    return client


class FastPublisher:
    """A QoS 1 publisher on the sans-I/O ``mqtt5`` package.

    The load generator must not need more CPU than what it loads: paho costs ~50 µs per
    publish here, this ~5 µs.
    """

    IN_FLIGHT = 1000  # unacknowledged publishes allowed before publish() waits

    def __init__(self, url: str) -> None:
        address = BrokerAddress.parse(url)
        self._sock = socket.create_connection((address.host, address.port), timeout=10)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The timeout was for connecting only: the reader thread waits as long as it must
        # (an idle publisher is normal while a phase prepares its frames).
        self._sock.settimeout(None)
        client_id = f"bench-pub-{secrets.token_hex(3)}"
        password = address.password.encode() if address.password else None
        connect = mqtt5.ConnectPacket(
            client_id, username=address.username, password=password, clean_start=True
        )
        self._sock.sendall(connect.write())
        self._acked = 0
        self._sent = 0
        self._packet_id = 0
        self._changed = threading.Condition()
        self._connected = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True, name="bench-pub")
        self._reader.start()
        if not self._connected.wait(10):
            raise TimeoutError("no successful CONNACK (refused login?)")

    def _read(self) -> None:
        buffer = bytearray()
        while data := self._sock.recv(65536):
            buffer += data
            offset, acked = 0, 0
            with memoryview(buffer) as view:
                while True:
                    try:
                        packet, size = mqtt5.read(view[offset:])
                    except IndexError:
                        break
                    offset += size
                    acked += isinstance(packet, mqtt5.PubAckPacket)
                    if (
                        isinstance(packet, mqtt5.ConnAckPacket)
                        and packet.reason_code == mqtt5.ConnAckReasonCode.SUCCESS
                    ):
                        self._connected.set()
            del buffer[:offset]
            if acked:
                with self._changed:
                    self._acked += acked
                    self._changed.notify_all()

    def publish(self, topic: str, payload: bytes) -> None:
        """Send one QoS 1 publish, waiting while too many are unacknowledged."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._sent - self._acked < self.IN_FLIGHT, 60):
                raise TimeoutError("broker stopped acknowledging publishes")
        self._packet_id = self._packet_id % 65535 + 1
        packet = mqtt5.PublishPacket(
            topic, payload, qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=self._packet_id
        )
        self._sock.sendall(packet.write())
        self._sent += 1

    def close(self) -> None:
        """Wait for every PUBACK, then disconnect."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._acked >= self._sent, 120):
                raise TimeoutError("publishes not acknowledged")
        self._sock.sendall(mqtt5.DisconnectPacket().write())
        # Shut down first: the reader thread then sees end-of-stream instead of its socket
        # vanishing under a blocked recv() (EBADF).
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._reader.join(5)
        self._sock.close()


def publish_all(url: str, items: list[tuple[str, bytes]]) -> float:
    """Publish (topic, payload) pairs at QoS 1 as fast as possible; returns seconds."""
    publisher = FastPublisher(url)
    started = time.perf_counter()
    for topic, payload in items:
        publisher.publish(topic, payload)
    publisher.close()
    return time.perf_counter() - started


class Drainer:
    """A persistent-session subscriber: create it, fill its backlog, then time the drain."""

    def __init__(self, url: str, filter_: str, handle: Callable[[paho.MQTTMessage], None]) -> None:
        self.url, self.filter, self.handle = url, filter_, handle
        self.client_id = f"bench-sub-{secrets.token_hex(3)}"
        client = _client(self.client_id, url, clean=True)
        client.loop_start()
        done = threading.Event()
        client.on_subscribe = lambda *_a: done.set()
        client.subscribe(filter_, qos=1)
        done.wait(10)
        client.disconnect()
        client.loop_stop()

    def drain(self, total: int, timeout: float = 600) -> float:
        """Reconnect and process *total* messages; returns seconds from connect to the last."""
        got = 0
        finished = threading.Event()

        def on_message(client: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
            nonlocal got
            self.handle(msg)
            client.ack(msg.mid, msg.qos)
            got += 1
            if got >= total:
                finished.set()

        client = _client(self.client_id, self.url, clean=False, manual_ack=True)
        client.on_message = on_message
        started = time.perf_counter()
        client.loop_start()
        finished.wait(timeout)
        elapsed = time.perf_counter() - started
        client.disconnect()
        client.loop_stop()
        if got < total:
            raise RuntimeError(f"drained only {got} of {total}")
        return elapsed


# -- the phases ---------------------------------------------------------------------------------
class Bridge:
    """``qnect bridge`` as a subprocess tree, with the CPU and memory of its workers."""

    def __init__(self, env: Env, workers: int) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "qnect", "bridge", "--workers", str(workers)],
            env=env.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.workers = workers

    def worker_pids(self) -> list[int]:
        """PIDs of the worker processes."""
        return worker_pids(self.proc.pid)

    def usage(self) -> tuple[float, float]:
        """(CPU seconds, peak RSS MB) summed / maxed over the workers."""
        tick = os.sysconf("SC_CLK_TCK")
        cpu, rss = 0.0, 0.0
        for pid in self.worker_pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                cpu += (int(fields[11]) + int(fields[12])) / tick
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        rss = max(rss, int(line.split()[1]) / 1024)
        return cpu, rss

    def stop(self) -> None:
        """SIGTERM and wait."""
        self.proc.terminate()
        self.proc.wait(60)


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


def _sessions(env: Env, say: Progress) -> list[SimDevice]:
    """Run every device's key exchange once (the bridge must be running)."""
    pump = Pump()
    fleet = [
        SimDevice(c, BrokerAddress.parse(env.url), Tally(), random.Random(i), pump)
        for i, c in enumerate(env.creds)
    ]
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda d: d.connect(), fleet))
    for d in fleet:
        d.close()
    pump.stop()
    say(f"{len(fleet)} devices did their key exchange")
    return fleet


def _seal(fleet: list[SimDevice], total: int) -> list[Frame]:
    """Pre-seal *total* telemetry frames round-robin over the fleet."""
    rng = random.Random(42)
    now = int(time.time() * 1000)
    frames = []
    for i in range(total):
        d = fleet[i % len(fleet)]
        body = msgpack.packb({"t": now, "d": telemetry_values(d.model, rng)})
        counter, payload = d.seal("telemetry", body)
        frames.append(Frame(d.device_id, counter, d.topic("telemetry"), payload))
    return frames


def pipeline_phase(
    env: Env, fleet: list[SimDevice], options: BenchOptions, say: Progress
) -> dict[str, Any]:
    """Backlog of N sealed frames while the workers are down, then time the drain."""
    frames = _seal(fleet, options.messages)
    pub_s = publish_all(env.loadgen_url, [(f.topic, f.payload) for f in frames])
    say(f"published {len(frames)} frames in {pub_s:.1f} s while the bridge was down")
    before = _scalar(env.dsn, "SELECT count(*) FROM frames")
    bridge = Bridge(env, options.workers)
    started = time.perf_counter()
    first: float | None = None

    def done() -> bool:
        nonlocal first
        n = _scalar(env.dsn, "SELECT count(*) FROM frames") - before
        if n and first is None:
            first = time.perf_counter()
        return n >= len(frames)

    try:
        _wait(done, 600, "pipeline drain")
        elapsed = time.perf_counter() - started
        cpu, rss = bridge.usage()
    finally:
        bridge.stop()
    stored = _scalar(env.dsn, "SELECT count(*) FROM frames") - before
    distinct = _scalar(env.dsn, "SELECT count(DISTINCT (device_id, epoch, counter)) FROM frames")
    drain_s = elapsed - ((first or started) - started)
    return {
        "pipeline_msgs_per_s": round(len(frames) / drain_s),
        "pipeline_incl_start_msgs_per_s": round(len(frames) / elapsed),
        "lost": len(frames) - stored if stored < len(frames) else 0,
        "duplicated": (stored + before) - distinct,
        "cpu_s_per_1k_msgs": round(cpu / len(frames) * 1000, 3),
        "worker_peak_rss_mb": round(rss, 1),
    }


def broker_pipe_phase(env: Env, frames: list[Frame]) -> float:
    """Drain rate of a counting-only paho subscriber, same frames, same broker."""
    drainer = Drainer(env.loadgen_url, "bench/pipe/#", lambda _m: None)
    publish_all(
        env.loadgen_url, [(f"bench/pipe/{i % 64}", f.payload) for i, f in enumerate(frames)]
    )
    return len(frames) / drainer.drain(len(frames))


def naive_phase(env: Env, frames: list[Frame]) -> float:
    """Drain rate with one autocommit INSERT per message (the common MQTT-to-SQL script)."""
    conn = psycopg.connect(env.dsn, autocommit=True)
    conn.execute("CREATE TABLE naive_frames (topic text, payload bytea, received_at timestamptz)")

    def insert(msg: paho.MQTTMessage) -> None:
        conn.execute(
            "INSERT INTO naive_frames VALUES (%s, %s, now())", (msg.topic, bytes(msg.payload))
        )

    drainer = Drainer(env.loadgen_url, "bench/naive/#", insert)
    publish_all(
        env.loadgen_url, [(f"bench/naive/{i % 64}", f.payload) for i, f in enumerate(frames)]
    )
    try:
        return len(frames) / drainer.drain(len(frames))
    finally:
        conn.close()


def copy_phase(env: Env, frames: int) -> tuple[float, float]:
    """Binary COPY of the rows N frames make (ledger + telemetry rows); (rows/s, frames/s)."""
    rng = random.Random(7)
    now = datetime.now(UTC)
    ledger: list[tuple[object, ...]] = []
    data: list[tuple[object, ...]] = []
    for i in range(frames):
        device = f"copy{i % 1000:012d}"
        ledger.append((now, device, 1, i + 1, 1, now))
        data.extend((now, device, p, rng.random()) for p in range(1, 5))
    with psycopg.connect(env.dsn) as conn, conn.cursor() as cur:
        started = time.perf_counter()
        with cur.copy("COPY frames FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["timestamptz", "text", "int8", "int8", "int2", "timestamptz"])
            for row in ledger:
                copy.write_row(row)
        with cur.copy(
            "COPY telemetry (ts, device_id, point, value) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["timestamptz", "text", "int2", "float8"])
            for row in data:
                copy.write_row(row)
        conn.commit()
        elapsed = time.perf_counter() - started
        conn.execute("DELETE FROM telemetry WHERE device_id LIKE 'copy%%'")
        conn.execute("DELETE FROM frames WHERE device_id LIKE 'copy%%'")
    return (len(ledger) + len(data)) / elapsed, frames / elapsed


def latency_phase(
    env: Env, fleet: list[SimDevice], rate: float, options: BenchOptions
) -> dict[str, float]:
    """Publish at *rate* for a while; latency = publish → the ledger row being written.

    The ledger's ``received_at`` is taken just before COMMIT on the same clock, so no
    receipt listener has to compete with the workers for CPU.
    """
    sent: dict[tuple[str, int], float] = {}
    # The first second warms the workers' device caches (key unwrapping) and is not
    # measured: the figure is the steady state.
    warmup = int(rate * WARMUP_S)
    frames = _seal(fleet, warmup + int(rate * options.latency_s))
    bridge = Bridge(env, options.workers)
    publisher = FastPublisher(env.loadgen_url)
    before = _scalar(env.dsn, "SELECT count(*) FROM frames")
    try:
        _wait(lambda: len(bridge.worker_pids()) >= options.workers, 30, "workers")
        time.sleep(2.0)  # let workers connect and resubscribe
        # Paced in 1 ms steps: everything due is sent, then one sleep. A sleep per message
        # would make the load generator one of the busiest processes on the machine.
        started, i = time.perf_counter(), 0
        while i < len(frames):
            due = min(len(frames), int((time.perf_counter() - started) * rate) + 1)
            for f in frames[i:due]:
                if i >= warmup:
                    sent[(f.device_id, f.counter)] = time.time()
                publisher.publish(f.topic, f.payload)
                i += 1
            time.sleep(0.001)
        target = before + len(frames)
        _wait(lambda: _scalar(env.dsn, "SELECT count(*) FROM frames") >= target, 120, "commits")
    finally:
        bridge.stop()
        publisher.close()
    with psycopg.connect(env.dsn) as conn:
        rows = conn.execute(
            "SELECT device_id, counter, extract(epoch FROM received_at) FROM frames "
            "ORDER BY received_at DESC LIMIT %s",
            (len(frames),),
        ).fetchall()
    latencies = sorted((float(at) - sent[(d, c)]) * 1000 for d, c, at in rows if (d, c) in sent)

    def pct(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1)

    return {
        "latency_offered_msgs_per_s": round(rate),
        "latency_ms_p50": pct(0.50),
        "latency_ms_p95": pct(0.95),
        "latency_ms_p99": pct(0.99),
    }


def run(admin_dsn: str, options: BenchOptions, say: Progress) -> dict[str, Any]:
    """The whole benchmark; returns the result object."""
    with scratch(admin_dsn, options, say) as env:
        _provision(env, options, say)
        bridge = Bridge(env, options.workers)
        try:
            _wait(lambda: len(bridge.worker_pids()) >= options.workers, 30, "workers")
            time.sleep(2.0)
            fleet = _sessions(env, say)
        finally:
            bridge.stop()
        result: dict[str, Any] = {"cores": os.cpu_count(), "workers": options.workers}
        result["layout"] = layout(env.dsn)  # timescale (hypertables) or native partitions
        result["messages"] = options.messages
        result["devices"] = len(fleet)
        result["provisioned_devices"] = len(fleet) + options.provisioned
        result.update(pipeline_phase(env, fleet, options, say))
        say(f"pipeline: {result['pipeline_msgs_per_s']} msg/s")
        probe = _seal(fleet, options.messages)
        result["broker_pipe_msgs_per_s"] = round(broker_pipe_phase(env, probe))
        say(f"broker pipe: {result['broker_pipe_msgs_per_s']} msg/s")
        result["naive_msgs_per_s"] = round(naive_phase(env, probe[: options.naive_messages]))
        say(f"naive: {result['naive_msgs_per_s']} msg/s")
        rows, frames = copy_phase(env, options.messages)
        result["copy_rows_per_s"] = round(rows)
        result["copy_frames_per_s"] = round(frames)
        say(f"copy: {result['copy_rows_per_s']} rows/s")
        result.update(latency_phase(env, fleet, result["pipeline_msgs_per_s"] / 2, options))
        result["pipeline_vs_broker_pipe"] = round(
            result["pipeline_msgs_per_s"] / result["broker_pipe_msgs_per_s"], 3
        )
        result["pipeline_vs_naive"] = round(
            result["pipeline_msgs_per_s"] / result["naive_msgs_per_s"], 2
        )
    return result
