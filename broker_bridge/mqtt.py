"""paho-mqtt adapter for bridge workers: a persistent MQTT 5 session with manual acks.

Owns the client: connecting with ``clean_start=False`` and a long session expiry, a shared
subscription, a Receive Maximum that bounds how many unacknowledged messages the broker may
push (that bound *is* the backpressure: while the database is slow nothing is acked, so the
broker stops sending and keeps the rest queued), and manual PUBACKs after commit.

paho is used over aiomqtt because it acknowledges manually through a public API and receives
about 3x faster here (research/mqtt-broker-facts.md sections 3 and 5).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlparse

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from telemetry.pipeline import Inbound

SHARED_FILTER = "$share/ingest/devices/+/up/#"
SESSION_EXPIRY_S = 7 * 24 * 3600  # a stopped worker's share waits a week for it, then expires
RECEIVE_MAXIMUM = 4000  # unacked messages in flight per worker: two full batches
KEEPALIVE_S = 30


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where the broker is."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """Parse ``mqtt://[user:pass@]host:port``."""
        parts = urlparse(url)
        if parts.scheme not in {"mqtt", "tcp"} or not parts.hostname:
            raise ValueError("MQTT URL must look like mqtt://host:port")
        return cls(parts.hostname, parts.port or 1883, parts.username, parts.password)


class BridgeClient:
    """One worker's MQTT connection; messages land in an in-memory inbox until acked."""

    def __init__(self, address: BrokerAddress, client_id: str, *, drain: bool = False) -> None:
        self._address = address
        self._drain = drain
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
            manual_ack=True,
        )
        if address.username:
            self._client.username_pw_set(address.username, address.password)
        self._client.reconnect_delay_set(min_delay=1, max_delay=10)
        self._client.max_queued_messages_set(0)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_disconnect = self._on_disconnect
        self._inbox: deque[Inbound] = deque()
        self._ready = threading.Condition()
        self._generation = 0  # message tokens of an older connection must never be acked
        self.connected = threading.Event()

    def start(self) -> None:
        """Connect (retrying in the background) and start the network thread."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        props.ReceiveMaximum = RECEIVE_MAXIMUM
        self._client.connect_async(
            self._address.host,
            self._address.port,
            keepalive=KEEPALIVE_S,
            clean_start=False,
            properties=props,
        )
        self._client.loop_start()

    def stop(self, *, end_session: bool = False) -> None:
        """Disconnect cleanly; unacked messages stay in the broker session.

        With *end_session* the broker deletes the session (a retired worker's last act).
        """
        props = None
        if end_session:
            props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0
        self._client.disconnect(properties=props)
        self._client.loop_stop()

    def idle(self) -> bool:
        """Connected with nothing waiting in the inbox."""
        with self._ready:
            return self.connected.is_set() and not self._inbox

    def take(self, max_items: int, linger_s: float, wait_s: float) -> list[Inbound]:
        """Wait up to *wait_s* for a first message, then up to *linger_s* to fill a batch."""
        with self._ready:
            if not self._inbox:
                self._ready.wait(wait_s)
            if self._inbox and len(self._inbox) < max_items:
                self._ready.wait_for(lambda: len(self._inbox) >= max_items, linger_s)
            count = min(max_items, len(self._inbox))
            return [self._inbox.popleft() for _ in range(count)]

    def ack(self, messages: Sequence[Inbound]) -> int:
        """PUBACK *messages* in the order received; returns how many were still ackable."""
        generation = self._generation
        done = 0
        for msg in messages:
            if msg.token >> 32 == generation and msg.token >> 16 & 0x3:
                self._client.ack(msg.token & 0xFFFF, 1)
                done += 1
        return done

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        """Publish a downlink message (receipts and key-exchange answers)."""
        self._client.publish(topic, payload, qos=qos)

    def _on_connect(
        self,
        client: paho.Client,
        _userdata: object,
        _flags: paho.ConnectFlags,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        if reason.is_failure:
            return
        with self._ready:
            self._generation += 1
            # Whatever was delivered on the old connection and not acked will be redelivered
            # by the broker on this one; drop our copies so nothing is processed twice here.
            self._inbox.clear()
        if self._drain:
            # A retired member leaves the share group at once (no new messages), while the
            # broker still delivers what its session had queued.
            client.unsubscribe(SHARED_FILTER)
        else:
            client.subscribe(SHARED_FILTER, qos=1)
        self.connected.set()

    def _on_disconnect(
        self,
        _client: paho.Client,
        _userdata: object,
        _flags: paho.DisconnectFlags,
        _reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        self.connected.clear()

    def _on_message(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        # token = connection generation | QoS | packet id: enough to ack exactly this delivery
        token = (self._generation << 32) | (msg.qos << 16) | msg.mid
        item = Inbound(msg.topic, bytes(msg.payload), bool(msg.dup), token)
        with self._ready:
            self._inbox.append(item)
            self._ready.notify()
