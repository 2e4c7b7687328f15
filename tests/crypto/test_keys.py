"""Key hierarchy: root key parsing, KEK derivation, wrapping and unwrapping."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto.errors import (
    DecryptionFailed,
    InvalidKeyMaterial,
    MalformedFrame,
    UnsupportedVersion,
)
from crypto.keys import (
    Kek,
    KekRing,
    derive_kek,
    lp,
    parse_root_key,
    unwrap,
    wrap,
    wrap_header,
    wrapped_kek_version,
)

ROOT = bytes(range(32))
KEK_1 = "92bc2995f47b7945172c0d9598f443ef12e8f0cb57b00c53c16c16ab15ac974b"
KEK_2 = "308c8ad1c256bb24cae935306858dd556aad2a9bd9a9ce6b361f6813e271d6c5"
MATERIAL = bytes([0xAB]) * 32
CONTEXT = b"device/abcdefghijklmnop"
NONCE = bytes([5]) * 12
WRAPPED = (
    "010001050505050505050505050505"
    "639a705b11f4348a893eb4d4fb61976919cf7c17cdcf79cf417c56b58bc26817"
    "a8cfc978d3196a13ab4e71cc00b1334a"
)


def _wrapped() -> bytes:
    return wrap(derive_kek(ROOT, 1), MATERIAL, context=CONTEXT, nonce=NONCE)


@pytest.mark.parametrize(
    "text",
    [ROOT.hex(), ROOT.hex().upper(), f"  {ROOT.hex()}\n", ROOT.hex() + "\r\n"],
    ids=["lower", "upper", "padded", "crlf"],
)
def test_parse_root_key_accepts_hex(text: str):
    """parse_root_key returns the 32 bytes of a 64-digit hex file, ignoring outer whitespace."""
    assert parse_root_key(text) == ROOT


@pytest.mark.parametrize("text", ["zz" * 32, ROOT.hex()[:-1], "0x" + ROOT.hex()[2:], ""])
def test_parse_root_key_rejects_non_hex(text: str):
    """Non-hex digits, an odd digit count and a 0x prefix are InvalidKeyMaterial."""
    with pytest.raises(InvalidKeyMaterial):
        parse_root_key(text)


@pytest.mark.parametrize("size", [16, 31, 33, 64])
def test_parse_root_key_rejects_wrong_length(size: int):
    """Hex of anything but 32 bytes is InvalidKeyMaterial."""
    with pytest.raises(InvalidKeyMaterial, match="32 bytes"):
        parse_root_key(bytes(range(size)).hex())


@pytest.mark.parametrize(
    "raw",
    [bytes(32), b"\xff" * 32, bytes.fromhex("deadbeef") * 8, bytes(range(7)) * 4 + bytes(4)],
    ids=["zeros", "ones", "deadbeef", "seven-distinct"],
)
def test_parse_root_key_rejects_placeholders(raw: bytes):
    """All-zero, all-ones and short repeated patterns (fewer than 8 distinct bytes) are refused."""
    with pytest.raises(InvalidKeyMaterial, match="placeholder"):
        parse_root_key(raw.hex())


def test_parse_root_key_accepts_eight_distinct_bytes():
    """A key with exactly 8 distinct byte values is accepted (the placeholder boundary)."""
    raw = bytes(range(8)) * 4
    assert parse_root_key(raw.hex()) == raw


def test_derive_kek_vector_and_spec():
    """KEK v is HKDF-SHA256 of the root key with info 'qnect/kek/v1/' plus u16 v."""
    for version, expected in ((1, KEK_1), (2, KEK_2)):
        info = b"qnect/kek/v1/" + struct.pack(">H", version)
        spec = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(ROOT)
        kek = derive_kek(ROOT, version)
        assert (kek.version, kek.key.hex(), spec.hex()) == (version, expected, expected)


def test_kek_repr_hides_key():
    """The repr of a Kek shows its version, not its key."""
    text = repr(derive_kek(ROOT, 1))
    assert "version=1" in text
    assert KEK_1 not in text
    assert "key" not in text


def test_wrap_vector_and_spec():
    """Wrap is ver(1) kek_ver(2) nonce(12) AES-GCM(material, AD = header||context)."""
    header = b"\x01\x00\x01"
    spec = header + NONCE + AESGCM(bytes.fromhex(KEK_1)).encrypt(NONCE, MATERIAL, header + CONTEXT)
    assert _wrapped().hex() == WRAPPED
    assert spec.hex() == WRAPPED


def test_unwrap_round_trip():
    """Unwrap returns the wrapped material under the same KEK and context."""
    assert unwrap(derive_kek(ROOT, 1), _wrapped(), context=CONTEXT) == MATERIAL


def test_wrapped_kek_version():
    """wrapped_kek_version reads the KEK version from the header."""
    blob = wrap(derive_kek(ROOT, 513), MATERIAL, context=CONTEXT, nonce=NONCE)
    assert wrapped_kek_version(blob) == 513


@pytest.mark.parametrize("context", [b"", b"device/abcdefghijklmnoq", CONTEXT + b"\x00"])
def test_unwrap_wrong_context_fails(context: bytes):
    """A wrapped key opened with another context (owner or use) is DecryptionFailed."""
    with pytest.raises(DecryptionFailed):
        unwrap(derive_kek(ROOT, 1), _wrapped(), context=context)


def test_unwrap_wrong_kek_version_fails():
    """A wrapped key opened with a KEK of another version is DecryptionFailed naming that KEK."""
    with pytest.raises(DecryptionFailed) as info:
        unwrap(derive_kek(ROOT, 2), _wrapped(), context=CONTEXT)
    assert info.value.key_id == "kek/2"


def test_unwrap_wrong_kek_same_version_fails():
    """A KEK of the right version but from another root key does not open the blob."""
    other = Kek(1, derive_kek(ROOT, 2).key)
    with pytest.raises(DecryptionFailed):
        unwrap(other, _wrapped(), context=CONTEXT)


def test_unwrap_tampered_fails():
    """Every single-bit flip in nonce, ciphertext or tag is DecryptionFailed."""
    blob = _wrapped()
    kek = derive_kek(ROOT, 1)
    for bit in range(3 * 8, len(blob) * 8):
        flipped = bytearray(blob)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(DecryptionFailed):
            unwrap(kek, bytes(flipped), context=CONTEXT)


@pytest.mark.parametrize("length", [0, 3, 3 + 12 + 15])
def test_unwrap_short_blob_is_malformed(length: int):
    """A blob shorter than header, nonce and tag is MalformedFrame."""
    with pytest.raises(MalformedFrame):
        unwrap(derive_kek(ROOT, 1), _wrapped()[:length], context=CONTEXT)


@pytest.mark.parametrize("fmt", [0, 2, 255])
def test_unwrap_unknown_format_is_unsupported(fmt: int):
    """A blob with an unknown wrap format byte is UnsupportedVersion."""
    blob = bytes([fmt]) + _wrapped()[1:]
    with pytest.raises(UnsupportedVersion):
        wrapped_kek_version(blob)
    with pytest.raises(UnsupportedVersion):
        unwrap(derive_kek(ROOT, 1), blob, context=CONTEXT)


def test_lp_prefixes_u16_length():
    """Lp prefixes data with its length as a big-endian u16."""
    assert lp(b"") == b"\x00\x00"
    assert lp(b"abc") == b"\x00\x03abc"
    assert lp(bytes(300))[:2] == b"\x01\x2c"


def test_wrap_refuses_nonce_of_wrong_length():
    """Wrap refuses a nonce that is not 12 bytes, since unwrap could never read it back."""
    with pytest.raises(ValueError):
        wrap(derive_kek(ROOT, 1), MATERIAL, context=CONTEXT, nonce=bytes(16))


def test_kek_ring_derives_like_derive_kek_and_caches():
    """The ring derives any version as derive_kek does and returns the cached object next time."""
    ring = KekRing(ROOT)
    first = ring.kek(2)
    assert first == derive_kek(ROOT, 2)
    assert ring.kek(2) is first
    assert ring[2] is first
    assert ring.kek(65535) == derive_kek(ROOT, 65535)
    assert repr(ring) == "KekRing(cached=[2, 65535])"


@pytest.mark.parametrize("version", [0, -1, 65536])
def test_kek_ring_refuses_versions_outside_u16_range(version: int):
    """Version 0, negative versions and versions past the u16 header are UnsupportedVersion."""
    with pytest.raises(UnsupportedVersion):
        KekRing(ROOT).kek(version)


def test_kek_ring_refuses_short_root_key():
    """A ring over anything but 32 bytes of root key is InvalidKeyMaterial."""
    with pytest.raises(InvalidKeyMaterial):
        KekRing(ROOT[:31])


def test_kek_ring_unwraps_any_version_from_the_header():
    """A ring opens blobs of versions it never saw, reading the version from the blob header."""
    ring = KekRing(ROOT)
    assert ring.unwrap(_wrapped(), context=CONTEXT) == MATERIAL
    newer = wrap(derive_kek(ROOT, 7), MATERIAL, context=CONTEXT, nonce=NONCE)
    assert ring.unwrap(newer, context=CONTEXT) == MATERIAL


def test_kek_ring_refuses_blob_naming_version_zero():
    """A blob whose header names KEK 0 is UnsupportedVersion, never opened under a derived key."""
    blob = b"\x01\x00\x00" + _wrapped()[3:]
    with pytest.raises(UnsupportedVersion):
        KekRing(ROOT).unwrap(blob, context=CONTEXT)


def test_kek_ring_wrap_is_wrap_under_named_version():
    """ring.wrap under version v is byte-identical to wrap with derive_kek(root, v)."""
    ring = KekRing(ROOT)
    assert ring.wrap(MATERIAL, version=1, context=CONTEXT, nonce=NONCE).hex() == WRAPPED


def test_kek_ring_rewrap_moves_blob_to_target_version():
    """Rewrap keeps material and context, changes the header version, and fails on a bad context."""
    ring = KekRing(ROOT)
    moved = ring.rewrap(_wrapped(), version=2, context=CONTEXT, nonce=bytes([9]) * 12)
    assert wrapped_kek_version(moved) == 2
    assert moved[:3] == wrap_header(2) == b"\x01\x00\x02"
    assert unwrap(derive_kek(ROOT, 2), moved, context=CONTEXT) == MATERIAL
    with pytest.raises(DecryptionFailed):
        ring.rewrap(_wrapped(), version=2, context=b"other", nonce=NONCE)
