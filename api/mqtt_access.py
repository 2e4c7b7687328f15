"""Who may do what at the broker (pure): identities, topic rules and verdicts.

Owns: telling a device identity from a service identity, the topic rules of DESIGN.md (a device
publishes only under ``devices/<own id>/up/`` and subscribes or receives only under
``devices/<own id>/down/``; the bridge takes uplink through its shared subscription and sends
downlink to any device), and the ``Verdict`` the broker dialects translate. Does not own:
checking passwords (``api.auth_hook``), token crypto (``crypto.mqtt_tokens``) or I/O.

Topic checks are exact-match on levels, never prefix matches on strings: ``devices/abc/up``
must not admit ``devices/abcd/up``, and a wildcard in a published topic is always refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from device_registry.model import is_device_id

BRIDGE = "bridge"
ADMIN = "admin"
SERVICES = frozenset({BRIDGE, ADMIN})  # loadgen is a benchmark identity: never via the hook
# The bridge's subscriptions: shared (scale-out) and plain (a single worker, or a broker
# whose ACL check sees the filter without its $share/<group>/ prefix).
BRIDGE_FILTERS = frozenset({"$share/ingest/devices/+/up/#", "devices/+/up/#"})
MAX_TOPIC_CHARS = 256  # ours are < 64; refuses a pathological topic before splitting it


class Action(StrEnum):
    """What a client asks to do with a topic."""

    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"  # a topic filter, wildcards allowed
    READ = "read"  # a message about to be delivered (mosquitto-go-auth acc=1)


@dataclass(frozen=True, slots=True)
class Verdict:
    """An answer to a broker: allowed or not, with the reason (for logs, never for clients)."""

    allowed: bool
    reason: str
    expires_at: int | None = None  # when a device's token runs out (EMQX disconnects then)

    @classmethod
    def allow(cls, reason: str = "ok", expires_at: int | None = None) -> Verdict:
        """An allowing verdict."""
        return cls(allowed=True, reason=reason, expires_at=expires_at)

    @classmethod
    def deny(cls, reason: str) -> Verdict:
        """A refusing verdict naming why."""
        return cls(allowed=False, reason=reason)


def identity_kind(username: str) -> str | None:
    """``"device"``, ``"service"`` or ``None`` (nobody we know) for an MQTT username."""
    if is_device_id(username):
        return "device"
    if username in SERVICES:
        return "service"
    return None


def client_id_fits(username: str, client_id: str | None) -> bool:
    """Whether the MQTT client id may go with *username* (where the broker sends one).

    A device connects with its own id as client id, so it cannot take over another device's
    session; a service may use any client id that is not shaped like a device id.
    """
    if not client_id:
        return True
    if is_device_id(username):
        return client_id == username
    return not is_device_id(client_id)


def _levels(topic: str) -> list[str] | None:
    if not topic or len(topic) > MAX_TOPIC_CHARS or "\x00" in topic:
        return None
    return topic.split("/")


def _concrete(levels: list[str]) -> bool:
    """A topic name: every level non-empty and free of wildcards."""
    return all(level and "+" not in level and "#" not in level for level in levels)


def _filter_tail(levels: list[str]) -> bool:
    """Levels of a topic filter below a fixed prefix: ``+`` alone, ``#`` alone and last."""
    for i, level in enumerate(levels):
        if level in {"+", ""}:
            continue
        if level == "#":
            if i != len(levels) - 1:
                return False
            continue
        if "+" in level or "#" in level:
            return False
    return True


def _under(levels: list[str], device_id: str, direction: str) -> bool:
    return (
        len(levels) >= 4
        and levels[0] == "devices"
        and levels[1] == device_id
        and levels[2] == direction
    )


def device_may(device_id: str, action: Action, topic: str) -> bool:
    """Whether device *device_id* may *action* on *topic*: its own up, or its own down."""
    levels = _levels(topic)
    if levels is None:
        return False
    if action is Action.PUBLISH:
        return _under(levels, device_id, "up") and _concrete(levels)
    if action is Action.READ:
        return _under(levels, device_id, "down") and _concrete(levels)
    return _under(levels, device_id, "down") and _filter_tail(levels[3:])


def bridge_may(action: Action, topic: str) -> bool:
    """Whether the bridge may *action* on *topic*: all uplink in, any device's downlink out."""
    if action is Action.SUBSCRIBE:
        return topic in BRIDGE_FILTERS
    levels = _levels(topic)
    if levels is None or len(levels) < 4 or levels[0] != "devices":
        return False
    direction = "down" if action is Action.PUBLISH else "up"
    return is_device_id(levels[1]) and levels[2] == direction and _concrete(levels)


def service_may(name: str, action: Action, topic: str) -> bool:
    """Topic rights of a service identity; ``admin`` has none at a broker with an auth hook."""
    return name == BRIDGE and bridge_may(action, topic)
