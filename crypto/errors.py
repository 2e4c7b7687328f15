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


class TokenError(CryptoError):
    """An MQTT password token was refused; ``reason`` names why, for logs and counters.

    The message and attributes never carry the token itself.
    """

    reason = "token_invalid"

    def __init__(self) -> None:
        super().__init__(self.reason)


class MalformedToken(TokenError):
    """The password is not shaped like a ``q1`` token (wrong prefix, fields or length)."""

    reason = "token_malformed"


class TokenExpired(TokenError):
    """The token's expiry lies further in the past than the clock-skew window allows."""

    reason = "token_expired"


class TokenTooFarAhead(TokenError):
    """The token expires later than the longest lifetime allowed (plus skew) from now."""

    reason = "token_too_far_ahead"


class TokenMacMismatch(TokenError):
    """The token's MAC does not verify for this device under the key version it names."""

    reason = "token_bad_mac"


class UnknownKeyVersion(TokenError):
    """The token names a device root-key version the server holds no key for."""

    reason = "token_unknown_key_version"


class BadSignature(CryptoError):
    """A firmware manifest's signature does not verify under the release key (or is absent)."""


class MalformedManifest(CryptoError):
    """A firmware manifest is not the canonical, complete, well-typed document it must be."""


class FirmwareRefused(CryptoError):
    """A verified manifest a device must not install; ``reason`` is a stable code.

    Reasons: ``incompatible_model``, ``rollback_seq``, ``rollback_version``,
    ``below_min_version``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
