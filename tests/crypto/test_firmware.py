"""Signed firmware manifests: canonical form, Ed25519 verification, rollback rules."""

from __future__ import annotations

import json

import pytest

from crypto.errors import BadSignature, FirmwareRefused, InvalidKeyMaterial, MalformedManifest
from crypto.firmware import (
    Manifest,
    artifact_digest,
    check_installable,
    load_private_pem,
    new_release_key,
    parse_manifest,
    parse_public_key,
    private_pem,
    public_bytes,
    sign_manifest,
    verify_manifest,
    version_key,
)

IMAGE = b"firmware image" * 10


def manifest(**kw: object) -> Manifest:
    """A valid manifest of IMAGE with *kw* replaced."""
    fields: dict[str, object] = {
        "version": "2.0.0",
        "seq": 5,
        "models": ("plug",),
        "min_version": "1.0.0",
        "size": len(IMAGE),
        "sha256": artifact_digest(IMAGE),
    }
    fields.update(kw)
    return Manifest(**fields)  # type: ignore[arg-type]


def test_sign_and_verify_round_trip() -> None:
    """A manifest signed by the release key verifies under its public key and reads back."""
    key = new_release_key()
    signed = sign_manifest(key, manifest())
    assert verify_manifest(signed.blob, signed.signature, public_bytes(key)) == manifest()
    assert json.loads(signed.blob)["sha256"] == artifact_digest(IMAGE).hex()


def test_another_key_or_any_flipped_bit_is_a_bad_signature() -> None:
    """A signature from another key, a changed manifest or signature: BadSignature."""
    key, other = new_release_key(), new_release_key()
    signed = sign_manifest(key, manifest())
    with pytest.raises(BadSignature):
        verify_manifest(signed.blob, signed.signature, public_bytes(other))
    tampered = signed.blob.replace(b'"2.0.0"', b'"9.0.0"')
    with pytest.raises(BadSignature):
        verify_manifest(tampered, signed.signature, public_bytes(key))
    flipped = bytes([signed.signature[0] ^ 1]) + signed.signature[1:]
    with pytest.raises(BadSignature):
        verify_manifest(signed.blob, flipped, public_bytes(key))
    with pytest.raises(BadSignature):
        verify_manifest(signed.blob, signed.signature[:10], public_bytes(key))


def test_only_the_canonical_encoding_parses() -> None:
    """Whitespace, extra keys or a wrong format version are refused even if signed."""
    blob = manifest().canonical()
    doc = json.loads(blob)
    with pytest.raises(MalformedManifest):
        parse_manifest(json.dumps(doc).encode())  # spaces
    with pytest.raises(MalformedManifest):
        parse_manifest(json.dumps({**doc, "x": 1}, separators=(",", ":")).encode())
    with pytest.raises(MalformedManifest):
        parse_manifest(b"\xff")
    with pytest.raises(MalformedManifest):
        parse_manifest(b"x" * 2000)


@pytest.mark.parametrize(
    "bad",
    [
        {"version": "2.0"},
        {"seq": 0},
        {"models": ()},
        {"models": ("Plug",)},
        {"size": 0},
        {"sha256": b"short"},
        {"min_version": "3.0.0"},
    ],
)
def test_invalid_fields_are_refused(bad: dict[str, object]) -> None:
    """Out-of-format versions, sequence, models, size, digest or min > version."""
    with pytest.raises(MalformedManifest):
        manifest(**bad).canonical()


def test_semver_precedence() -> None:
    """Pre-releases sort before releases, numeric fields numerically, build metadata ignored."""
    order = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0", "1.0.10"]
    assert sorted(order, key=version_key) == order
    assert version_key("1.2.3+build7") == version_key("1.2.3")


def test_device_rules_refuse_rollback_and_foreign_models() -> None:
    """Same or lower sequence, same or older version, wrong model, too old a base: refused."""
    m = manifest()
    check_installable(m, model="plug", current_version="1.4.2", current_seq=4)
    cases = [
        ({"model": "scale", "current_version": "1.4.2", "current_seq": 0}, "incompatible_model"),
        ({"model": "plug", "current_version": "1.4.2", "current_seq": 5}, "rollback_seq"),
        ({"model": "plug", "current_version": "2.0.0", "current_seq": 0}, "rollback_version"),
        ({"model": "plug", "current_version": "0.9.0", "current_seq": 0}, "below_min_version"),
    ]
    for kwargs, reason in cases:
        with pytest.raises(FirmwareRefused) as info:
            check_installable(m, **kwargs)  # type: ignore[arg-type]
        assert info.value.reason == reason


def test_release_key_files() -> None:
    """PEM round trip; public keys parse from hex; garbage is refused."""
    key = new_release_key()
    again = load_private_pem(private_pem(key))
    assert public_bytes(again) == public_bytes(key)
    assert parse_public_key(public_bytes(key).hex()) == public_bytes(key)
    for bad in ("zz", "00" * 31):
        with pytest.raises(InvalidKeyMaterial):
            parse_public_key(bad)
    with pytest.raises(InvalidKeyMaterial):
        load_private_pem(b"not a key")
