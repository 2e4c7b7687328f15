"""A fleet of simulated devices that speak the real protocol v1 over MQTT.

Each device: connects with a sealed last will, runs the key exchange, publishes its info and
status reports and then telemetry frames, keeps every good frame until a storage receipt
confirms it, and after a reconnect (or when receipts stop coming) resends what is unconfirmed.
Optionally mixes in bad frames of every reject kind the bridge can see. Desired state from the
app (``down/desired``, sealed under the session) is applied to the device's settings and
reported back, which confirms it. Device clients are paho clients with their own network
threads; one driver thread paces publishing.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from broker_bridge.desired_frames import open_desired
from broker_bridge.mqtt import BrokerAddress
from crypto import device_keys, rekey
from crypto.device_keys import Flags, SessionKeys
from device_registry.profiles import PROFILES, PointType

if TYPE_CHECKING:
    from qnect.sim_ota import OtaAgent

KX_TIMEOUT_S = 10.0
KX_RETRY_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)  # ~60 s: a loaded bridge may answer late
BAD_KINDS = (
    "malformed_frame",
    "oversized",
    "bad_tag",
    "replay",
    "key_mismatch",
    "unknown_device",
    "bad_topic",
    "unsupported_version",
    "malformed_payload",
    "schema_violation",
    "out_of_range",
    "wrong_type",
    "stale_timestamp",
    "future_timestamp",
    "mac_mismatch",
)


def telemetry_values(model: str, rng: random.Random) -> dict[str, object]:
    """A plausible, valid telemetry reading of *model* (raw integer units)."""
    if model == "plug":
        return {
            "power_w": rng.randint(0, 20000),
            "voltage_v": rng.randint(2200, 2400),
            "current_a": rng.randint(0, 10000),
            "energy_kwh": rng.randint(0, 10**6),
            "relay_on": rng.random() < 0.5,
        }
    if model == "thermostat":
        return {
            "temperature_c": rng.randint(150, 260),
            "humidity_pct": rng.randint(300, 600),
            "setpoint_c": 50 + 5 * rng.randint(20, 50),
            "mode": rng.choice(["off", "heat", "cool", "auto"]),
        }
    if model == "scale":
        return {
            "weight_kg": rng.randint(5000, 12000),
            "bmi": rng.randint(180, 320),
            "body_fat_pct": rng.randint(100, 400),
            "skeletal_muscle_kg": rng.randint(2000, 5000),
        }
    if model == "cleaner":
        return {
            "battery_pct": rng.randint(0, 100),
            "state": rng.choice(["idle", "cleaning", "returning", "charging"]),
            "pos_x_m": rng.randint(-1000, 1000),
            "pos_y_m": rng.randint(-1000, 1000),
        }
    return {"motion": True, "media_ref": f"clips/{rng.randint(1, 10**9)}.mp4"}


IoLock = contextlib.AbstractContextManager[Any]


class Pump:
    """One network thread for all device connections of a fleet.

    paho's ``loop_start`` costs a thread per device and a wake-up syscall per publish; here
    publishes are written directly by the publishing thread and a single thread reads. Each
    client has an I/O lock that both sides hold around socket calls: one TLS session must never
    be read and written by two threads at once (OpenSSL's rule; broken records otherwise).
    """

    def __init__(self) -> None:
        self._clients: dict[paho.Client, IoLock] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sim-pump", daemon=True)
        self._thread.start()

    def add(self, client: paho.Client, io: IoLock) -> None:
        """Serve *client* from now on; *io* guards its socket."""
        with self._lock:
            self._clients[client] = io

    def remove(self, client: paho.Client) -> None:
        """Stop serving *client*."""
        with self._lock:
            self._clients.pop(client, None)

    def stop(self) -> None:
        """End the thread."""
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        last_misc = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                clients = dict(self._clients)
            if not self._poll_once(clients):
                time.sleep(0.02)
            if time.monotonic() - last_misc > 1.0:
                last_misc = time.monotonic()
                for client, io in clients.items():
                    with io:
                        client.loop_misc()  # keepalive pings and timeouts

    @staticmethod
    def _poll_once(clients: dict[paho.Client, IoLock]) -> bool:
        poller = select.poll()
        by_fd: dict[int, paho.Client] = {}
        for client in clients:
            sock = client.socket()
            if sock is not None:
                by_fd[sock.fileno()] = client
                mask = select.POLLIN | (select.POLLOUT if client.want_write() else 0)
                poller.register(sock.fileno(), mask)
        if not by_fd:
            return False
        for fd, events in poller.poll(20):
            client = by_fd[fd]
            with clients[client]:
                if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    client.loop_read(64)
                if events & select.POLLOUT:
                    client.loop_write()
        return True


@dataclass
class Tally:
    """Counts shared by all devices of a run."""

    sent: int = 0
    sent_bad: int = 0
    confirmed: int = 0
    reconnects: int = 0
    bad_by_reason: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **counts: int) -> None:
        """Add to counters atomically."""
        with self.lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)


class SimDevice:
    """One simulated device with its own MQTT connection."""

    def __init__(
        self,
        creds: dict[str, Any],
        address: BrokerAddress,
        tally: Tally,
        rng: random.Random,
        pump: Pump | None = None,
    ) -> None:
        self._pump = pump or Pump()
        self.device_id: str = creds["device_id"]
        self.client_id = self.device_id  # a dynsec broker pins each device's client id
        self._mqtt_password: str | None = creds.get("mqtt_password")
        self.model: str = creds["model"]
        self.mac: str = creds["mac"]
        self.drk_version: int = creds["drk_version"]
        self._root = bytes.fromhex(creds["root_key"])
        self._kx_key = device_keys.kx_key(self._root, self.device_id)
        self._address = address
        self._tally = tally
        self._rng = rng
        self.sessions: dict[int, SessionKeys] = {}
        self.epoch = 0
        self._counter = 0
        self.unconfirmed: dict[tuple[int, int], tuple[str, bytes]] = {}
        self._lock = threading.Lock()
        self._kx_body = b""
        self._kx_done = threading.Event()
        self._cid = 0
        self._answered_epoch: int | None = None  # a key exchange answered; switch before sealing
        self._offer: rekey.RekeyOffer | None = None  # root-key offer read, not yet answered
        self._rekey_at: float | None = None  # when to (re)send a key exchange under a new root
        self.last_progress = time.monotonic()
        self.needs_rekey = False
        self._client: paho.Client | None = None
        self.ota: OtaAgent | None = None  # the OTA device side (qnect.sim_ota), if attached
        # Desired state: the settings applied (wire units), the newest version applied, how
        # many older versions were ignored, and whether a report of them is still to be sent.
        self.settings: dict[str, object] = {}
        self.desired_version = 0
        self.desired_ignored = 0
        self._desired_report = False
        self._desired_early: bytes | None = None  # arrived before its key-exchange answer
        # Held around every socket call of this device's client; reentrant because callbacks
        # (run by the pump under it) publish too.
        self._io: IoLock = threading.RLock()

    def topic(self, kind: str) -> str:
        """Uplink topic of *kind*."""
        return f"devices/{self.device_id}/up/{kind}"

    # -- connection -------------------------------------------------------------------------
    def connect(self) -> None:
        """Open the MQTT connection (with a sealed will) and run the key exchange."""
        cid = int.from_bytes(os.urandom(8), "big") >> 1 or 1
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5
        )
        will_keys = device_keys.will_keys(self._root, self.device_id)
        will = device_keys.seal_frame(
            will_keys,
            epoch=0,
            counter=cid,
            plaintext=msgpack.packb({"t": int(time.time() * 1000), "d": {"online": False}}),
            device_id=self.device_id,
            topic=self.topic("status"),
            flags=Flags.WILL,
        )
        client.will_set(self.topic("status"), will, qos=1)
        client.max_inflight_messages_set(100)
        client.max_queued_messages_set(0)
        if self._mqtt_password is not None:
            client.username_pw_set(self.device_id, self._mqtt_password)
        if self._address.tls:
            client.tls_set(ca_certs=self._address.ca_file)
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        subscribed, answered = threading.Event(), threading.Event()
        refused: list[str] = []

        def on_connect(_c: object, _u: object, _f: object, reason: Any, _p: object) -> None:
            if reason.is_failure:
                refused.append(str(reason))
            answered.set()

        client.on_connect = on_connect
        client.on_subscribe = lambda *_args: subscribed.set()
        with self._io:
            client.connect(self._address.host, self._address.port, keepalive=30, clean_start=True)
        self._pump.add(client, self._io)
        if not answered.wait(KX_TIMEOUT_S) or refused:
            self._pump.remove(client)
            raise ConnectionRefusedError(refused[0] if refused else "no CONNACK")
        with self._io:
            client.subscribe(f"devices/{self.device_id}/down/#", qos=1)
        if not subscribed.wait(KX_TIMEOUT_S):
            self._pump.remove(client)
            raise TimeoutError("subscribe not acknowledged")
        self._client = client
        self._cid = cid
        self._key_exchange()

    def _key_exchange(self) -> None:
        # Retried with backoff: a request published before any bridge subscribed is gone.
        for timeout in KX_RETRY_S:
            self._send_kx()
            if self._kx_done.wait(timeout):
                self._switch_session()
                return
        raise TimeoutError("key exchange not answered")

    def _send_kx(self) -> None:
        self._kx_done.clear()
        self._kx_body = device_keys.encode_kx_request(
            self._kx_key,
            self.device_id,
            drk_version=self.drk_version,
            ts_ms=int(time.time() * 1000),
            cid=self._cid,
            device_nonce=os.urandom(16),
        )
        self.publish(self.topic("kx"), self._kx_body)

    def _switch_session(self) -> None:
        """Adopt the session of the last answered key exchange (publishing thread only)."""
        with self._lock:
            epoch, self._answered_epoch = self._answered_epoch, None
        if epoch is not None:
            self.epoch, self._counter = epoch, 0

    def rekey_step(self) -> None:
        """Root-key rotation, publishing thread side: answer an offer, then re-key under it.

        The proof goes out under the current session; then the new key replaces the old one
        (in memory only) and a key exchange under the new version starts, resent until
        answered. Frames keep using the old session until the answer arrives.
        """
        offer, self._offer = self._offer, None
        if offer is not None and offer.from_version == self.drk_version:
            _, proof = self.seal("rekey", rekey.encode_proof(self.device_id, offer))
            self.publish(self.topic("rekey"), proof)
            self._root, self.drk_version = offer.new_root, offer.to_version
            self._kx_key = device_keys.kx_key(self._root, self.device_id)
            self._rekey_at = time.monotonic()
        if self._rekey_at is not None and time.monotonic() >= self._rekey_at:
            self._rekey_at = time.monotonic() + KX_TIMEOUT_S
            self._send_kx()

    def reconnect(self) -> None:
        """Drop the connection, connect again with a new session, resend the unconfirmed."""
        self.close()
        self.connect()
        self._tally.add(reconnects=1)
        with self._lock:
            pending = list(self.unconfirmed.values())
        for topic, frame in pending:
            self.publish(topic, frame)
        self.needs_rekey = False
        self.last_progress = time.monotonic()

    def close(self) -> None:
        """Disconnect cleanly (no will)."""
        if self._client is not None:
            client, self._client = self._client, None
            client.on_disconnect = None
            self._pump.remove(client)
            with self._io:
                client.disconnect()
                client.loop_write()  # flush DISCONNECT; no loop thread does it for us

    def _on_disconnect(self, *_args: object) -> None:
        self.needs_rekey = True

    def _on_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        kind = msg.topic.rsplit("/", 1)[-1]
        try:
            if kind == "kx":
                resp = device_keys.decode_kx_response(
                    self._kx_key, self.device_id, self._kx_body, bytes(msg.payload)
                )
                self.sessions[resp.epoch] = device_keys.session_keys(
                    self._root,
                    self.device_id,
                    epoch=resp.epoch,
                    device_nonce=self._kx_body[20:36],
                    server_nonce=resp.server_nonce,
                )
                with self._lock:
                    self._answered_epoch = resp.epoch
                self._rekey_at = None
                self._kx_done.set()
                early, self._desired_early = self._desired_early, None
                if early is not None:
                    self._desired(early)
            elif kind == "receipt":
                self._receipt(bytes(msg.payload), msg.topic)
            elif kind == "desired":
                self._desired(bytes(msg.payload))
            elif kind == "ota" and self.ota is not None:
                self.ota.on_downlink(bytes(msg.payload))
            elif kind == "rekey":
                header = device_keys.parse_header(bytes(msg.payload))
                keys = self.sessions.get(header.epoch)
                if keys is not None:  # opens only under that session's downlink key
                    self._offer = rekey.open_offer(keys, self.device_id, bytes(msg.payload))
        except Exception:  # noqa: BLE001 - a bad downlink message must not kill the device
            return

    def _desired(self, payload: bytes) -> None:
        """Apply a newer desired state to the settings (network thread); older ones are ignored.

        The same version again (a resend: its report may have been lost) is reported again.
        """
        epoch = device_keys.parse_header(payload).epoch
        keys = self.sessions.get(epoch)
        if keys is None:
            if epoch > max(self.sessions, default=0):  # a worker was quicker than the answer
                self._desired_early = payload
            return
        state = open_desired(keys, self.device_id, payload)
        points = PROFILES[self.model].by_name
        with self._lock:
            if state.version < self.desired_version:
                self.desired_ignored += 1
                return
            self.desired_version = state.version
            self.settings.update({k: v for k, v in state.values.items() if k in points})
            self._desired_report = True

    def desired_step(self) -> None:
        """Report the settings after a desired state was applied (publishing thread side)."""
        with self._lock:
            due, self._desired_report = self._desired_report, False
        if due and self._client is not None:
            self.send("telemetry", self.telemetry())

    def _receipt(self, payload: bytes, topic: str) -> None:
        header = device_keys.parse_header(payload)
        keys = self.sessions.get(header.epoch)
        if keys is None or not header.flags & Flags.DOWN:
            return
        body = msgpack.unpackb(
            device_keys.open_frame(
                keys.down, header, payload, device_id=self.device_id, topic=topic
            )
        )
        done = 0
        with self._lock:
            for lo, hi in body["r"]:
                for c in range(lo, hi + 1):
                    if self.unconfirmed.pop((body["e"], c), None) is not None:
                        done += 1
        if done:
            self.last_progress = time.monotonic()
            self._tally.add(confirmed=done)

    # -- frames -----------------------------------------------------------------------------
    def seal(self, kind: str, body: bytes, *, topic: str | None = None) -> tuple[int, bytes]:
        """Seal the next frame of the current session."""
        self._switch_session()
        self._counter += 1
        keys = self.sessions[self.epoch]
        frame = device_keys.seal_frame(
            keys.up,
            epoch=self.epoch,
            counter=self._counter,
            plaintext=body,
            device_id=self.device_id,
            topic=topic or self.topic(kind),
        )
        return self._counter, frame

    def send(self, kind: str, data: dict[str, object], ts_ms: int | None = None) -> None:
        """Publish a good report and keep it until confirmed."""
        body = msgpack.packb({"t": ts_ms or int(time.time() * 1000), "d": data})
        counter, frame = self.seal(kind, body)
        with self._lock:
            self.unconfirmed[(self.epoch, counter)] = (self.topic(kind), frame)
        self.publish(self.topic(kind), frame)
        self._tally.add(sent=1)

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish raw bytes at QoS 1."""
        if (client := self._client) is not None:
            with self._io:
                client.publish(topic, payload, qos=1)

    def value_point(self) -> str:
        """Name of the first data point whose values are numeric (NaN and range faults)."""
        points = PROFILES[self.model].points
        numeric = [p for p in points if p.type is PointType.VALUE]
        return (numeric or list(points))[0].name

    def telemetry(self) -> dict[str, object]:
        """A plausible telemetry reading for this model, with the settings applied."""
        with self._lock:
            settings = dict(self.settings)
        return {**telemetry_values(self.model, self._rng), **settings}

    def send_bad(self, kind: str, other: SimDevice) -> None:
        """Publish one deliberately bad message of *kind* (see ``BAD_KINDS``)."""
        now = int(time.time() * 1000)
        good = msgpack.packb({"t": now, "d": self.telemetry()})
        topic = self.topic("telemetry")
        payload: bytes
        if kind in _BODY_FAULTS:
            _, payload = self.seal("telemetry", _BODY_FAULTS[kind](self, now))
        elif kind == "mac_mismatch":
            body = {"mac": "02:00:00:00:00:01", "fw": "1.0.0"}
            _, payload = self.seal("info", msgpack.packb({"t": now, "d": body}))
            topic = self.topic("info")
        elif kind == "replay":
            with self._lock:
                pending = next(iter(self.unconfirmed.values()), None)
            if pending is None:  # nothing to replay yet: replay a fresh good frame twice
                self.send("telemetry", self.telemetry())
                with self._lock:
                    pending = next(iter(self.unconfirmed.values()))
            topic, payload = pending
        elif kind == "key_mismatch":
            _, payload = other.seal("telemetry", good, topic=topic)
        else:
            _, frame = self.seal("telemetry", good)
            payload, topic = _frame_fault(kind, frame, topic, self._rng)
        self.publish(topic, payload)
        self._tally.add(sent=1, sent_bad=1)
        reason = expected_reason(kind, self.model)
        with self._tally.lock:
            self._tally.bad_by_reason[reason] = self._tally.bad_by_reason.get(reason, 0) + 1


def _frame_fault(kind: str, frame: bytes, topic: str, rng: random.Random) -> tuple[bytes, str]:
    if kind == "malformed_frame":
        return frame[:10], topic
    if kind == "oversized":
        return frame + os.urandom(4096), topic
    if kind == "bad_tag":
        i = rng.randrange(device_keys.HEADER_BYTES, len(frame))
        return frame[:i] + bytes([frame[i] ^ 0x01]) + frame[i + 1 :], topic
    if kind == "unknown_device":
        return frame, f"devices/{'z' * 16}/up/telemetry"
    if kind == "bad_topic":
        return frame, topic.rsplit("/", 1)[0] + "/bogus"
    if kind == "unsupported_version":
        return b"\x09" + frame[1:], topic
    raise ValueError(kind)


_BODY_FAULTS: dict[str, Callable[[SimDevice, int], bytes]] = {
    "malformed_payload": lambda _d, _now: b"\xc1\xff\x00",
    "schema_violation": lambda _d, now: msgpack.packb({"t": now, "d": {"no_such_point": 1}}),
    "out_of_range": lambda d, now: msgpack.packb({"t": now, "d": {d.value_point(): 10**12}}),
    "wrong_type": lambda d, now: msgpack.packb({"t": now, "d": {d.value_point(): float("nan")}}),
    "stale_timestamp": lambda d, now: msgpack.packb(
        {"t": now - 30 * 86_400_000, "d": d.telemetry()}
    ),
    "future_timestamp": lambda d, now: msgpack.packb({"t": now + 86_400_000, "d": d.telemetry()}),
}


def expected_reason(kind: str, model: str) -> str:
    """The reject reason the bridge must give a bad message of *kind* from *model*."""
    if kind == "wrong_type" or (kind == "out_of_range" and model == "camera"):
        return "schema_violation"  # a camera has no numeric point: the value is mistyped
    return kind


def run_fleet(
    credentials: list[dict[str, Any]],
    address: BrokerAddress,
    *,
    messages: int,
    rate: float = 0.0,
    bad_fraction: float = 0.0,
    confirm_timeout_s: float = 120.0,
    resend_after_s: float = 10.0,
    seed: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    isolated: bool = False,
) -> dict[str, Any]:
    """Run the fleet: connect, send, wait for receipts; returns the JSON summary.

    With *isolated* (a broker that enforces per-device ACLs), no device tries another
    device's topic: the broker refuses that itself (and drops the connection), so it never
    reaches the bridge as an ``unknown_device`` reject.
    """
    kinds = tuple(k for k in BAD_KINDS if not (isolated and k == "unknown_device"))
    rng = random.Random(seed)
    tally = Tally()
    pump = Pump()
    fleet = [SimDevice(c, address, tally, random.Random(rng.random()), pump) for c in credentials]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(lambda d: d.connect(), fleet))
    for device in fleet:
        device.send(
            "info",
            {
                "mac": device.mac,
                "fw": "1.4.2",
                "ip": "192.168.1.23",
                "ssid": "home-net",
                "rssi": -55,
            },
        )
        device.send("status", {"online": True})
    total = messages * len(fleet)
    interval = 1.0 / rate if rate > 0 else 0.0
    next_at = time.monotonic()
    for i in range(messages):
        for n, device in enumerate(fleet):
            if device.needs_rekey:
                _heal(device)
            device.rekey_step()
            device.desired_step()
            if bad_fraction and rng.random() < bad_fraction:
                kind = rng.choice(kinds)
                device.send_bad(kind, fleet[(n + 1) % len(fleet)])
            else:
                device.send("telemetry", device.telemetry())
            if interval:
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        if progress is not None:
            progress((i + 1) * len(fleet), total)
    sent_done = time.monotonic()
    _await_receipts(fleet, tally, confirm_timeout_s, resend_after_s)
    finished = time.monotonic()
    for device in fleet:
        device.close()
    pump.stop()
    good = tally.sent - tally.sent_bad
    return {
        "devices": len(fleet),
        "sent": tally.sent,
        "sent_bad": tally.sent_bad,
        "confirmed": tally.confirmed,
        "unconfirmed": good - tally.confirmed,
        "reconnects": tally.reconnects,
        "bad_by_reason": dict(sorted(tally.bad_by_reason.items())),
        "publish_s": round(sent_done - started, 3),
        "elapsed_s": round(finished - started, 3),
        "confirmed_per_s": round(tally.confirmed / max(finished - started, 1e-9), 1),
    }


def _await_receipts(
    fleet: list[SimDevice], tally: Tally, timeout_s: float, resend_after_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pending = [d for d in fleet if d.unconfirmed]
        if not pending:
            return
        now = time.monotonic()
        for device in pending:
            if device.needs_rekey or now - device.last_progress > resend_after_s:
                _heal(device)
            device.rekey_step()
            device.desired_step()
        time.sleep(0.1)
    del tally


def _heal(device: SimDevice) -> None:
    """Reconnect a device that lost its connection (or its receipts) and resend."""
    try:
        device.reconnect()
    except (OSError, TimeoutError):
        device.needs_rekey = True
        device.last_progress = time.monotonic()  # broker down: try again later
