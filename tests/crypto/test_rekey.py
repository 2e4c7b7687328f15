"""Root-key rotation messages: the sealed offer and the proof of possession, and every refusal."""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto.device_keys import (
    HEADER_BYTES,
    Flags,
    encode_kx_request,
    kx_key,
    kx_request_version,
    parse_header,
    seal_frame,
    session_keys,
)
from crypto.errors import CryptoError, DecryptionFailed, MalformedFrame, UnsupportedVersion
from crypto.rekey import (
    MAX_DRK_VERSION,
    RekeyOffer,
    decode_proof,
    encode_proof,
    offer_topic,
    open_offer,
    proof_topic,
    rekey_key,
    seal_offer,
    verify_proof,
)

ROOT = bytes(range(32))
NEW_ROOT = bytes(range(32, 64))
DEVICE = "abcdefghijklmnop"
OTHER = "qrstuvwxyzabcdef"
KEYS = session_keys(
    ROOT, DEVICE, epoch=7, device_nonce=bytes([1]) * 16, server_nonce=bytes([2]) * 16
)
OFFER = RekeyOffer(1, 2, NEW_ROOT)
COUNTER = 0x0123456789ABCDEF
# Produced once by this implementation; pins the proof layout and its key schedule.
PROOF = "01020001000244d274d09623c14c20cb930d2b7d0923"


def _sealed_body(body: bytes, *, keys=KEYS, device=DEVICE) -> bytes:
    return seal_frame(
        keys.down,
        epoch=keys.epoch,
        counter=COUNTER,
        plaintext=body,
        device_id=device,
        topic=offer_topic(device),
        flags=Flags.DOWN | Flags.RANDOM_COUNTER,
    )


def test_topics():
    """Offers go down on devices/<id>/down/rekey, proofs up on devices/<id>/up/rekey."""
    assert offer_topic(DEVICE) == f"devices/{DEVICE}/down/rekey"
    assert proof_topic(DEVICE) == f"devices/{DEVICE}/up/rekey"


def test_offer_round_trip():
    """The device reads back the new key and versions from a downlink frame of its session."""
    frame = seal_offer(KEYS, DEVICE, OFFER, counter=COUNTER)
    header = parse_header(frame)
    assert header.flags == Flags.DOWN | Flags.RANDOM_COUNTER
    assert (header.epoch, header.counter, header.sid) == (7, COUNTER, KEYS.down.sid)
    assert open_offer(KEYS, DEVICE, frame) == OFFER
    assert NEW_ROOT not in frame  # the key travels encrypted
    assert "new_root" not in repr(OFFER).split("(")[1]  # never printed


@pytest.mark.parametrize("index", range(HEADER_BYTES + 32 + 6 + 16))
def test_offer_any_flipped_byte_is_refused(index: int):
    """Flipping any byte of an offer (header, body or tag) makes it unreadable."""
    frame = bytearray(seal_offer(KEYS, DEVICE, OFFER, counter=COUNTER))
    frame[index] ^= 0x01
    with pytest.raises(CryptoError):
        open_offer(KEYS, DEVICE, bytes(frame))


def test_offer_refused_under_another_session_device_or_direction():
    """An offer opens only with its session's downlink key, for its device."""
    frame = seal_offer(KEYS, DEVICE, OFFER, counter=COUNTER)
    other_session = session_keys(
        ROOT, DEVICE, epoch=7, device_nonce=bytes([3]) * 16, server_nonce=bytes([2]) * 16
    )
    other_device = session_keys(
        ROOT, OTHER, epoch=7, device_nonce=bytes([1]) * 16, server_nonce=bytes([2]) * 16
    )
    for keys, device in ((other_session, DEVICE), (other_device, OTHER), (KEYS, OTHER)):
        with pytest.raises(DecryptionFailed):
            open_offer(keys, device, frame)
    later = session_keys(
        ROOT, DEVICE, epoch=8, device_nonce=bytes([1]) * 16, server_nonce=bytes([2]) * 16
    )
    with pytest.raises(DecryptionFailed):
        open_offer(later, DEVICE, frame)  # names epoch 7, not this session


def test_uplink_frame_is_not_an_offer():
    """A frame without the downlink flag is refused before any decryption."""
    frame = seal_frame(
        KEYS.up, epoch=7, counter=1, plaintext=b"x" * 38, device_id=DEVICE, topic="t"
    )
    with pytest.raises(DecryptionFailed):
        open_offer(KEYS, DEVICE, frame)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"\x01\x01" + b"\x00" * 10, MalformedFrame),  # wrong length
        (struct.pack(">BBHH32s", 2, 1, 1, 2, NEW_ROOT), UnsupportedVersion),
        (struct.pack(">BBHH32s", 1, 2, 1, 2, NEW_ROOT), MalformedFrame),  # a proof's type
        (struct.pack(">BBHH32s", 1, 1, 2, 2, NEW_ROOT), MalformedFrame),  # not increasing
        (struct.pack(">BBHH32s", 1, 1, 0, 1, NEW_ROOT), MalformedFrame),  # version 0
    ],
)
def test_offer_body_layout_is_checked(body: bytes, error: type[CryptoError]):
    """An authentic frame whose body is not a well-formed offer is refused."""
    with pytest.raises(error):
        open_offer(KEYS, DEVICE, _sealed_body(body))


@pytest.mark.parametrize(
    "offer",
    [
        RekeyOffer(2, 2, NEW_ROOT),
        RekeyOffer(0, 1, NEW_ROOT),
        RekeyOffer(1, MAX_DRK_VERSION + 1, NEW_ROOT),
        RekeyOffer(1, 2, NEW_ROOT[:31]),
    ],
)
def test_seal_offer_refuses_bad_versions_and_keys(offer: RekeyOffer):
    """The server never seals an offer with versions out of order/range or a short key."""
    with pytest.raises(MalformedFrame):
        seal_offer(KEYS, DEVICE, offer, counter=COUNTER)


def test_proof_vector_and_round_trip():
    """The proof for the fixed offer has the pinned bytes and verifies under the new key."""
    data = encode_proof(DEVICE, OFFER)
    assert data.hex() == PROOF
    proof = decode_proof(data)
    assert (proof.from_version, proof.to_version) == (1, 2)
    verify_proof(proof, DEVICE, NEW_ROOT)
    assert NEW_ROOT not in data


def test_proof_matches_an_independent_recomputation():
    """MAC = HMAC-SHA256(HKDF(new DRK, "qnect/rekey/v1" || lp(id)), transcript)[:16]."""
    info = b"qnect/rekey/v1" + struct.pack(">H", len(DEVICE)) + DEVICE.encode()
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(NEW_ROOT)
    body = struct.pack(">BBHH", 1, 2, 1, 2)
    transcript = b"rekey-proof" + struct.pack(">H", len(DEVICE)) + DEVICE.encode() + body
    mac = hmac.new(key, transcript, hashlib.sha256).digest()[:16]
    assert encode_proof(DEVICE, OFFER) == body + mac


def test_proof_refused_under_wrong_key_or_device():
    """A proof made with another key, or by another device, does not verify."""
    proof = decode_proof(encode_proof(DEVICE, OFFER))
    with pytest.raises(DecryptionFailed):
        verify_proof(proof, DEVICE, ROOT)  # the old key proves nothing
    with pytest.raises(DecryptionFailed):
        verify_proof(proof, OTHER, NEW_ROOT)
    other = decode_proof(encode_proof(OTHER, OFFER))
    with pytest.raises(DecryptionFailed):
        verify_proof(other, DEVICE, NEW_ROOT)


@pytest.mark.parametrize("index", range(6, 22))
def test_proof_tampered_mac_is_refused(index: int):
    """Any flipped bit of the MAC fails verification."""
    data = bytearray(encode_proof(DEVICE, OFFER))
    data[index] ^= 0x80
    with pytest.raises(DecryptionFailed):
        verify_proof(decode_proof(bytes(data)), DEVICE, NEW_ROOT)


def test_proof_with_other_versions_is_refused():
    """The MAC covers both versions: a proof relabelled for another rotation fails."""
    data = bytearray(encode_proof(DEVICE, OFFER))
    data[2:6] = struct.pack(">HH", 2, 3)
    with pytest.raises(DecryptionFailed):
        verify_proof(decode_proof(bytes(data)), DEVICE, NEW_ROOT)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (bytes(21), MalformedFrame),
        (bytes(23), MalformedFrame),
        (struct.pack(">BBHH", 9, 2, 1, 2) + bytes(16), UnsupportedVersion),
        (struct.pack(">BBHH", 1, 1, 1, 2) + bytes(16), MalformedFrame),
        (struct.pack(">BBHH", 1, 2, 3, 2) + bytes(16), MalformedFrame),
    ],
)
def test_proof_layout_is_checked(data: bytes, error: type[CryptoError]):
    """Wrong length, version, type or version order: refused before any MAC is computed."""
    with pytest.raises(error):
        decode_proof(data)


def test_rekey_key_is_separated_by_device_and_key():
    """K_rekey differs per device and per root key, and from the root key itself."""
    keys = {rekey_key(NEW_ROOT, DEVICE), rekey_key(NEW_ROOT, OTHER), rekey_key(ROOT, DEVICE)}
    assert len(keys) == 3
    assert NEW_ROOT not in keys


def test_kx_request_version_is_read_before_authentication():
    """The server picks the key by the version a request names; a wrong length is malformed."""
    k_kx = kx_key(NEW_ROOT, DEVICE)
    request = encode_kx_request(k_kx, DEVICE, drk_version=2, ts_ms=1, cid=1, device_nonce=bytes(16))
    assert kx_request_version(request) == 2
    with pytest.raises(MalformedFrame):
        kx_request_version(request[:-1])
