"""RFC 6962 Merkle tree: published CT vectors, inclusion proofs and their rejection cases."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto.merkle import inclusion_proof, leaf_hash, node_hash, root, verify_inclusion

# Leaf inputs and tree heads of transparency-dev/merkle testonly/constants.go (the CT vectors).
CT_LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# Inclusion proofs of transparency-dev/merkle proof/verify_test.go (its leaf numbers are 1-based).
CT_PROOFS = [
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def reference_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 2.1 MTH, written as the recursive definition."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    left, right = reference_root(leaves[:k]), reference_root(leaves[k:])
    return hashlib.sha256(b"\x01" + left + right).digest()


@pytest.mark.parametrize("size", range(len(CT_ROOTS)))
def test_roots_match_certificate_transparency(size: int) -> None:
    """Every prefix of the CT leaf list hashes to the published tree head, empty tree included."""
    assert root(CT_LEAVES[:size]).hex() == CT_ROOTS[size]


def test_leaf_and_node_use_the_domain_prefixes() -> None:
    """Leaf and node hashes carry the 0x00 and 0x01 prefixes (the 2-leaf CT head)."""
    assert leaf_hash(b"").hex() == CT_ROOTS[1]
    assert node_hash(leaf_hash(b""), leaf_hash(b"\x00")).hex() == CT_ROOTS[2]


@pytest.mark.parametrize(("index", "size", "proof"), CT_PROOFS)
def test_inclusion_proofs_match_certificate_transparency(
    index: int, size: int, proof: list[str]
) -> None:
    """Proofs equal the published audit paths and verify against the published heads."""
    leaves = CT_LEAVES[:size]
    assert [p.hex() for p in inclusion_proof(leaves, index)] == proof
    expected_root = bytes.fromhex(CT_ROOTS[size])
    assert verify_inclusion(
        leaves[index], index, size, [bytes.fromhex(p) for p in proof], expected_root
    )


@pytest.mark.parametrize(("index", "size", "proof"), CT_PROOFS)
def test_corrupted_inclusion_probes_fail(index: int, size: int, proof: list[str]) -> None:
    """The CT corruption probes (index, size, leaf, root, garbage, bit flips) all fail."""
    leaf, good = CT_LEAVES[index], [bytes.fromhex(p) for p in proof]
    head = bytes.fromhex(CT_ROOTS[size])
    probes = [
        (leaf, index - 1, size, good, head),
        (leaf, index + 1, size, good, head),
        (leaf, index ^ 2, size, good, head),
        (leaf, index, size * 2, good, head),
        (leaf, index, size // 2, good, head),
        (b"WrongLeaf", index, size, good, head),
        (leaf, index, size, good, bytes.fromhex(CT_ROOTS[0])),
        (leaf, index, size, good, SOME_HASH),
        (leaf, index, size, [*good, b""], head),
        (leaf, index, size, [*good, head], head),
        (leaf, index, size, [b"", *good], head),
        (leaf, index, size, [head, *good], head),
        (leaf, index, size, good[:-1], head),
        (leaf, index, size, [good[0], SOME_HASH, *good[1:]], head),
    ]
    for i in range(len(good)):
        flipped = list(good)
        flipped[i] = bytes([flipped[i][0] ^ 8]) + flipped[i][1:]
        probes.append((leaf, index, size, flipped, head))
    assert not any(verify_inclusion(*probe) for probe in probes)


def test_single_leaf_tree_has_an_empty_proof() -> None:
    """A one-leaf tree's root is its leaf hash and the proof is empty; a wrong root fails."""
    assert inclusion_proof([b"data"], 0) == []
    assert verify_inclusion(b"data", 0, 1, [], leaf_hash(b"data"))
    assert not verify_inclusion(b"data", 0, 1, [], b"")
    assert not verify_inclusion(b"other", 0, 1, [], leaf_hash(b"data"))


@pytest.mark.parametrize(("index", "size"), [(0, 0), (1, 0), (2, 1), (-1, 4)])
def test_index_outside_the_tree_never_verifies(index: int, size: int) -> None:
    """An index at or beyond the size (or negative) fails, as does any empty tree."""
    assert not verify_inclusion(b"", index, size, [], SOME_HASH)
    assert not verify_inclusion(b"", index, size, [], hashlib.sha256(b"").digest())


@pytest.mark.parametrize("index", [-1, 3])
def test_proof_for_a_missing_leaf_is_refused(index: int) -> None:
    """Asking for the path of a leaf that is not in the tree raises IndexError."""
    with pytest.raises(IndexError):
        inclusion_proof([b"a", b"b", b"c"], index)


def test_promoted_nodes_are_not_duplicated() -> None:
    """Three leaves hash as node(node(a, b), c), not node(node(a, b), node(c, c))."""
    a, b, c = (leaf_hash(x) for x in (b"a", b"b", b"c"))
    assert root([b"a", b"b", b"c"]) == node_hash(node_hash(a, b), c)
    assert root([b"a", b"b", b"c", b"c"]) != root([b"a", b"b", b"c"])


leaf_lists = st.lists(st.binary(max_size=12), min_size=1, max_size=70)


@given(leaf_lists)
def test_root_equals_the_recursive_definition(leaves: list[bytes]) -> None:
    """The level-by-level root equals RFC 6962's split at the largest power of two."""
    assert root(leaves) == reference_root(leaves)


@given(leaf_lists, st.data())
def test_every_inclusion_proof_verifies(leaves: list[bytes], data: st.DataObject) -> None:
    """Any leaf's proof verifies against the root of its tree."""
    index = data.draw(st.integers(0, len(leaves) - 1))
    proof = inclusion_proof(leaves, index)
    assert verify_inclusion(leaves[index], index, len(leaves), proof, root(leaves))


@given(leaf_lists, st.data())
def test_changed_leaf_or_position_does_not_verify(leaves: list[bytes], data: st.DataObject) -> None:
    """Another leaf value, a neighbouring index or a different size breaks the proof."""
    index = data.draw(st.integers(0, len(leaves) - 1))
    other = data.draw(st.binary(max_size=12).filter(lambda b: b != leaves[index]))
    proof, head, size = inclusion_proof(leaves, index), root(leaves), len(leaves)
    assert not verify_inclusion(other, index, size, proof, head)
    moved = index + 1 if index + 1 < size else index - 1
    if moved >= 0 and leaves[moved] != leaves[index]:
        assert not verify_inclusion(leaves[index], moved, size, proof, head)
    assert not verify_inclusion(leaves[index], index, size + 1, proof, root([*leaves, b"x"]))
