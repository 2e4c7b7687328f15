"""Field envelope v1: layout vector, context binding and rejection of foreign envelopes."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crypto.envelope import DataKey, EnvelopeHeader, FieldCipher, FieldContext, read_header
from crypto.errors import DecryptionFailed, MalformedFrame, UnsupportedVersion
from crypto.keys import KeyClass

KEY = bytes(range(32))
OWNER = "owner-1"
CONTEXT = FieldContext("devices", "mac", "dev-1")
NONCE = bytes([9]) * 12
PLAINTEXT = b"AA:BB:CC:DD:EE:FF"
ENVELOPE = (
    "0101020003090909090909090909090909"
    "f2593279c5a500e7eb4d74c3eed381897fb5927c84742cb45cbb7955e0ca4e6750"
)


def _cipher(
    owner: str = OWNER, key_class: KeyClass = KeyClass.NETWORK, version: int = 3, key: bytes = KEY
) -> FieldCipher:
    return FieldCipher(DataKey(owner, key_class, version, key))


def _lp(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def test_envelope_vector():
    """Sealing the fixed value under the fixed key and context yields the pinned bytes."""
    assert _cipher().seal(PLAINTEXT, CONTEXT, nonce=NONCE).hex() == ENVELOPE


def test_envelope_matches_spec():
    """Envelope = header, nonce, AES-GCM(AD = header||lp(table)||lp(col)||lp(row)||lp(owner))."""
    header = struct.pack(">BBBH", 1, 1, KeyClass.NETWORK, 3)
    ad = header + b"".join(_lp(p.encode()) for p in ("devices", "mac", "dev-1", OWNER))
    expected = header + NONCE + AESGCM(KEY).encrypt(NONCE, PLAINTEXT, ad)
    assert expected.hex() == ENVELOPE


def test_associated_data_is_length_prefixed():
    """associated_data length-prefixes each part, so shifting a boundary changes it."""
    assert CONTEXT.associated_data("o") == (b"\x00\x07devices\x00\x03mac\x00\x05dev-1\x00\x01o")
    assert FieldContext("ab", "c", "d").associated_data("o") != FieldContext(
        "a", "bc", "d"
    ).associated_data("o")


@pytest.mark.parametrize("plaintext", [b"", PLAINTEXT, bytes(range(256)) * 4])
def test_round_trip(plaintext: bytes):
    """Open returns what seal encrypted for the same key and context."""
    cipher = _cipher()
    assert cipher.open(cipher.seal(plaintext, CONTEXT, nonce=NONCE), CONTEXT) == plaintext


@pytest.mark.parametrize(
    "moved",
    [
        FieldContext("devices", "mac", "dev-2"),
        FieldContext("devices", "ip", "dev-1"),
        FieldContext("readings", "mac", "dev-1"),
    ],
    ids=["row", "column", "table"],
)
def test_moved_to_other_context_fails(moved: FieldContext):
    """An envelope copied to another row, column or table is DecryptionFailed."""
    cipher = _cipher()
    blob = cipher.seal(PLAINTEXT, CONTEXT, nonce=NONCE)
    with pytest.raises(DecryptionFailed):
        cipher.open(blob, moved)


def test_moved_to_other_owner_fails():
    """An envelope opened with the same key bytes bound to another owner is DecryptionFailed."""
    blob = _cipher().seal(PLAINTEXT, CONTEXT, nonce=NONCE)
    with pytest.raises(DecryptionFailed):
        _cipher(owner="owner-2").open(blob, CONTEXT)


def test_wrong_key_version_fails():
    """An envelope of key version 3 opened by the version 4 cipher is DecryptionFailed."""
    blob = _cipher().seal(PLAINTEXT, CONTEXT, nonce=NONCE)
    with pytest.raises(DecryptionFailed) as info:
        _cipher(version=4).open(blob, CONTEXT)
    assert info.value.key_id == "network/4"


def test_wrong_key_class_fails():
    """An envelope sealed under a NETWORK key is refused by a HEALTH key of the same version."""
    blob = _cipher().seal(PLAINTEXT, CONTEXT, nonce=NONCE)
    with pytest.raises(DecryptionFailed):
        _cipher(key_class=KeyClass.HEALTH).open(blob, CONTEXT)


def test_wrong_key_bytes_fail():
    """An envelope opened by a different key claiming the same class and version fails."""
    blob = _cipher().seal(PLAINTEXT, CONTEXT, nonce=NONCE)
    with pytest.raises(DecryptionFailed):
        _cipher(key=bytes(32)).open(blob, CONTEXT)


def test_any_flipped_bit_after_header_fails():
    """Every single-bit flip in nonce, ciphertext or tag is DecryptionFailed."""
    cipher = _cipher()
    blob = cipher.seal(PLAINTEXT, CONTEXT, nonce=NONCE)
    for bit in range(5 * 8, len(blob) * 8):
        flipped = bytearray(blob)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(DecryptionFailed):
            cipher.open(bytes(flipped), CONTEXT)


def test_read_header():
    """read_header names the key class and version the envelope needs."""
    blob = _cipher().seal(PLAINTEXT, CONTEXT, nonce=NONCE)
    assert read_header(blob) == EnvelopeHeader(KeyClass.NETWORK, 3)


@pytest.mark.parametrize("prefix", [b"\x02\x01", b"\x00\x01", b"\x01\x02"])
def test_unknown_version_or_algorithm_is_unsupported(prefix: bytes):
    """An envelope with an unknown version or algorithm byte is UnsupportedVersion."""
    blob = prefix + bytes.fromhex(ENVELOPE)[2:]
    with pytest.raises(UnsupportedVersion):
        read_header(blob)
    with pytest.raises(UnsupportedVersion):
        _cipher().open(blob, CONTEXT)


@pytest.mark.parametrize("key_class", [0, 8, 255])
def test_unknown_key_class_is_unsupported(key_class: int):
    """An envelope naming an unknown key class is UnsupportedVersion."""
    blob = bytes.fromhex(ENVELOPE)
    with pytest.raises(UnsupportedVersion):
        read_header(blob[:2] + bytes([key_class]) + blob[3:])


@pytest.mark.parametrize("length", [0, 5, 5 + 12 + 15])
def test_short_envelope_is_malformed(length: int):
    """An envelope shorter than header, nonce and tag is MalformedFrame."""
    with pytest.raises(MalformedFrame):
        _cipher().open(bytes.fromhex(ENVELOPE)[:length], CONTEXT)


def test_data_key_repr_hides_key():
    """The repr of a DataKey does not show its key bytes."""
    assert repr(KEY) not in repr(DataKey(OWNER, KeyClass.NETWORK, 3, KEY))


def test_seal_refuses_nonce_of_wrong_length():
    """Seal refuses a nonce that is not 12 bytes, since open could never read it back."""
    with pytest.raises(ValueError):
        _cipher().seal(PLAINTEXT, CONTEXT, nonce=bytes(16))
