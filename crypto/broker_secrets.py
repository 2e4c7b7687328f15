"""Broker identities derived from the server root key (pure, no I/O).

Every MQTT identity the backend needs at a broker with static passwords (Mosquitto's dynamic
security plugin) gets a password derived here, so nothing secret is stored beside the broker's
own salted hashes and ``qnect broker sync`` can rebuild a broker from the registry alone:

* service identities (the registry's ``admin``, the ``bridge`` workers, a benchmark's load
  generator) have one password each, per root key;
* each device has a password per credential version; it is handed to the device once at
  provisioning (with its root key) and is independent of the device root key, so a root-key
  rotation never changes it and never kicks the device off the broker.

A broker that calls out to an auth service uses expiring tokens instead (``crypto.mqtt_tokens``).
"""

from __future__ import annotations

import base64
import re

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto.keys import lp

PASSWORD_BYTES = 24  # 192 bits: far beyond guessing, short enough for any MQTT client
SERVICE_NAMES = frozenset({"admin", "bridge", "loadgen"})
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def _derive(root_key: bytes, info: bytes) -> str:
    okm = HKDF(algorithm=hashes.SHA256(), length=PASSWORD_BYTES, salt=None, info=info).derive(
        root_key
    )
    return base64.urlsafe_b64encode(okm).decode().rstrip("=")


def service_password(root_key: bytes, name: str) -> str:
    """Password of the backend's own broker identity *name* (``admin``, ``bridge``, ...)."""
    if name not in SERVICE_NAMES:
        raise ValueError("unknown service identity")
    return _derive(root_key, b"qnect/broker/service/v1" + lp(name.encode()))


def device_password(root_key: bytes, device_id: str, version: int = 1) -> str:
    """Static broker password of *device_id* at credential *version*."""
    if not _NAME.match(device_id) or version < 1:
        raise ValueError("bad device id or credential version")
    return _derive(
        root_key, b"qnect/broker/device/v1" + lp(device_id.encode()) + version.to_bytes(4, "big")
    )


class BrokerSecrets:
    """The root key's broker passwords, as one object to hand to the registry."""

    __slots__ = ("_root",)

    def __init__(self, root_key: bytes) -> None:
        self._root = root_key

    def __repr__(self) -> str:
        """Never show the key."""
        return "BrokerSecrets(<redacted>)"

    def service(self, name: str) -> str:
        """Password of a service identity."""
        return service_password(self._root, name)

    def device(self, device_id: str, version: int = 1) -> str:
        """Password of a device at credential *version*."""
        return device_password(self._root, device_id, version)
