"""MQTT adapter for the registry's broker administration (dynamic-security ``$CONTROL``).

A short-lived, blocking MQTT 5 connection as the ``admin`` identity: it subscribes to the
response topic, publishes command batches and waits for each batch's response (Mosquitto
answers batches in order). Batches amortise the per-request round trip; each modifying command
still rewrites the broker's whole ``dynsec.json`` (research/mqtt-broker-facts.md §1), which is
what bounds the batch size that pays off.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import mqtt5
import structlog

from broker_bridge.dynsec import (
    CONTROL_TOPIC,
    LIST_STATE,
    RESPONSE_TOPIC,
    BrokerState,
    Command,
    errors_of,
)
from broker_bridge.errors import BrokerAdminError
from broker_bridge.mqtt import BrokerAddress, open_socket

log = structlog.get_logger("broker_bridge.mqtt_admin")

BATCH = 200  # commands per PUBLISH: ~1.5 ms each on a small dynsec.json, responses in one go
RESPONSE_TIMEOUT_S = 60.0  # a batch against a large dynsec.json takes seconds (file rewrites)


class DynsecAdmin:
    """Blocking dynamic-security client; use as a context manager."""

    def __init__(self, address: BrokerAddress, password: str, *, username: str = "admin") -> None:
        self._address = address
        self._username = username
        self._password = password
        self._sock: socket.socket | None = None
        self._buffer = bytearray()
        self._packet_id = 0

    def __enter__(self) -> Self:
        """Connect and subscribe to the response topic."""
        sock = open_socket(self._address, timeout=5.0)
        self._sock = sock
        client_id = f"qnect-admin-{time.monotonic_ns() % 10**9}"
        sock.sendall(
            mqtt5.ConnectPacket(
                client_id,
                username=self._username,
                password=self._password.encode(),
                clean_start=True,
                keep_alive=60,
            ).write()
        )
        connack = self._next()
        if not isinstance(connack, mqtt5.ConnAckPacket):
            raise BrokerAdminError("broker did not answer CONNECT")
        if connack.reason_code != mqtt5.ConnAckReasonCode.SUCCESS:
            raise BrokerAdminError(f"admin login refused: {connack.reason_code.name}")
        topic = mqtt5.TopicFilter(RESPONSE_TOPIC, max_qos=mqtt5.QoS.AT_MOST_ONCE)
        sock.sendall(mqtt5.SubscribePacket(self._next_id(), [topic]).write())
        suback = self._next()
        if not isinstance(suback, mqtt5.SubAckPacket) or any(
            int(c) >= 0x80 for c in suback.reason_codes
        ):
            raise BrokerAdminError("admin may not read dynamic-security responses")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Disconnect."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.sendall(mqtt5.DisconnectPacket().write())
            self._sock.close()
            self._sock = None

    def run(self, commands: Sequence[Command], *, batch: int = BATCH) -> list[dict[str, Any]]:
        """Send *commands* in batches; returns every response.

        Raises:
            BrokerAdminError: a command failed (other than "already exists"-style no-ops), or
                the broker did not answer in time.
        """
        responses: list[dict[str, Any]] = []
        for start in range(0, len(commands), batch):
            chunk = list(commands[start : start + batch])
            answer = self._request(chunk)
            if failed := errors_of(answer):
                raise BrokerAdminError("; ".join(failed[:5]))
            responses += answer
        return responses

    def state(self) -> BrokerState:
        """The clients and roles the broker holds."""
        return BrokerState.from_responses(self._request(LIST_STATE))

    def _request(self, commands: list[Command]) -> list[dict[str, Any]]:
        assert self._sock is not None  # noqa: S101 - only called inside the context manager
        # Every admin connection receives every response on the shared response topic; the
        # echoed correlation data tells ours from another admin's (a concurrent provision).
        correlation = secrets.token_hex(8)
        tagged = [{**c, "correlationData": correlation} for c in commands]
        payload = json.dumps({"commands": tagged}).encode()
        self._sock.sendall(
            mqtt5.PublishPacket(CONTROL_TOPIC, payload, qos=mqtt5.QoS.AT_MOST_ONCE).write()
        )
        deadline = time.monotonic() + RESPONSE_TIMEOUT_S
        while time.monotonic() < deadline:
            packet = self._next(deadline)
            if isinstance(packet, mqtt5.PublishPacket) and packet.topic == RESPONSE_TOPIC:
                data = json.loads(bytes(packet.payload))
                answer: list[dict[str, Any]] = data.get("responses", [])
                if answer and answer[0].get("correlationData") == correlation:
                    return answer
        raise BrokerAdminError("dynamic-security response timed out")

    def _next_id(self) -> int:
        self._packet_id = self._packet_id % 65535 + 1
        return self._packet_id

    def _next(self, deadline: float | None = None) -> mqtt5.Packet:
        assert self._sock is not None  # noqa: S101
        end = deadline if deadline is not None else time.monotonic() + 10.0
        while True:
            if self._buffer:
                try:
                    packet, size = mqtt5.read(memoryview(self._buffer))
                except IndexError:
                    pass
                else:
                    del self._buffer[:size]
                    return packet
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise BrokerAdminError("broker did not answer in time")
            self._sock.settimeout(remaining)
            try:
                data = self._sock.recv(65536)
            except TimeoutError as exc:
                raise BrokerAdminError("broker did not answer in time") from exc
            if not data:
                raise BrokerAdminError("broker closed the admin connection")
            self._buffer += data
