"""Which root-key version the pipeline accepts for key exchanges, frames, wills and proofs."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from crypto.device_keys import kx_key
from crypto.rekey import RekeyOffer, encode_proof
from device_registry.model import DeviceContext, DeviceId, DeviceStatus, RootKey
from device_registry.profiles import PROFILES
from telemetry import errors
from telemetry.rekey import Rotation, check_session_root, kx_key_for, proven, will_roots

DEVICE = "abcdefghijklmnop"
V1, V2, V3 = bytes(range(32)), bytes(range(1, 33)), bytes(range(2, 34))
NOW_MS = 1_700_000_000_000
UNTIL = datetime.fromtimestamp((NOW_MS + 60_000) / 1000, UTC)


def device(version: int = 1, root: bytes = V1, **other: RootKey | None) -> DeviceContext:
    """A device context with only what the rotation rules read."""
    return DeviceContext(
        device_id=DeviceId(DEVICE),
        profile=PROFILES["plug"],
        status=DeviceStatus.ACTIVE,
        binding="b",
        drk_version=version,
        root_key=root,
        kx_key=kx_key(root, DEVICE),
        ciphers={},
        registered_mac="",
        current_epoch=1,
        current_since=None,
        previous=other.get("previous"),
        pending=other.get("pending"),
    )


PENDING = device(pending=RootKey(2, V2))
ROTATED = device(2, V2, previous=RootKey(1, V1, UNTIL))


def test_key_exchange_keys_by_version():
    """Current and pending versions authenticate; older ones are superseded; others invalid."""
    assert kx_key_for(PENDING, 1) == kx_key(V1, DEVICE)
    assert kx_key_for(PENDING, 2) == kx_key(V2, DEVICE)
    assert kx_key_for(ROTATED, 2) == kx_key(V2, DEVICE)
    with pytest.raises(errors.DrkSuperseded):
        kx_key_for(ROTATED, 1)  # even within the grace: no new session under an old key
    for version in (0, 3):
        with pytest.raises(errors.KxInvalid):
            kx_key_for(ROTATED, version)
    with pytest.raises(errors.KxInvalid):
        kx_key_for(device(pending=RootKey(2, None)), 2)


def test_sessions_of_the_previous_key_open_only_within_the_grace():
    """Frames of a session under the previous version pass until its deadline, then refused."""
    check_session_root(ROTATED, 2, now_ms=NOW_MS)
    check_session_root(ROTATED, 1, now_ms=NOW_MS + 59_999)
    for version, now in ((1, NOW_MS + 60_000), (0, NOW_MS), (3, NOW_MS)):
        with pytest.raises(errors.DrkDestroyed):
            check_session_root(ROTATED, version, now_ms=now)
    destroyed = replace(ROTATED, previous=RootKey(1, None, UNTIL))
    with pytest.raises(errors.DrkDestroyed):
        check_session_root(destroyed, 1, now_ms=NOW_MS)
    with pytest.raises(errors.DrkDestroyed):
        check_session_root(PENDING, 2, now_ms=NOW_MS)  # pending: no session may use it yet


def test_wills_may_be_under_the_previous_key_during_the_grace():
    """A will fixed at CONNECT before the rotation opens with the previous key, in grace only."""
    assert will_roots(ROTATED, now_ms=NOW_MS) == [V2, V1]
    assert will_roots(ROTATED, now_ms=NOW_MS + 60_000) == [V2]
    assert will_roots(PENDING, now_ms=NOW_MS) == [V1]


def test_proof_under_the_pending_key_commits():
    """A valid proof for the pending version yields the rotation to commit."""
    proof = encode_proof(DEVICE, RekeyOffer(1, 2, V2))
    assert proven(PENDING, proof, index=3, until_ms=9) == Rotation(3, DEVICE, 1, 2, 9)


def test_resent_proof_after_the_commit_is_a_no_op():
    """Once committed, the same proof verifies under the current key and commits nothing."""
    proof = encode_proof(DEVICE, RekeyOffer(1, 2, V2))
    assert proven(ROTATED, proof, index=0, until_ms=9) is None


@pytest.mark.parametrize(
    ("context", "proof"),
    [
        (PENDING, encode_proof(DEVICE, RekeyOffer(1, 2, V3))),  # another key
        (PENDING, encode_proof("qrstuvwxyzabcdef", RekeyOffer(1, 2, V2))),  # another device
        (PENDING, encode_proof(DEVICE, RekeyOffer(2, 3, V3))),  # no such pending version
        (device(), encode_proof(DEVICE, RekeyOffer(1, 2, V2))),  # nothing pending
        (device(3, V3, pending=RootKey(4, V2)), encode_proof(DEVICE, RekeyOffer(1, 4, V2))),
        (PENDING, b"\x01\x02"),  # malformed
    ],
)
def test_invalid_proofs_are_refused(context: DeviceContext, proof: bytes):
    """Wrong key, device or version, nothing pending, or garbage: rekey_invalid."""
    with pytest.raises(errors.RekeyInvalid):
        proven(context, proof, index=0, until_ms=0)
