"""Errors raised by the crypto package.

Failures are deliberately vague (as cryptography's ``InvalidTag``): a caller learns *that* a
ciphertext did not open under a key, never why, so no oracle leaks through error texts.
"""

from __future__ import annotations


class CryptoError(Exception):
    """Base class of every error raised by :mod:`crypto`."""


class DecryptionFailed(CryptoError):
    """A ciphertext did not authenticate under the key it names (tag, key or context wrong)."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"decryption failed under key {key_id}")
        self.key_id = key_id


class MalformedFrame(CryptoError):
    """A frame, envelope or key-exchange message is too short or has an unknown layout."""


class UnsupportedVersion(CryptoError):
    """A frame or envelope names a protocol version or cipher suite this code does not speak."""


class InvalidKeyMaterial(CryptoError):
    """Key material has the wrong length or format (a root key file, a wrapped key)."""
