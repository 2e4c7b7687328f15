"""Device root-key (DRK) rotation over the downlink: offer and proof of possession (pure).

Owns the messages of one rotation from version ``v`` to ``v + 1`` and how they are protected:

* **offer** (server to device, ``devices/<id>/down/rekey``): the new 32-byte root key and both
  version numbers, inside a downlink frame sealed with the current session's downlink key
  (``Flags.DOWN | RANDOM_COUNTER``: several senders share that key, as with receipts). Only the
  holder of the session, i.e. of the current root key, can read it; the frame's associated
  data binds it to the device and the topic;
* **proof** (device to server, ``devices/<id>/up/rekey``): both version numbers and an HMAC
  under ``K_rekey = HKDF(new DRK, "qnect/rekey/v1" || lp(id))`` over them, carried as the
  plaintext of an ordinary uplink frame of the current session (its counter, its replay
  window). It shows the device holds the new key without revealing it; the key is random per
  offer, so a proof cannot be replayed against another offer.

Does not own: which version is current, pending or retired, the grace period, storage, or when
to offer (``device_registry.postgres_rekey``, ``telemetry.pipeline``, ``broker_bridge.worker``).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto.device_keys import Flags, SessionKeys, open_frame, parse_header, seal_frame
from crypto.errors import DecryptionFailed, MalformedFrame, UnsupportedVersion
from crypto.keys import KEY_BYTES, lp

REKEY_VERSION = 1
MAC_BYTES = 16  # truncated HMAC-SHA256, as the key-exchange MACs (128-bit security)
MAX_DRK_VERSION = 0xFFFF  # key-exchange requests carry the root-key version as a u16
_OFFER = struct.Struct(">BBHH32s")  # version, type, from_version, to_version, new root key
_PROOF = struct.Struct(">BBHH")  # version, type, from_version, to_version (then the MAC)
_OFFER_TYPE = 1
_PROOF_TYPE = 2


@dataclass(frozen=True, slots=True)
class RekeyOffer:
    """A new root key offered to a device, replacing version ``from_version``."""

    from_version: int
    to_version: int
    new_root: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class RekeyProof:
    """A device's claim to hold root key ``to_version``; check it with :func:`verify_proof`."""

    from_version: int
    to_version: int
    mac: bytes = field(repr=False)


def offer_topic(device_id: str) -> str:
    """Downlink topic of offers."""
    return f"devices/{device_id}/down/rekey"


def proof_topic(device_id: str) -> str:
    """Uplink topic of proofs."""
    return f"devices/{device_id}/up/rekey"


def _check_versions(from_version: int, to_version: int) -> None:
    if not 1 <= from_version < to_version <= MAX_DRK_VERSION:
        raise MalformedFrame("root-key versions out of order or range")


def seal_offer(keys: SessionKeys, device_id: str, offer: RekeyOffer, *, counter: int) -> bytes:
    """Seal *offer* under the session's downlink key (server side).

    *counter* is a random non-zero 63-bit value: other senders share the downlink key.

    Raises:
        MalformedFrame: versions out of order or range, a key that is not 32 bytes, or a
            counter out of range.
    """
    _check_versions(offer.from_version, offer.to_version)
    if len(offer.new_root) != KEY_BYTES:
        raise MalformedFrame("a root key is 32 bytes")
    body = _OFFER.pack(
        REKEY_VERSION, _OFFER_TYPE, offer.from_version, offer.to_version, offer.new_root
    )
    return seal_frame(
        keys.down,
        epoch=keys.epoch,
        counter=counter,
        plaintext=body,
        device_id=device_id,
        topic=offer_topic(device_id),
        flags=Flags.DOWN | Flags.RANDOM_COUNTER,
    )


def open_offer(keys: SessionKeys, device_id: str, frame: bytes) -> RekeyOffer:
    """Authenticate and read an offer with the session it names (device side).

    Raises:
        DecryptionFailed: not a downlink frame of this session, or the tag does not verify
            (another device, another topic, another session, any bit flipped).
        MalformedFrame: the frame or its body has the wrong layout.
        UnsupportedVersion: unknown frame or offer version.
    """
    header = parse_header(frame)
    if not header.flags & Flags.DOWN or header.epoch != keys.epoch or header.sid != keys.down.sid:
        raise DecryptionFailed(f"session/{header.epoch}")
    body = open_frame(keys.down, header, frame, device_id=device_id, topic=offer_topic(device_id))
    if len(body) != _OFFER.size:
        raise MalformedFrame("re-key offer has the wrong length")
    version, kind, from_version, to_version, new_root = _OFFER.unpack(body)
    if version != REKEY_VERSION:
        raise UnsupportedVersion("unknown re-key version")
    if kind != _OFFER_TYPE:
        raise MalformedFrame("not a re-key offer")
    _check_versions(from_version, to_version)
    return RekeyOffer(from_version, to_version, new_root)


def rekey_key(new_root: bytes, device_id: str) -> bytes:
    """Derive ``K_rekey``, the key proving possession of *new_root*."""
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"qnect/rekey/v1" + lp(device_id.encode()),
    )
    return hkdf.derive(new_root)


def _mac(new_root: bytes, device_id: str, body: bytes) -> bytes:
    transcript = b"rekey-proof" + lp(device_id.encode()) + body
    return hmac.new(rekey_key(new_root, device_id), transcript, hashlib.sha256).digest()[:MAC_BYTES]


def encode_proof(device_id: str, offer: RekeyOffer) -> bytes:
    """The proof plaintext answering *offer* (device side; seal it as an uplink frame)."""
    body = _PROOF.pack(REKEY_VERSION, _PROOF_TYPE, offer.from_version, offer.to_version)
    return body + _mac(offer.new_root, device_id, body)


def decode_proof(data: bytes) -> RekeyProof:
    """Parse a proof plaintext (server side, after its frame opened); not yet verified.

    Raises:
        MalformedFrame: wrong length, type or version order.
        UnsupportedVersion: unknown re-key version.
    """
    if len(data) != _PROOF.size + MAC_BYTES:
        raise MalformedFrame("re-key proof has the wrong length")
    version, kind, from_version, to_version = _PROOF.unpack_from(data)
    if version != REKEY_VERSION:
        raise UnsupportedVersion("unknown re-key version")
    if kind != _PROOF_TYPE:
        raise MalformedFrame("not a re-key proof")
    _check_versions(from_version, to_version)
    return RekeyProof(from_version, to_version, data[_PROOF.size :])


def verify_proof(proof: RekeyProof, device_id: str, new_root: bytes) -> None:
    """Check that *proof* was made with *new_root* by *device_id* (constant time).

    Raises:
        DecryptionFailed: the MAC does not verify (another key, device or version pair).
    """
    body = _PROOF.pack(REKEY_VERSION, _PROOF_TYPE, proof.from_version, proof.to_version)
    if not hmac.compare_digest(_mac(new_root, device_id, body), proof.mac):
        raise DecryptionFailed(f"drk/{proof.to_version}")
