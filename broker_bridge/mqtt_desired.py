"""MQTT adapter that sends a device's desired state on its downlink (``…/down/desired``).

A short-lived, blocking MQTT 5 connection as the ``bridge`` service identity (the only one
the broker lets publish on devices' downlinks): CONNECT, one QoS 1 PUBLISH, wait for the
PUBACK, DISCONNECT. The message is retained, so a device that is offline now receives the
newest desired state when it next subscribes; the version inside lets it drop stale ones.
Changes of desired state are human-paced (an app tap), so a connection per change is cheap
next to keeping one open in every API process.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Mapping

import mqtt5  # noqa: TID251 - this module is an MQTT adapter, like mqtt_admin.py
import msgpack
import structlog

from broker_bridge.errors import BrokerError
from broker_bridge.mqtt import BrokerAddress, open_socket

log = structlog.get_logger("broker_bridge.mqtt_desired")
TIMEOUT_S = 5.0  # connect + publish + ack on a healthy broker take milliseconds
PAYLOAD_VERSION = 1


def desired_topic(device_id: str) -> str:
    """The downlink topic of a device's desired state."""
    return f"devices/{device_id}/down/desired"


def desired_payload(desired: Mapping[str, object], version: int) -> bytes:
    """The msgpack body: format version, shadow version, desired values in wire units."""
    return msgpack.packb({"v": PAYLOAD_VERSION, "version": version, "desired": dict(desired)})


class MqttDesiredPublisher:
    """Publish desired states through the broker as ``bridge``."""

    def __init__(self, address: BrokerAddress) -> None:
        self._address = address

    def publish_desired(self, device_id: str, desired: Mapping[str, object], version: int) -> bool:
        """Send the desired state; ``True`` once the broker acknowledged it.

        A broker that is down or refuses is logged and answered ``False``: the desired state
        is stored already, and the next change (or a resend) delivers it.
        """
        try:
            self._publish(desired_topic(device_id), desired_payload(desired, version))
        except (OSError, BrokerError) as exc:
            log.warning("shadow.publish_failed", device_id=device_id, error=type(exc).__name__)
            return False
        log.info("shadow.published", device_id=device_id, version=version)
        return True

    def _publish(self, topic: str, payload: bytes) -> None:
        address = self._address
        sock = open_socket(address, timeout=TIMEOUT_S)
        buffer = bytearray()
        deadline = time.monotonic() + TIMEOUT_S
        try:
            sock.sendall(
                mqtt5.ConnectPacket(
                    f"qnect-api-{time.monotonic_ns() % 10**9}",
                    username=address.username,
                    password=address.password.encode() if address.password else None,
                    clean_start=True,
                    keep_alive=30,
                ).write()
            )
            connack = _next(sock, buffer, deadline)
            if not isinstance(connack, mqtt5.ConnAckPacket) or (
                connack.reason_code != mqtt5.ConnAckReasonCode.SUCCESS
            ):
                raise BrokerError("login refused")
            packet = mqtt5.PublishPacket(
                topic, payload, qos=mqtt5.QoS.AT_LEAST_ONCE, retain=True, packet_id=1
            )
            sock.sendall(packet.write())
            ack = _next(sock, buffer, deadline)
            if not isinstance(ack, mqtt5.PubAckPacket) or int(ack.reason_code) >= 0x80:
                raise BrokerError("publish refused")
            with contextlib.suppress(OSError):
                sock.sendall(mqtt5.DisconnectPacket().write())
        finally:
            sock.close()


def _next(sock: socket.socket, buffer: bytearray, deadline: float) -> mqtt5.Packet:
    while True:
        if buffer:
            try:
                packet, size = mqtt5.read(memoryview(buffer))
            except IndexError:
                pass
            else:
                del buffer[:size]
                return packet
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerError("broker did not answer in time")
        sock.settimeout(remaining)
        data = sock.recv(65536)
        if not data:
            raise BrokerError("broker closed the connection")
        buffer += data
