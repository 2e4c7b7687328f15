"""Pairing: single-use tokens for the app and the device's proof of its key (pure, no I/O).

The app asks for a pairing token (bound to a user and a household, valid ≤ 10 minutes) and
hands it to the device during onboarding (BLE, soft-AP). The device presents it at activation
with a proof that it holds its current root key, the factory key on first activation:
``HMAC(K_pair, lp(id) || lp(token) || lp(household) || ts_ms)``, ``K_pair`` derived from the
root key. The server keeps only a hash of each token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto.keys import lp

TOKEN_PREFIX = "qp1-"  # noqa: S105 - a format prefix, not a secret
TOKEN_BYTES = 16  # 128 bits: unguessable within a 10-minute lifetime
PROOF_BYTES = 16
_TOKEN = re.compile(r"^qp1-[a-z2-7]{26}$")


def new_token(rand: bytes) -> str:
    """A pairing token from 16 random bytes (lower-case base32, easy to carry over BLE)."""
    if len(rand) != TOKEN_BYTES:
        raise ValueError("a pairing token needs 16 random bytes")
    return TOKEN_PREFIX + base64.b32encode(rand).decode().rstrip("=").lower()


def is_token(text: str) -> bool:
    """Whether *text* is shaped like a pairing token (checked before any lookup)."""
    return bool(_TOKEN.match(text))


def token_hash(token: str) -> bytes:
    """What the server stores and looks up instead of the token."""
    return hashlib.sha256(b"qnect/pair-token/v1|" + token.encode()).digest()


def _pair_key(root_key: bytes, device_id: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"qnect/pair/v1" + lp(device_id.encode()),
    ).derive(root_key)


def _message(device_id: str, token: str, household_id: str, ts_ms: int) -> bytes:
    return (
        lp(device_id.encode())
        + lp(token.encode())
        + lp(household_id.encode())
        + struct.pack(">Q", ts_ms)
    )


def proof(root_key: bytes, device_id: str, token: str, household_id: str, ts_ms: int) -> bytes:
    """The device's proof of possession for this activation."""
    message = _message(device_id, token, household_id, ts_ms)
    return hmac.new(_pair_key(root_key, device_id), message, hashlib.sha256).digest()[:PROOF_BYTES]


def check_proof(
    root_key: bytes, device_id: str, token: str, household_id: str, ts_ms: int, given: bytes
) -> bool:
    """Constant-time check of a device's proof."""
    return hmac.compare_digest(proof(root_key, device_id, token, household_id, ts_ms), given)
