"""Signed firmware manifests, anti-rollback and version order (pure).

A manifest describes one firmware artifact: its version, an anti-rollback sequence number, the
device models it fits, the oldest version it may be installed over, and the artifact's size
and SHA-256. It travels as **canonical JSON** (sorted keys, no spaces, ASCII), and an
**Ed25519 release key** signs ``DOMAIN || canonical bytes``. The release key is not the
server's root key: operators sign offline (``qnect ota sign-manifest``) and devices hold only
the public key, so a compromised server or database can pick *which* signed release a device
gets, never forge one (SUIT RFC 9124 / TUF's offline targets key, research/iot-anchors.md §1e).

Rollback protection on the device: a manifest is installable only if its sequence number is
strictly greater than the one the device last installed and its version strictly newer; an old,
validly signed release with a higher version string but an older sequence number is refused.

Does not own: storage, transport or the campaign (``device_registry.ota``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from crypto.errors import BadSignature, FirmwareRefused, InvalidKeyMaterial, MalformedManifest

MANIFEST_FORMAT = 1
DOMAIN = b"qnect/fw-manifest/v1\x00"  # signatures over manifests never verify as anything else
SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32
MAX_MANIFEST_BYTES = 1024  # the largest legitimate manifest is ~300 B; bounds parse work
MAX_SEQ = 2**53 - 1  # fits a JSON number exactly everywhere
MAX_ARTIFACT_BYTES = 64 * 1024 * 1024  # firmware images of the product line are a few MiB
MAX_MODELS = 16
# The firmware-version format devices report in their info frame (device_registry.profiles).
_VERSION = re.compile(
    r"(\d{1,4})\.(\d{1,4})\.(\d{1,6})(?:-([0-9A-Za-z.]{1,16})|\+[0-9A-Za-z.]{1,16})?"
)
_MODEL = re.compile(r"[a-z][a-z0-9_]{0,31}")
_KEYS = frozenset({"format", "version", "seq", "models", "min_version", "size", "sha256"})


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a release signs about one artifact."""

    version: str
    seq: int  # anti-rollback sequence number, strictly increasing per model line
    models: tuple[str, ...]
    min_version: str  # the oldest installed version this may be installed over
    size: int
    sha256: bytes

    def canonical(self) -> bytes:
        """The exact bytes that are signed and shipped (validated first).

        Raises:
            MalformedManifest: a field is out of its format or range.
        """
        _check(self)
        doc = {
            "format": MANIFEST_FORMAT,
            "version": self.version,
            "seq": self.seq,
            "models": sorted(self.models),
            "min_version": self.min_version,
            "size": self.size,
            "sha256": self.sha256.hex(),
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@dataclass(frozen=True, slots=True)
class SignedManifest:
    """Canonical manifest bytes and their Ed25519 signature."""

    blob: bytes
    signature: bytes


def version_key(version: str) -> tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]:
    """A sort key giving semantic-version precedence (build metadata ignored).

    A pre-release sorts before its release; pre-release fields compare numerically when
    numeric, numbers before text (SemVer 2.0.0 §11).

    Raises:
        MalformedManifest: not ``MAJOR.MINOR.PATCH[-pre][+build]`` as devices report it.
    """
    match = _VERSION.fullmatch(version)
    if match is None:
        raise MalformedManifest("version is not MAJOR.MINOR.PATCH")
    major, minor, patch, pre = match.groups()
    if pre is None:
        return (int(major), int(minor), int(patch), 1, ())
    fields: tuple[tuple[int, int | str], ...] = tuple(
        (0, int(p)) if p.isdigit() else (1, p) for p in pre.split(".")
    )
    return (int(major), int(minor), int(patch), 0, fields)


def is_version(text: str) -> bool:
    """Whether *text* is a firmware version in the reported format."""
    return _VERSION.fullmatch(text) is not None


def _check(m: Manifest) -> None:
    version_key(m.version)
    version_key(m.min_version)
    if type(m.seq) is not int or not 1 <= m.seq <= MAX_SEQ:
        raise MalformedManifest("seq must be an integer in 1..2**53-1")
    if not 1 <= len(m.models) <= MAX_MODELS or len(set(m.models)) != len(m.models):
        raise MalformedManifest("models must be 1..16 distinct names")
    if not all(isinstance(x, str) and _MODEL.fullmatch(x) for x in m.models):
        raise MalformedManifest("bad model name")
    if type(m.size) is not int or not 1 <= m.size <= MAX_ARTIFACT_BYTES:
        raise MalformedManifest("size out of range")
    if len(m.sha256) != 32:
        raise MalformedManifest("sha256 must be 32 bytes")
    if version_key(m.min_version) > version_key(m.version):
        raise MalformedManifest("min_version is newer than version")


def parse_manifest(blob: bytes) -> Manifest:
    """Read canonical manifest bytes (after the signature verified).

    Raises:
        MalformedManifest: not canonical JSON of a complete, valid manifest.
    """
    if len(blob) > MAX_MANIFEST_BYTES:
        raise MalformedManifest("manifest too large")
    try:
        doc: Any = json.loads(blob.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedManifest("not JSON") from exc
    if not isinstance(doc, dict) or set(doc) != _KEYS or doc["format"] != MANIFEST_FORMAT:
        raise MalformedManifest("not a format-1 manifest")
    fields = (doc["version"], doc["min_version"], doc["sha256"])
    if not all(isinstance(f, str) for f in fields) or not isinstance(doc["models"], list):
        raise MalformedManifest("mistyped field")
    try:
        digest = bytes.fromhex(doc["sha256"])
    except ValueError as exc:
        raise MalformedManifest("sha256 is not hex") from exc
    manifest = Manifest(
        doc["version"], doc["seq"], tuple(doc["models"]), doc["min_version"], doc["size"], digest
    )
    if manifest.canonical() != blob:  # one encoding only: what was signed is what is read
        raise MalformedManifest("not in canonical form")
    return manifest


def sign_manifest(key: Ed25519PrivateKey, manifest: Manifest) -> SignedManifest:
    """Sign *manifest* with the release key (offline, operator side)."""
    blob = manifest.canonical()
    return SignedManifest(blob, key.sign(DOMAIN + blob))


def verify_manifest(blob: bytes, signature: bytes, public_key: bytes) -> Manifest:
    """Verify a manifest's signature under the release public key, then parse it.

    Raises:
        BadSignature: the signature does not verify (or has the wrong length).
        MalformedManifest: it verifies but is not a valid manifest.
        InvalidKeyMaterial: *public_key* is not 32 bytes.
    """
    pub = load_public_key(public_key)
    if len(signature) != SIGNATURE_BYTES:
        raise BadSignature("signature has the wrong length")
    try:
        pub.verify(signature, DOMAIN + blob)
    except InvalidSignature as exc:
        raise BadSignature("manifest signature does not verify") from exc
    return parse_manifest(blob)


def check_installable(
    manifest: Manifest, *, model: str, current_version: str, current_seq: int
) -> None:
    """The device's decision on a verified manifest.

    Raises:
        FirmwareRefused: wrong model, not newer by sequence or version, or the installed
            version is older than the manifest's minimum.
    """
    if model not in manifest.models:
        raise FirmwareRefused("incompatible_model")
    if manifest.seq <= current_seq:
        raise FirmwareRefused("rollback_seq")
    if version_key(manifest.version) <= version_key(current_version):
        raise FirmwareRefused("rollback_version")
    if version_key(current_version) < version_key(manifest.min_version):
        raise FirmwareRefused("below_min_version")


def artifact_digest(content: bytes) -> bytes:
    """SHA-256 of an artifact."""
    return hashlib.sha256(content).digest()


def new_release_key() -> Ed25519PrivateKey:
    """A new random release signing key."""
    return Ed25519PrivateKey.generate()


def private_pem(key: Ed25519PrivateKey) -> bytes:
    """PKCS#8 PEM of a release key (unencrypted: keep the file offline, mode 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_pem(data: bytes) -> Ed25519PrivateKey:
    """Load a release key from PEM.

    Raises:
        InvalidKeyMaterial: not an unencrypted Ed25519 PKCS#8 key.
    """
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidKeyMaterial("not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidKeyMaterial("not an Ed25519 key")
    return key


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key of a release key."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_public_key(raw: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from its 32 raw bytes.

    Raises:
        InvalidKeyMaterial: not 32 bytes.
    """
    if len(raw) != PUBLIC_KEY_BYTES:
        raise InvalidKeyMaterial("an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def parse_public_key(text: str) -> bytes:
    """A release public key from its 64 hex digits (``QNECT_OTA_RELEASE_PUBKEY``).

    Raises:
        InvalidKeyMaterial: not 64 hex digits.
    """
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError as exc:
        raise InvalidKeyMaterial("release public key is not hex") from exc
    load_public_key(raw)
    return raw
