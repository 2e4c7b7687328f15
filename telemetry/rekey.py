"""Which root-key version the ingest pipeline accepts, and when (pure).

A device holds up to three root-key (DRK) versions in the registry: the current one, a
pending one (offered on the downlink, not yet proven) and the previous one, kept decrypt-only
until its grace deadline. The rules:

* **key exchanges** (new sessions) under the current version; under the pending version too,
  as a key exchange MACed under ``K_kx`` of the new key is itself proof of possession (it
  commits the rotation, so a device whose proof got lost still gets through). Never under
  the previous version: no new sessions under a key being retired (``drk_superseded``);
* **frames** of a session keep opening under the version the session derives from while that
  version is current, or previous and within its grace; after it ``drk_destroyed``, even
  before the blob itself is set to NULL. This is what lets a fleet rotate under a live
  stream: frames in flight or buffered under the old sessions keep being accepted;
* **proofs** verify under the pending key (commit) or, once committed, under the current key
  (a resent proof: nothing to do).

Does not own: opening frames, storage, or the protocol bytes (``crypto.rekey``).
"""

from __future__ import annotations

from dataclasses import dataclass

from crypto import rekey
from crypto.device_keys import kx_key
from crypto.errors import CryptoError
from device_registry.model import DeviceContext, RootKey
from telemetry import errors


@dataclass(frozen=True, slots=True)
class Rotation:
    """A proven rotation to commit with the batch (from a proof or a key exchange)."""

    index: int
    device_id: str
    from_version: int
    to_version: int
    until_ms: int  # the previous key is decrypt-only until then


def kx_key_for(device: DeviceContext, version: int) -> bytes:
    """``K_kx`` to authenticate a key exchange naming root-key *version*.

    Raises:
        DrkSuperseded: *version* was rotated away.
        KxInvalid: no such version (or the pending key is not available).
    """
    if version == device.drk_version:
        return device.kx_key
    pending = device.pending
    if pending is not None and pending.version == version and pending.key is not None:
        return kx_key(pending.key, device.device_id)
    if 1 <= version < device.drk_version:
        raise errors.DrkSuperseded(f"version {version}, current {device.drk_version}")
    raise errors.KxInvalid("root key version is not current")


def check_session_root(device: DeviceContext, version: int, *, now_ms: int) -> None:
    """Refuse frames of a session whose root-key version is no longer usable at *now_ms*.

    Raises:
        DrkDestroyed: neither current nor previous within its grace period.
    """
    if version == device.drk_version:
        return
    previous = _previous_in_grace(device, now_ms)
    if previous is None or previous.version != version:
        raise errors.DrkDestroyed(f"version {version}, current {device.drk_version}")


def _previous_in_grace(device: DeviceContext, now_ms: int) -> RootKey | None:
    previous = device.previous
    if previous is None or previous.key is None or previous.until is None:
        return None
    return previous if now_ms < previous.until.timestamp() * 1000 else None


def will_roots(device: DeviceContext, *, now_ms: int) -> list[bytes]:
    """Root keys a last will may be sealed under: the current, then the previous in grace.

    A will is fixed at CONNECT, so a device that rotated on a live connection leaves a will
    under its previous key.
    """
    previous = _previous_in_grace(device, now_ms)
    if previous is None or previous.key is None:
        return [device.root_key]
    return [device.root_key, previous.key]


def proven(
    device: DeviceContext, plaintext: bytes, *, index: int, until_ms: int
) -> Rotation | None:
    """Check a rotation proof; the rotation to commit, or None when it is committed already.

    Raises:
        RekeyInvalid: malformed, for no pending or current version, or the MAC fails.
    """
    try:
        proof = rekey.decode_proof(plaintext)
    except CryptoError as exc:
        raise errors.RekeyInvalid("malformed proof") from exc
    pending = device.pending
    if pending is not None and pending.key is not None and proof.to_version == pending.version:
        key, committed = pending.key, False
    elif proof.to_version == device.drk_version:
        key, committed = device.root_key, True
    else:
        raise errors.RekeyInvalid(f"no pending version {proof.to_version}")
    if proof.from_version != proof.to_version - 1:
        raise errors.RekeyInvalid("versions do not follow")
    try:
        rekey.verify_proof(proof, device.device_id, key)
    except CryptoError as exc:
        raise errors.RekeyInvalid("proof does not verify") from exc
    if committed:
        return None
    return Rotation(index, device.device_id, proof.from_version, proof.to_version, until_ms)
