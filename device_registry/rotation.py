"""KEK rotation decisions (pure): which version to rotate to, and which wrapped keys to rewrap.

Owns: the rotation plan from the ``kek_versions`` rows (start a new version, or finish an
unfinished rotation), the associated data each wrapped column is bound with, and rewrapping a
batch of rows under the target version. Does not own: reading or writing rows, transactions or
progress output (``device_registry.postgres``, ``qnect keys rotate-kek``).

A rotation is unfinished while more than one KEK version is active: the newest is the target,
the older ones are retired once no blob is wrapped under them. Only key blobs are rewrapped;
the data encrypted under those keys is never touched (MongoDB ``rewrapManyDataKey``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from crypto.envelope import data_key_context
from crypto.errors import DecryptionFailed
from crypto.keys import MAX_KEK_VERSION, NONCE_BYTES, KekRing, wrapped_kek_version
from device_registry.model import root_key_context

Cursor = tuple[str | int, ...]  # primary key of the last row seen, for keyset pagination


class KekState(StrEnum):
    """Lifecycle of a KEK version (``kek_versions.state``)."""

    ACTIVE = "active"  # may have blobs wrapped under it
    RETIRED = "retired"  # no blob is wrapped under it any more


class WrappedColumn(StrEnum):
    """The columns holding blobs wrapped under a KEK."""

    ROOT_KEYS = "devices.root_key_wrapped"
    NEXT_ROOT_KEYS = "devices.drk_next_wrapped"  # root-key rotation: offered, not yet proven
    PREV_ROOT_KEYS = "devices.drk_prev_wrapped"  # and rotated away, decrypt-only for a while
    DATA_KEYS = "data_keys.wrapped"


@dataclass(frozen=True, slots=True)
class KekVersion:
    """One row of ``kek_versions``."""

    version: int
    state: KekState


@dataclass(frozen=True, slots=True)
class RotationPlan:
    """What a rotation run does: rewrap everything under ``target``, creating it if asked."""

    target: int
    create: bool


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A stored blob, with its row's primary key and the associated data it is bound to."""

    key: Cursor
    context: bytes
    blob: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Rewrapped:
    """A blob and its replacement under the target version (``old`` guards the update)."""

    key: Cursor
    old: bytes = field(repr=False)
    new: bytes = field(repr=False)


def plan_rotation(versions: Sequence[KekVersion], to_version: int | None = None) -> RotationPlan:
    """Decide the target of a rotation run.

    Without *to_version*, an unfinished rotation is finished, else a new version is started.
    With it, the run is idempotent: naming the current version only finishes (or does nothing).

    Raises:
        ValueError: no active version, no version number left, or *to_version* is neither the
            current version nor (with no rotation unfinished) the next one.
    """
    active = sorted(v.version for v in versions if v.state is KekState.ACTIVE)
    if not active:
        raise ValueError("no active KEK version (run `qnect migrate`)")
    current, unfinished = active[-1], len(active) > 1
    if to_version is None:
        to_version = current if unfinished else current + 1
    if to_version == current:
        return RotationPlan(current, create=False)
    if unfinished:
        raise ValueError(f"the rotation to KEK {current} is unfinished; finish it first")
    if to_version != current + 1:
        raise ValueError(f"the next KEK version is {current + 1}")
    if to_version > MAX_KEK_VERSION:
        raise ValueError("no KEK version number left")
    return RotationPlan(to_version, create=True)


def retirable(versions: Iterable[KekVersion], target: int) -> list[int]:
    """Active versions other than *target*: retired once no blob is wrapped under them."""
    return sorted(v.version for v in versions if v.state is KekState.ACTIVE and v.version != target)


def root_key_row(device_id: str, drk_version: int, blob: bytes) -> WrappedKey:
    """A ``devices.root_key_wrapped`` blob (keyed by device id)."""
    return WrappedKey((device_id,), root_key_context(device_id, drk_version), blob)


def data_key_row(owner: str, key_class: int, version: int, blob: bytes) -> WrappedKey:
    """A ``data_keys.wrapped`` blob of any owner (device binding or subject) and key class."""
    return WrappedKey(
        (owner, key_class, version), data_key_context(owner, key_class, version), blob
    )


def needs_rewrap(blob: bytes, target: int) -> bool:
    """Whether *blob* is wrapped under a KEK version other than *target*.

    Raises:
        MalformedFrame: the blob is too short.
        UnsupportedVersion: unknown wrap format.
    """
    return wrapped_kek_version(blob) != target


def rewrap_rows(
    ring: KekRing, rows: Iterable[WrappedKey], target: int, rand: Callable[[int], bytes]
) -> list[Rewrapped]:
    """Rewrap the rows not yet under *target* with fresh nonces; the others are left out.

    Raises:
        DecryptionFailed: a blob does not open; its ``key_id`` names the row.
    """
    return [
        Rewrapped(row.key, row.blob, _rewrap(ring, row, target, rand))
        for row in rows
        if needs_rewrap(row.blob, target)
    ]


def _rewrap(ring: KekRing, row: WrappedKey, target: int, rand: Callable[[int], bytes]) -> bytes:
    try:
        return ring.rewrap(row.blob, version=target, context=row.context, nonce=rand(NONCE_BYTES))
    except DecryptionFailed as exc:
        raise DecryptionFailed("/".join(str(part) for part in row.key)) from exc
