"""Key hierarchy primitives: the root key, key-encryption keys, and key wrapping.

Owns: parsing a root key, deriving versioned key-encryption keys (KEKs) from it (one at a time
with ``derive_kek``, or on demand through a ``KekRing``), wrapping and unwrapping key material
(device root keys, data keys) with associated data that binds the wrapped key to its owner and
use. Does not own: where the root key comes from (the caller reads the file or KMS), which KEK
version is current (the ``kek_versions`` table says so) or where wrapped keys are stored.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto.errors import DecryptionFailed, InvalidKeyMaterial, MalformedFrame, UnsupportedVersion

KEY_BYTES = 32
NONCE_BYTES = 12
WRAP_VERSION = 1
_WRAP_HEADER = struct.Struct(">BH")  # wrap format version, KEK version
FIRST_KEK_VERSION = 1  # version 0 is never derived: a zeroed header must not name a real KEK
MAX_KEK_VERSION = 0xFFFF  # the wrap header stores the KEK version as a u16


class KeyClass(IntEnum):
    """What a key protects; data keys are kept per (owner binding, key class)."""

    DEVICE = 1  # device root keys
    NETWORK = 2  # MAC, IP, Wi-Fi identifiers
    LOCATION = 3  # robot-cleaner positions
    HEALTH = 4  # body measurements from scales
    MEDIA = 5  # camera media object references
    PROFILE = 6  # account data
    PSEUDONYM = 7  # per-subject key for audit pseudonyms; destroyed at erasure (unlinkable log)


@dataclass(frozen=True, slots=True)
class Kek:
    """One version of a key-encryption key."""

    version: int
    key: bytes = field(repr=False)


def parse_root_key(text: str) -> bytes:
    """Parse the content of a root key file (64 hex digits).

    Raises:
        InvalidKeyMaterial: the text is not exactly 32 bytes of hex.
    """
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError as exc:
        raise InvalidKeyMaterial("root key file is not hex") from exc
    if len(raw) != KEY_BYTES:
        raise InvalidKeyMaterial("root key must be 32 bytes")
    if len(set(raw)) < 8:  # refuses placeholders such as 00…00 or a repeated pattern
        raise InvalidKeyMaterial("root key looks like a placeholder")
    return raw


def derive_kek(root_key: bytes, version: int) -> Kek:
    """Derive KEK *version* from the root key (HKDF-SHA256, domain-separated by version)."""
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_BYTES,
        salt=None,
        info=b"qnect/kek/v1/" + struct.pack(">H", version),
    )
    return Kek(version=version, key=hkdf.derive(root_key))


def wrap(kek: Kek, material: bytes, *, context: bytes, nonce: bytes) -> bytes:
    """Encrypt key *material* under *kek*; *context* (owner, use) is bound as associated data.

    Layout: ``version(1) kek_version(2) nonce(12) ciphertext+tag``.

    Raises:
        ValueError: the nonce is not 12 bytes.
    """
    if len(nonce) != NONCE_BYTES:
        raise ValueError("nonce must be 12 bytes")
    header = _WRAP_HEADER.pack(WRAP_VERSION, kek.version)
    sealed = AESGCM(kek.key).encrypt(nonce, material, header + context)
    return header + nonce + sealed


def wrapped_kek_version(blob: bytes) -> int:
    """Return the KEK version a wrapped key was sealed under.

    Raises:
        MalformedFrame: the blob is too short.
        UnsupportedVersion: unknown wrap format.
    """
    if len(blob) < _WRAP_HEADER.size + NONCE_BYTES + 16:
        raise MalformedFrame("wrapped key too short")
    fmt, kek_version = _WRAP_HEADER.unpack_from(blob)
    if fmt != WRAP_VERSION:
        raise UnsupportedVersion("unknown wrap format")
    return int(kek_version)


def wrap_header(kek_version: int) -> bytes:
    """The first bytes of every blob wrapped under *kek_version* (lets SQL find stale blobs)."""
    return _WRAP_HEADER.pack(WRAP_VERSION, kek_version)


def unwrap(kek: Kek, blob: bytes, *, context: bytes) -> bytes:
    """Open a wrapped key.

    Raises:
        DecryptionFailed: wrong KEK, wrong context or a tampered blob.
        MalformedFrame: the blob is too short.
        UnsupportedVersion: unknown wrap format.
    """
    if wrapped_kek_version(blob) != kek.version:
        raise DecryptionFailed(f"kek/{kek.version}")
    header = blob[: _WRAP_HEADER.size]
    nonce = blob[_WRAP_HEADER.size : _WRAP_HEADER.size + NONCE_BYTES]
    try:
        return AESGCM(kek.key).decrypt(
            nonce, blob[_WRAP_HEADER.size + NONCE_BYTES :], header + context
        )
    except InvalidTag as exc:
        raise DecryptionFailed(f"kek/{kek.version}") from exc


class KekRing:
    """Every KEK version of one root key, derived on first use and cached (MultiFernet-like).

    Unwrapping reads the KEK version from the blob header, so a process started before a
    rotation still opens keys wrapped after it. Wrapping names its version explicitly: the
    current version lives in the database and is read in the transaction that stores the
    blob, never remembered by a long-lived process (it would go stale at the next rotation).
    """

    __slots__ = ("_cache", "_root")

    def __init__(self, root_key: bytes) -> None:
        """Hold *root_key* (32 bytes, as ``parse_root_key`` returns it).

        Raises:
            InvalidKeyMaterial: the root key is not 32 bytes.
        """
        if len(root_key) != KEY_BYTES:
            raise InvalidKeyMaterial("root key must be 32 bytes")
        self._root = root_key
        self._cache: dict[int, Kek] = {}

    def __repr__(self) -> str:
        """Show which versions are cached, never key material."""
        return f"KekRing(cached={sorted(self._cache)})"

    def kek(self, version: int) -> Kek:
        """KEK *version*, derived on first use.

        Raises:
            UnsupportedVersion: *version* is outside 1..65535 (no KEK has that number).
        """
        kek = self._cache.get(version)
        if kek is None:
            if not FIRST_KEK_VERSION <= version <= MAX_KEK_VERSION:
                raise UnsupportedVersion("no such KEK version")
            kek = self._cache[version] = derive_kek(self._root, version)
        return kek

    def __getitem__(self, version: int, /) -> Kek:
        """``ring[v]`` is ``ring.kek(v)``, for code that looks KEKs up like a mapping."""
        return self.kek(version)

    def wrap(self, material: bytes, *, version: int, context: bytes, nonce: bytes) -> bytes:
        """Wrap *material* under KEK *version* (see ``wrap``).

        Raises:
            UnsupportedVersion: *version* is outside 1..65535.
            ValueError: the nonce is not 12 bytes.
        """
        return wrap(self.kek(version), material, context=context, nonce=nonce)

    def unwrap(self, blob: bytes, *, context: bytes) -> bytes:
        """Open *blob* under the KEK version its header names.

        Raises:
            DecryptionFailed: wrong context, wrong root key or a tampered blob.
            MalformedFrame: the blob is too short.
            UnsupportedVersion: unknown wrap format, or KEK version 0.
        """
        return unwrap(self.kek(wrapped_kek_version(blob)), blob, context=context)

    def rewrap(self, blob: bytes, *, version: int, context: bytes, nonce: bytes) -> bytes:
        """Open *blob* and wrap the same material under KEK *version* with the same context.

        Raises:
            DecryptionFailed: the blob does not open (nothing is rewrapped).
            MalformedFrame: the blob is too short.
            UnsupportedVersion: unknown wrap format or KEK version.
        """
        material = self.unwrap(blob, context=context)
        return self.wrap(material, version=version, context=context, nonce=nonce)


def lp(data: bytes) -> bytes:
    """Length-prefix *data* (u16 big-endian) so concatenated fields cannot be re-split."""
    return struct.pack(">H", len(data)) + data
