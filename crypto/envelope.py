"""Field envelope v1: AEAD encryption of one stored value under a data key (pure).

Layout: ``version(1) alg(1) key_class(1) key_version(2) nonce(12) ciphertext+tag``.
Associated data = header || lp(table) || lp(column) || lp(row identity) || lp(owner), so a
ciphertext copied to another row, column, table or owner does not decrypt. There is no
plaintext mode: a missing key is an error, never a pass-through.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crypto.errors import DecryptionFailed, MalformedFrame, UnsupportedVersion
from crypto.keys import NONCE_BYTES, KeyClass, lp

ENVELOPE_VERSION = 1
ALG_AES_256_GCM = 1
_HEADER = struct.Struct(">BBBH")


@dataclass(frozen=True, slots=True)
class DataKey:
    """A plaintext data key in memory, for one (owner, key class, version)."""

    owner: str
    key_class: KeyClass
    version: int
    key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class FieldContext:
    """Where a value is stored; bound into the ciphertext as associated data."""

    table: str
    column: str
    row: str

    def associated_data(self, owner: str) -> bytes:
        """Encode the context and *owner* unambiguously."""
        return _place(self.table, self.column) + lp(self.row.encode()) + _owner(owner)


@functools.lru_cache(maxsize=256)
def _place(table: str, column: str) -> bytes:
    return lp(table.encode()) + lp(column.encode())


@functools.lru_cache(maxsize=65536)
def _owner(owner: str) -> bytes:
    return lp(owner.encode())


@dataclass(frozen=True, slots=True)
class EnvelopeHeader:
    """The clear part of an envelope: which key opens it."""

    key_class: KeyClass
    key_version: int


class FieldCipher:
    """Encrypts values under one data key, reusing the AEAD object (about 0.5 µs per value)."""

    __slots__ = ("_aead", "_header", "data_key")

    def __init__(self, data_key: DataKey) -> None:
        """Bind the cipher to *data_key*."""
        self.data_key = data_key
        self._aead = AESGCM(data_key.key)
        self._header = _HEADER.pack(
            ENVELOPE_VERSION, ALG_AES_256_GCM, data_key.key_class, data_key.version
        )

    def seal(self, plaintext: bytes, context: FieldContext, *, nonce: bytes) -> bytes:
        """Encrypt *plaintext* for *context*; *nonce* must be 12 fresh random bytes.

        Raises:
            ValueError: the nonce is not 12 bytes (the envelope could never be opened).
        """
        if len(nonce) != NONCE_BYTES:
            raise ValueError("nonce must be 12 bytes")
        aad = self._header + context.associated_data(self.data_key.owner)
        return self._header + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, blob: bytes, context: FieldContext) -> bytes:
        """Decrypt an envelope sealed by this key.

        Raises:
            DecryptionFailed: wrong key, context or owner, or the blob was altered.
        """
        header = read_header(blob)
        key_id = f"{self.data_key.key_class.name.lower()}/{self.data_key.version}"
        if (header.key_class, header.key_version) != (
            self.data_key.key_class,
            self.data_key.version,
        ):
            raise DecryptionFailed(key_id)
        start = _HEADER.size + NONCE_BYTES
        aad = blob[: _HEADER.size] + context.associated_data(self.data_key.owner)
        try:
            return self._aead.decrypt(blob[_HEADER.size : start], blob[start:], aad)
        except InvalidTag as exc:
            raise DecryptionFailed(key_id) from exc


def read_header(blob: bytes) -> EnvelopeHeader:
    """Read which key class and version an envelope needs.

    Raises:
        MalformedFrame: too short to be an envelope.
        UnsupportedVersion: unknown envelope version, algorithm or key class.
    """
    if len(blob) < _HEADER.size + NONCE_BYTES + 16:
        raise MalformedFrame("envelope too short")
    version, alg, key_class, key_version = _HEADER.unpack_from(blob)
    if version != ENVELOPE_VERSION or alg != ALG_AES_256_GCM:
        raise UnsupportedVersion("unknown envelope version or algorithm")
    if key_class not in KeyClass._value2member_map_:
        raise UnsupportedVersion("unknown key class")
    return EnvelopeHeader(KeyClass(key_class), key_version)


def data_key_context(owner: str, key_class: int, version: int) -> bytes:
    """Associated data binding a wrapped data key to its owner, class and version.

    *owner* is a device binding or a subject id: every row of ``data_keys`` uses this context.
    """
    return f"dek|{owner}|{int(key_class)}|{version}".encode()
