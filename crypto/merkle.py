"""RFC 6962 / RFC 9162 Merkle tree hashing and inclusion proofs (pure).

Owns the tree hash of a list of leaf inputs and inclusion proofs over it, exactly as Certificate
Transparency defines them, so seals of the audit log can be checked with any CT tooling: leaves
are ``SHA-256(0x00 || data)``, interior nodes ``SHA-256(0x01 || left || right)``, a tree of n > 1
leaves splits at the largest power of two below n (an odd node is promoted, never duplicated),
and the empty tree hashes to ``SHA-256("")``. Does not own what the leaves mean (the audit log
builds them) nor consistency proofs, which nothing here needs yet.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

HASH_BYTES = 32  # SHA-256
_LEAF_PREFIX = b"\x00"  # the domain prefixes keep a leaf from ever passing as a node (RFC 6962 2.1)
_NODE_PREFIX = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    """Hash one leaf input: ``SHA-256(0x00 || data)``."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash two children: ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """Every level of the tree, leaf hashes first, the root alone last.

    Pairing neighbours level by level and carrying an unpaired last node up unchanged builds the
    same tree as RFC 6962's recursive split at the largest power of two, in linear time and
    without slicing the input.
    """
    level = [leaf_hash(data) for data in leaves]
    levels = [level]
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
        levels.append(level)
    return levels


def root(leaves: Sequence[bytes]) -> bytes:
    """Merkle tree hash of *leaves* (raw leaf inputs, not hashes).

    Args:
        leaves: the leaf inputs in tree order.

    Returns:
        The 32-byte root; ``SHA-256(b"")`` for no leaves.
    """
    if not leaves:
        return hashlib.sha256(b"").digest()
    return _levels(leaves)[-1][0]


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """Audit path of leaf *index* (RFC 6962 2.1.1 ``PATH``), nearest sibling first.

    Args:
        leaves: the leaf inputs in tree order.
        index: zero-based position of the leaf to prove.

    Returns:
        The sibling hashes from the leaf level up to just below the root.

    Raises:
        IndexError: *index* is not a position in *leaves*.
    """
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf {index} not in a tree of {len(leaves)}")
    proof: list[bytes] = []
    for level in _levels(leaves)[:-1]:
        sibling = index ^ 1
        if sibling < len(level):  # a promoted last node has no sibling on this level
            proof.append(level[sibling])
        index >>= 1
    return proof


def verify_inclusion(
    leaf_data: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Check that *leaf_data* sits at *index* in the tree of *size* leaves with *root*.

    Follows RFC 9162 2.1.3.2: a proof that is too short, too long, or has an element that is not
    a 32-byte hash fails, as does an index outside the tree.

    Args:
        leaf_data: the raw leaf input (hashed here).
        index: zero-based position claimed for the leaf.
        size: number of leaves in the tree.
        proof: the audit path, nearest sibling first.
        root: the trusted root of the tree of *size* leaves.

    Returns:
        True when the proof recomputes *root*.
    """
    if not 0 <= index < size or any(len(p) != HASH_BYTES for p in proof):
        return False
    fn, sn = index, size - 1
    acc = leaf_hash(leaf_data)
    for sibling in proof:
        if sn == 0:  # more proof elements than levels
            return False
        if fn & 1 or fn == sn:
            acc = node_hash(sibling, acc)
            while not fn & 1 and fn:  # skip the levels where this node was promoted
                fn >>= 1
                sn >>= 1
        else:
            acc = node_hash(acc, sibling)
        fn >>= 1
        sn >>= 1
    return sn == 0 and hmac.compare_digest(acc, root)
