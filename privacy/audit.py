"""Audit events, their keyed MACs, and signed Merkle seals over them (pure).

Owns: the audit event value and its canonical encoding, the audit keys (derived from the root
key), the per-entry MAC that a writer with only database access cannot forge, the leaves and the
hash chain of seals (RFC 6962 Merkle roots, Ed25519 signatures), the check of one seal, the
verification report, and pseudonymous subject references. Does not own: storing events or seals,
choosing what to seal, or reading rows back (``privacy.postgres_audit``), nor the per-subject
pseudonym keys (``privacy.postgres`` keeps them, so erasure makes old references unlinkable).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto import merkle
from privacy.errors import InvalidAuditEvent

CANONICAL_TAG = b"qnect.audit.event/v1\n"  # bump when the encoding changes; old MACs stay valid
MAC_INFO = b"qnect/audit/mac/v1"  # HKDF labels: one root key, unrelated audit keys
SEAL_INFO = b"qnect/audit/seal/v1"
SEAL_HASH_TAG = b"qnect/audit/seal-hash/v1"  # domain of seal hashes, so no other hash signs as one
SUBJECT_TAG = b"qnect/audit/subject/v1\x00"  # NUL ends the label: no subject id can extend it
GENESIS_SEAL_HASH = bytes(32)  # what the first seal chains to
HASH_BYTES = 32
MAX_ROW_COUNT = 2**31 - 1  # the column is a PostgreSQL integer
ACTOR_TYPES = frozenset({"subject", "staff", "service", "system", "device"})
DECISIONS = frozenset({"allow", "partial", "deny"})
_SEQ = struct.Struct(">Q")


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audited request or query: who, why, on what basis, which fields, which subjects.

    Raises:
        InvalidAuditEvent: the time is naive, the actor type or decision is unknown, a subject
            reference is not a 32-byte HMAC, or the row count is out of range.
    """

    event_id: uuid.UUID
    ts: datetime  # aware; set by the caller's clock
    actor_type: str  # subject|staff|service|system|device
    actor_id: str
    actor_roles: tuple[str, ...]
    purpose: str  # purpose key: provide_service, marketing, legal_compliance, ...
    legal_basis: str | None
    art9_condition: str | None
    policy_version: str  # hash of the purpose table in force
    action: str  # read|export|rectify|restrict|unrestrict|consent|erase|key_destroy|kek_rotate|...
    resource: str  # table, view or route
    fields: tuple[str, ...]  # returned
    masked_fields: tuple[str, ...]
    denied_fields: tuple[str, ...]
    categories: tuple[str, ...]  # data category keys touched
    subject_refs: tuple[bytes, ...]  # keyed pseudonyms (subject_ref), never raw ids
    decision: str  # allow|partial|deny
    result: str  # ok | error:<code> | denied:<reason>
    row_count: int
    reason: str | None = None  # staff justification or ticket id, never personal data
    key_ids: tuple[str, ...] = ()  # data keys unwrapped, e.g. "health/1"

    def __post_init__(self) -> None:
        """Refuse events that could not be verified or searched later."""
        if self.ts.tzinfo is None or self.ts.utcoffset() is None:
            raise InvalidAuditEvent("audit time must be timezone-aware")
        if self.actor_type not in ACTOR_TYPES:
            raise InvalidAuditEvent(f"unknown actor type {self.actor_type!r}")
        if self.decision not in DECISIONS:
            raise InvalidAuditEvent(f"unknown decision {self.decision!r}")
        if any(len(ref) != HASH_BYTES for ref in self.subject_refs):
            raise InvalidAuditEvent("subject references are 32-byte HMACs")
        if not 0 <= self.row_count <= MAX_ROW_COUNT:
            raise InvalidAuditEvent("row count out of range")


@dataclass(frozen=True, slots=True)
class AuditKeys:
    """The audit MAC key and the seal signing key."""

    mac_key: bytes = field(repr=False)
    signing_key: Ed25519PrivateKey = field(repr=False, compare=False)

    @classmethod
    def from_root(cls, root_key: bytes) -> AuditKeys:
        """Derive both keys from the root key (HKDF-SHA256 with distinct labels)."""
        seed = _hkdf(root_key, SEAL_INFO)
        return cls(_hkdf(root_key, MAC_INFO), Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def public_key(self) -> bytes:
        """Raw 32-byte Ed25519 public key that verifies seals."""
        return self.signing_key.public_key().public_bytes_raw()


@dataclass(frozen=True, slots=True)
class Seal:
    """One signed batch of audit entries, chained to the seal before it."""

    seal_no: int
    seqs: tuple[int, ...]  # explicit, ascending: a late commit is sealed later, exactly once
    merkle_root: bytes
    prev_seal_hash: bytes
    seal_hash: bytes
    signature: bytes = field(repr=False)
    public_key: bytes = field(repr=False)
    sealed_at: datetime


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What a full check of the audit log found (sequence numbers and seal numbers only)."""

    checked_rows: int
    sealed_rows: int
    unsealed_rows: tuple[int, ...]  # authentic, waiting for a seal
    edited: tuple[int, ...]  # sealed rows whose MAC no longer matches their content
    deleted: tuple[int, ...]  # listed in a seal, gone from the table
    inserted: tuple[int, ...]  # unsealed rows with a forged MAC, or listed in two seals
    broken_seals: tuple[int, ...]  # chain, seal hash, signature or Merkle root fails

    @property
    def ok(self) -> bool:
        """True when nothing was edited, deleted, inserted or broken."""
        return not (self.edited or self.deleted or self.inserted or self.broken_seals)

    def to_json(self) -> dict[str, object]:
        """Plain JSON form (for the CLI)."""
        return {"ok": self.ok, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}


def _hkdf(root_key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(root_key)


def _plain(value: object) -> object:
    """One field as a JSON value with a single representation."""
    if isinstance(value, datetime):
        utc = value.astimezone(UTC).replace(tzinfo=None)
        return utc.isoformat(timespec="microseconds") + "Z"
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value  # str, int or None


def canonical(event: AuditEvent) -> bytes:
    """Deterministic, versioned encoding of every field of *event* (what the MAC covers).

    A version tag, then JSON with sorted keys, no whitespace and ASCII escapes; times in UTC with
    microseconds, bytes as hex, UUIDs in their hyphenated form, tuples as arrays.
    """
    doc = {f.name: _plain(getattr(event, f.name)) for f in dataclasses.fields(event)}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return CANONICAL_TAG + text.encode()


def entry_mac(keys: AuditKeys, event: AuditEvent) -> bytes:
    """HMAC-SHA256 of the canonical event under the audit MAC key."""
    return hmac.new(keys.mac_key, canonical(event), hashlib.sha256).digest()


def mac_matches(keys: AuditKeys, event: AuditEvent, mac: bytes) -> bool:
    """Constant-time check of a stored MAC against *event*."""
    return hmac.compare_digest(entry_mac(keys, event), mac)


def subject_ref(pseud_key: bytes, subject_id: str) -> bytes:
    """Pseudonymous reference to a data subject: HMAC-SHA256 under that subject's key."""
    return hmac.new(pseud_key, SUBJECT_TAG + subject_id.encode(), hashlib.sha256).digest()


def leaf(seq: int, mac: bytes) -> bytes:
    """Merkle leaf input of one entry: ``u64 seq || entry MAC``."""
    return _SEQ.pack(seq) + mac


def entries_root(entries: Sequence[tuple[int, bytes]]) -> bytes:
    """Merkle root over ``(seq, entry MAC)`` pairs, in the order given."""
    return merkle.root([leaf(seq, mac) for seq, mac in entries])


def seal_hash(
    prev_seal_hash: bytes, merkle_root: bytes, seal_no: int, seqs: Sequence[int]
) -> bytes:
    """Chain hash of a seal: SHA-256 over a tag, the previous hash, the root, the number and seqs.

    Raises:
        ValueError: a hash is not 32 bytes, or a number is negative or too large.
    """
    if len(prev_seal_hash) != HASH_BYTES or len(merkle_root) != HASH_BYTES:
        raise ValueError("seal hashes are 32 bytes")
    try:
        numbers = struct.pack(f">QI{len(seqs)}Q", seal_no, len(seqs), *seqs)
    except struct.error as exc:
        raise ValueError("seal numbers out of range") from exc
    return hashlib.sha256(SEAL_HASH_TAG + prev_seal_hash + merkle_root + numbers).digest()


def make_seal(
    keys: AuditKeys,
    *,
    seal_no: int,
    prev_seal_hash: bytes,
    entries: Sequence[tuple[int, bytes]],
    sealed_at: datetime,
) -> Seal:
    """Seal ``(seq, entry MAC)`` pairs (ascending seq) as seal *seal_no* after *prev_seal_hash*.

    Raises:
        ValueError: see :func:`seal_hash`.
    """
    seqs = tuple(seq for seq, _ in entries)
    merkle_root = entries_root(entries)
    digest = seal_hash(prev_seal_hash, merkle_root, seal_no, seqs)
    return Seal(
        seal_no=seal_no,
        seqs=seqs,
        merkle_root=merkle_root,
        prev_seal_hash=prev_seal_hash,
        seal_hash=digest,
        signature=sign_seal(keys, digest),
        public_key=keys.public_key,
        sealed_at=sealed_at,
    )


def seal_intact(seal: Seal, *, prev_seal_hash: bytes, public_key: bytes) -> bool:
    """Check a stored seal's own fields: chain link, seal hash, signer and signature.

    The Merkle root is checked against the rows by the caller (:func:`entries_root`).

    Args:
        seal: the seal as stored.
        prev_seal_hash: the stored hash of the seal before it (``GENESIS_SEAL_HASH`` for seal 1).
        public_key: the trusted seal verification key (``AuditKeys.public_key``).
    """
    if seal.prev_seal_hash != prev_seal_hash or seal.public_key != public_key:
        return False
    try:
        digest = seal_hash(seal.prev_seal_hash, seal.merkle_root, seal.seal_no, seal.seqs)
    except (ValueError, TypeError):  # TypeError: a column set to NULL
        return False
    return hmac.compare_digest(digest, seal.seal_hash or b"") and signature_valid(
        public_key, digest, seal.signature
    )


def sign_seal(keys: AuditKeys, digest: bytes) -> bytes:
    """Ed25519 signature over a seal hash."""
    return keys.signing_key.sign(digest)


def signature_valid(public_key: bytes, digest: bytes, signature: bytes) -> bool:
    """Check an Ed25519 signature over a seal hash; False for any malformed key or signature."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, digest)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
