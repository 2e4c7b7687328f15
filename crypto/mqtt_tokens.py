"""Expiring MQTT password tokens derived from a device root key (pure, no I/O).

Owns: the token format, minting one (what a device does before it connects) and verifying one
(what the auth hook does when a broker asks). Does not own: which root-key versions a device
has (the registry says so), the clock (a parameter) or what a broker does with the answer.

A token is the MQTT password of a device whose broker calls out to an auth service (EMQX,
mosquitto-go-auth, VerneMQ), in the shape of Azure's shared access signatures::

    q1.<expires_at>.<drk_version>.<mac>

* ``expires_at``: Unix seconds, decimal; the device picks it, at most ``MAX_LIFETIME_S`` ahead;
* ``drk_version``: the device root-key version the MAC was made with (rotation grace lets the
  server accept the previous version for a while);
* ``mac``: HMAC-SHA256, truncated to ``MAC_BYTES`` and base64url without padding, over the
  format version, the device id, the expiry and the key version, under a token key derived
  from the root key with HKDF (``info`` = ``qnect/mqtt-token/v1`` + lp(device id)). The root key
  itself never keys anything but HKDF, so a leaked token key reveals neither it nor the
  session keys derived from it.

The device id is not in the token (it is the MQTT username), so a token replayed under another
username fails the MAC. Verification is strict about shape before doing any crypto: only ASCII
digits, no signs, no leading zeros, a fixed MAC length and a length cap, so nothing a client
sends as a password reaches a parser that could read it two ways.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto.errors import (
    MalformedToken,
    TokenExpired,
    TokenMacMismatch,
    TokenTooFarAhead,
    UnknownKeyVersion,
)
from crypto.keys import KEY_BYTES, lp

TOKEN_PREFIX = "q1"  # noqa: S105 - the format tag, not a password
MAC_BYTES = 16  # 128-bit tag: unforgeable online, and keeps the password short (~40 chars)
MAX_LIFETIME_S = 24 * 3600  # a stolen token is good for a day at most (Azure SAS defaults: 1 h)
CLOCK_SKEW_S = 120  # devices without RTC drift; NTP-less boots are off by seconds, not minutes
MAX_TOKEN_CHARS = 64  # longer than any well-formed token: refused before the regex runs
MAX_EXPIRY = 10**11  # year 5138: 11 digits; keeps the u64 in the MAC input far from overflow
MAX_DRK_VERSION = 2**31 - 1  # devices.drk_version is a PostgreSQL integer
_MAC_CHARS = -(-MAC_BYTES * 4 // 3)  # unpadded base64 length of the tag: 22
_INFO = b"qnect/mqtt-token/v1"
# ASCII digits only (``\d`` would admit other scripts' digits), no leading zeros.
_SHAPE = re.compile(
    rf"{TOKEN_PREFIX}\.(0|[1-9][0-9]{{0,10}})\.([1-9][0-9]{{0,9}})\.([A-Za-z0-9_-]{{{_MAC_CHARS}}})"
)


@dataclass(frozen=True, slots=True)
class MqttToken:
    """A parsed token; its MAC is not yet checked unless ``verify`` returned it."""

    expires_at: int
    drk_version: int
    mac: bytes = field(repr=False)


def token_key(root_key: bytes, device_id: str) -> bytes:
    """The key that MACs *device_id*'s tokens, derived from its root key (HKDF-SHA256).

    Raises:
        ValueError: the root key is not 32 bytes.
    """
    if len(root_key) != KEY_BYTES:
        raise ValueError("root key must be 32 bytes")
    hkdf = HKDF(
        algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=_INFO + lp(device_id.encode())
    )
    return hkdf.derive(root_key)


def _mac(key: bytes, device_id: str, expires_at: int, drk_version: int) -> bytes:
    message = (
        TOKEN_PREFIX.encode()
        + lp(device_id.encode())
        + expires_at.to_bytes(8, "big")
        + drk_version.to_bytes(4, "big")
    )
    return hmac.new(key, message, hashlib.sha256).digest()[:MAC_BYTES]


def mint(root_key: bytes, device_id: str, *, drk_version: int, expires_at: int) -> str:
    """Make the MQTT password of *device_id*, valid until *expires_at* (Unix seconds).

    Raises:
        ValueError: empty device id, key version or expiry out of range, or a root key that
            is not 32 bytes.
    """
    if not device_id:
        raise ValueError("empty device id")
    if not 1 <= drk_version <= MAX_DRK_VERSION:
        raise ValueError("root-key version out of range")
    if not 0 <= expires_at < MAX_EXPIRY:
        raise ValueError("expiry out of range")
    tag = _mac(token_key(root_key, device_id), device_id, expires_at, drk_version)
    encoded = base64.urlsafe_b64encode(tag).decode().rstrip("=")
    return f"{TOKEN_PREFIX}.{expires_at}.{drk_version}.{encoded}"


def parse(token: str) -> MqttToken:
    """Split a token into its fields without checking the MAC or the time.

    Raises:
        MalformedToken: not a well-formed ``q1`` token.
    """
    if len(token) > MAX_TOKEN_CHARS:
        raise MalformedToken
    match = _SHAPE.fullmatch(token)
    if match is None:
        raise MalformedToken
    expiry, version, mac = match.groups()
    # Exactly 22 base64url chars decode to 16 bytes; the last char must carry no stray bits,
    # or two spellings of one tag would both verify.
    raw = base64.urlsafe_b64decode(mac + "==")
    if base64.urlsafe_b64encode(raw).decode().rstrip("=") != mac:
        raise MalformedToken
    if int(version) > MAX_DRK_VERSION:
        raise MalformedToken
    return MqttToken(expires_at=int(expiry), drk_version=int(version), mac=raw)


def verify(
    token: str,
    device_id: str,
    *,
    root_keys: Mapping[int, bytes],
    now: float,
    skew_s: int = CLOCK_SKEW_S,
    max_lifetime_s: int = MAX_LIFETIME_S,
) -> MqttToken:
    """Check *token* as the password of *device_id* at time *now*.

    The MAC is checked before the time, so ``TokenExpired`` and ``TokenTooFarAhead`` only ever
    describe tokens the device really made (a clock problem), never forgeries.

    Args:
        token: the MQTT password as the broker passed it on.
        device_id: the MQTT username (already checked to be a device id).
        root_keys: the device's root keys by version that may sign tokens now: the current
            one, plus the previous one during a rotation's grace period.
        now: Unix seconds.
        skew_s: clock difference tolerated each way.
        max_lifetime_s: the furthest ahead of *now* an expiry may lie (plus *skew_s*).

    Returns:
        The parsed, verified token.

    Raises:
        MalformedToken: not a well-formed token.
        UnknownKeyVersion: no key of the version the token names.
        TokenMacMismatch: the MAC does not verify (wrong device, key or tampered fields).
        TokenExpired: expired more than *skew_s* before *now*.
        TokenTooFarAhead: expires more than *max_lifetime_s* + *skew_s* after *now*.
    """
    parsed = parse(token)
    root = root_keys.get(parsed.drk_version)
    if root is None:
        raise UnknownKeyVersion
    expected = _mac(token_key(root, device_id), device_id, parsed.expires_at, parsed.drk_version)
    if not hmac.compare_digest(expected, parsed.mac):
        raise TokenMacMismatch
    if parsed.expires_at + skew_s < now:
        raise TokenExpired
    if parsed.expires_at > now + max_lifetime_s + skew_s:
        raise TokenTooFarAhead
    return parsed
