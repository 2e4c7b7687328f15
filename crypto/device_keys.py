"""Device protocol v1: session key exchange and AEAD frames (pure, no I/O).

Owns the byte layouts and key schedule shared by the backend and the devices:

* sub-keys of a device root key (DRK): ``K_kx`` authenticates key exchanges, ``K_will`` seals
  the last-will frame fixed at CONNECT time;
* key exchange: the device sends ``KxRequest`` (its nonce ``N_d``, a connection id, a
  timestamp), the server answers ``KxResponse`` (a server-persisted epoch and ``N_s``); both
  derive ``PRK = HKDF-Extract(N_d || N_s, DRK)`` and expand it into directional keys, IVs and
  4-byte session ids (uplink and downlink never share a key, so never a nonce);
* frames: ``version suite flags epoch(u32) counter(u64) sid(u32) || ciphertext+tag``;
  nonce = IV xor counter; associated data = header || lp(device id) || lp(topic), so a frame
  moved to another topic or device does not open.

Does not own: which epoch is current, replay state, or any storage (callers do that).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from crypto.errors import DecryptionFailed, MalformedFrame, UnsupportedVersion
from crypto.keys import lp

PROTOCOL_VERSION = 1
NONCE_BYTES = 16  # key-exchange nonces from each side
TAG_BYTES = 16
MAC_BYTES = 16  # truncated HMAC-SHA256 on key-exchange messages (128-bit security)
MAX_COUNTER = 2**63 - 1  # counters never wrap; devices re-key long before this
HEADER = struct.Struct(">BBBIQI")  # version, suite, flags, epoch, counter, sid
HEADER_BYTES = HEADER.size  # 19
_KX_REQ = struct.Struct(">BBHQQ16s")  # version, type, drk_ver, ts_ms, cid, N_d
_KX_RESP = struct.Struct(">BBI16s")  # version, type, epoch, N_s
_KX_REQ_TYPE = 1
_KX_RESP_TYPE = 2
_SESSION_OKM = 32 + 32 + 12 + 12 + 4 + 4  # K_up, K_down, IV_up, IV_down, sid_up, sid_down


class Suite(IntEnum):
    """AEAD cipher suites a frame may name."""

    CHACHA20_POLY1305 = 2
    AES_256_GCM = 3


class Flags(IntFlag):
    """Frame header flags."""

    DOWN = 0x01  # direction: server to device
    WILL = 0x02  # last-will frame sealed with K_will; counter carries the connection id
    RANDOM_COUNTER = 0x04  # downlink frame whose counter is random (idempotent receipts)


NO_FLAGS = Flags(0)


@dataclass(frozen=True, slots=True)
class DirectionKeys:
    """Key, IV and session id of one direction of one session."""

    key: bytes = field(repr=False)
    iv: bytes = field(repr=False)
    sid: int


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """Both directions of an established session."""

    epoch: int
    up: DirectionKeys
    down: DirectionKeys


@dataclass(frozen=True, slots=True)
class KxRequest:
    """A device's key-exchange request."""

    drk_version: int
    ts_ms: int
    cid: int  # connection id; the last-will frame of this connection carries it
    device_nonce: bytes
    body: bytes  # the exact authenticated bytes, kept for the response transcript


@dataclass(frozen=True, slots=True)
class KxResponse:
    """The server's key-exchange response."""

    epoch: int
    server_nonce: bytes


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """The clear header of a frame."""

    version: int
    suite: Suite
    flags: Flags
    epoch: int
    counter: int
    sid: int
    raw: bytes


def _hkdf(ikm: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(ikm)


def _mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()[:MAC_BYTES]


def kx_key(root_key: bytes, device_id: str) -> bytes:
    """Derive ``K_kx``, the key that authenticates key exchanges of *device_id*."""
    return _hkdf(root_key, b"qnect/kx/v1" + lp(device_id.encode()), 32)


def will_keys(root_key: bytes, device_id: str) -> DirectionKeys:
    """Derive the key and IV of last-will frames (sid 0: no session exists at CONNECT)."""
    okm = _hkdf(root_key, b"qnect/will/v1" + lp(device_id.encode()), 32 + 12)
    return DirectionKeys(key=okm[:32], iv=okm[32:], sid=0)


def encode_kx_request(
    k_kx: bytes, device_id: str, *, drk_version: int, ts_ms: int, cid: int, device_nonce: bytes
) -> bytes:
    """Build a key-exchange request (device side)."""
    if len(device_nonce) != NONCE_BYTES:
        raise MalformedFrame("device nonce must be 16 bytes")
    body = _KX_REQ.pack(PROTOCOL_VERSION, _KX_REQ_TYPE, drk_version, ts_ms, cid, device_nonce)
    return body + _mac(k_kx, b"kxreq", lp(device_id.encode()), body)


def decode_kx_request(k_kx: bytes, device_id: str, data: bytes) -> KxRequest:
    """Parse and authenticate a key-exchange request (server side).

    Raises:
        MalformedFrame: wrong length or type.
        UnsupportedVersion: unknown protocol version.
        DecryptionFailed: the MAC does not verify under this device's ``K_kx``.
    """
    if len(data) != _KX_REQ.size + MAC_BYTES:
        raise MalformedFrame("key-exchange request has the wrong length")
    version, kind, drk_version, ts_ms, cid, nonce = _KX_REQ.unpack_from(data)
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersion("unknown protocol version")
    if kind != _KX_REQ_TYPE:
        raise MalformedFrame("not a key-exchange request")
    body = data[: _KX_REQ.size]
    expected = _mac(k_kx, b"kxreq", lp(device_id.encode()), body)
    if not hmac.compare_digest(expected, data[_KX_REQ.size :]):
        raise DecryptionFailed("kx")
    return KxRequest(drk_version, ts_ms, cid, nonce, body)


def kx_request_version(data: bytes) -> int:
    """The root-key version a key-exchange request names, read before it is authenticated.

    The server picks the key to authenticate the request with by it (current or offered).

    Raises:
        MalformedFrame: wrong length.
    """
    if len(data) != _KX_REQ.size + MAC_BYTES:
        raise MalformedFrame("key-exchange request has the wrong length")
    version: int = _KX_REQ.unpack_from(data)[2]
    return version


def encode_kx_response(
    k_kx: bytes, device_id: str, request: KxRequest, *, epoch: int, server_nonce: bytes
) -> bytes:
    """Build the key-exchange response; its MAC covers the whole transcript (server side)."""
    body = _KX_RESP.pack(PROTOCOL_VERSION, _KX_RESP_TYPE, epoch, server_nonce)
    return body + _mac(k_kx, b"kxresp", lp(device_id.encode()), request.body, body)


def decode_kx_response(k_kx: bytes, device_id: str, request: bytes, data: bytes) -> KxResponse:
    """Parse and authenticate the response to *request*, the bytes the device sent.

    Raises:
        MalformedFrame: wrong length or type.
        DecryptionFailed: the transcript MAC does not verify.
    """
    if len(data) != _KX_RESP.size + MAC_BYTES:
        raise MalformedFrame("key-exchange response has the wrong length")
    version, kind, epoch, nonce = _KX_RESP.unpack_from(data)
    if version != PROTOCOL_VERSION or kind != _KX_RESP_TYPE:
        raise MalformedFrame("not a key-exchange response")
    body = data[: _KX_RESP.size]
    request_body = request[: _KX_REQ.size]
    expected = _mac(k_kx, b"kxresp", lp(device_id.encode()), request_body, body)
    if not hmac.compare_digest(expected, data[_KX_RESP.size :]):
        raise DecryptionFailed("kx")
    return KxResponse(epoch=epoch, server_nonce=nonce)


def session_keys(
    root_key: bytes, device_id: str, *, epoch: int, device_nonce: bytes, server_nonce: bytes
) -> SessionKeys:
    """Derive the directional keys of session *epoch* from the root key and both nonces."""
    prk = hmac.new(device_nonce + server_nonce, root_key, hashlib.sha256).digest()
    info = b"qnect/sess/v1" + lp(device_id.encode()) + struct.pack(">I", epoch)
    okm = HKDFExpand(algorithm=hashes.SHA256(), length=_SESSION_OKM, info=info).derive(prk)
    up = DirectionKeys(okm[0:32], okm[64:76], int.from_bytes(okm[88:92], "big"))
    down = DirectionKeys(okm[32:64], okm[76:88], int.from_bytes(okm[92:96], "big"))
    return SessionKeys(epoch=epoch, up=up, down=down)


def parse_header(frame: bytes) -> FrameHeader:
    """Read a frame's clear header.

    Raises:
        MalformedFrame: shorter than header plus tag, or a zero/oversized counter.
        UnsupportedVersion: unknown version or cipher suite.
    """
    if len(frame) < HEADER_BYTES + TAG_BYTES:
        raise MalformedFrame("frame shorter than header and tag")
    version, suite, flags, epoch, counter, sid = HEADER.unpack_from(frame)
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersion("unknown frame version")
    if suite not in Suite._value2member_map_:
        raise UnsupportedVersion("unknown cipher suite")
    if counter == 0 or counter > MAX_COUNTER:
        raise MalformedFrame("counter out of range")
    return FrameHeader(
        version, Suite(suite), Flags(flags), epoch, counter, sid, frame[:HEADER_BYTES]
    )


def _aead(suite: Suite, key: bytes) -> AESGCM | ChaCha20Poly1305:
    return AESGCM(key) if suite is Suite.AES_256_GCM else ChaCha20Poly1305(key)


def _nonce(iv: bytes, counter: int) -> bytes:
    return (int.from_bytes(iv, "big") ^ counter).to_bytes(12, "big")


def _associated_data(header: bytes, device_id: str, topic: str) -> bytes:
    return header + lp(device_id.encode()) + lp(topic.encode())


def seal_frame(
    keys: DirectionKeys,
    *,
    epoch: int,
    counter: int,
    plaintext: bytes,
    device_id: str,
    topic: str,
    flags: Flags = NO_FLAGS,
    suite: Suite = Suite.AES_256_GCM,
) -> bytes:
    """Encrypt one frame (used by devices for uplink and by the server for downlink)."""
    if not 0 < counter <= MAX_COUNTER:
        raise MalformedFrame("counter out of range")
    header = HEADER.pack(PROTOCOL_VERSION, suite, flags, epoch, counter, keys.sid)
    sealed = _aead(suite, keys.key).encrypt(
        _nonce(keys.iv, counter), plaintext, _associated_data(header, device_id, topic)
    )
    return header + sealed


def open_frame(
    keys: DirectionKeys, header: FrameHeader, frame: bytes, *, device_id: str, topic: str
) -> bytes:
    """Authenticate and decrypt a frame whose header was parsed with :func:`parse_header`.

    Raises:
        DecryptionFailed: the tag does not verify (any bit flipped, wrong key, wrong topic).
    """
    try:
        return _aead(header.suite, keys.key).decrypt(
            _nonce(keys.iv, header.counter),
            frame[HEADER_BYTES:],
            _associated_data(header.raw, device_id, topic),
        )
    except InvalidTag as exc:
        raise DecryptionFailed(f"session/{header.epoch}") from exc
