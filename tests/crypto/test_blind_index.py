"""Blind index: key derivation, truncation, MAC normalisation and CipherSweet sizing."""

from __future__ import annotations

import hashlib
import hmac
import math

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto.blind_index import (
    MAC_DESIGN_ROWS,
    MAC_INDEX_BITS,
    MAC_INPUT_BITS,
    BlindIndex,
    coincidences,
    derive_index,
    mac_value,
    normalise_mac,
    plan_bits,
)

ROOT = bytes(range(32))


def test_mac_index_width_fits_design_fleet():
    """L for 10 million devices of 24-bit MACs is the planner's answer, with 2 <= C < sqrt(R)."""
    assert plan_bits(MAC_DESIGN_ROWS, MAC_INPUT_BITS) == MAC_INDEX_BITS == 22
    found = coincidences(MAC_DESIGN_ROWS, MAC_INDEX_BITS, MAC_INPUT_BITS)
    assert 2 <= found < math.sqrt(MAC_DESIGN_ROWS)
    assert coincidences(MAC_DESIGN_ROWS, MAC_INDEX_BITS + 1, MAC_INPUT_BITS) < 2  # widest


def test_coincidences_stop_falling_at_input_entropy():
    """Bits beyond the input entropy K do not reduce coincidences: C = R / 2**min(L, K)."""
    assert coincidences(1 << 20, 16, 8) == coincidences(1 << 20, 30, 8) == 1 << 12
    assert coincidences(1000, 3, 24) == 125


@pytest.mark.parametrize(("rows", "input_bits"), [(3, 24), (1, 24), (10_000_000, 10)])
def test_plan_bits_refuses_when_no_width_fits(rows: int, input_bits: int):
    """Too few rows (C < 2 always) or too little entropy (C >= sqrt(R)) is a clear error."""
    with pytest.raises(ValueError, match="no index width"):
        plan_bits(rows, input_bits)


def test_plan_bits_refuses_nonsense():
    """Zero rows or zero input bits are refused."""
    with pytest.raises(ValueError, match="positive"):
        plan_bits(0, 24)
    with pytest.raises(ValueError, match="positive"):
        plan_bits(10, 0)


def test_plan_bits_caps_at_input_entropy():
    """With plenty of rows per input value the width stops at K (more bits would add nothing)."""
    assert plan_bits(1 << 20, 12) == 12  # C = 256: at least 2, under sqrt(R) = 1024


@pytest.mark.parametrize(
    "text",
    [
        "AA:BB:CC:0D:EE:FF",
        "aa:bb:cc:0d:ee:ff",
        "aa-bb-cc-0d-ee-ff",
        "AABBCC0DEEFF",
        " aabbcc0deeff\n",
        "Aa:bB:cc:0D:ee:Ff",
    ],
)
def test_normalise_mac_spellings(text: str):
    """Case, ':' or '-' separators or none, and outer whitespace all normalise alike."""
    assert normalise_mac(text) == "AA:BB:CC:0D:EE:FF"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "AA:BB:CC:DD:EE",
        "AA:BB:CC:DD:EE:FF:00",
        "AA:BB-CC:DD:EE:FF",
        "GG:BB:CC:DD:EE:FF",
        "A:BB:CC:DD:EE:FFF",
        "AA.BB.CC.DD.EE.FF",
        "AA::BB:CC:DD:EE",
    ],
)
def test_normalise_mac_rejects_non_macs(text: str):
    """Wrong length, mixed separators, non-hex digits and other separators are ValueError."""
    with pytest.raises(ValueError, match="MAC"):
        normalise_mac(text)


def test_index_key_and_value_follow_spec():
    """Key = HKDF(root, info 'qnect/bidx/v1' lp(table) lp(column) lp(name)); value = top L bits."""
    info = b"qnect/bidx/v1" + b"\x00\x07devices" + b"\x00\x07mac_enc" + b"\x00\x08mac_bidx"
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(ROOT)
    index = derive_index(ROOT, "devices", "mac_enc", "mac_bidx", bits=22)
    assert index.key == key
    digest = hmac.digest(key, b"AA:BB:CC:0D:EE:FF", hashlib.sha256)
    expected = int.from_bytes(digest[:4], "big") >> 10
    assert mac_value(index, "aa-bb-cc-0d-ee-ff") == index.value(b"AA:BB:CC:0D:EE:FF") == expected
    assert 0 <= expected < 1 << 22


def test_index_keys_are_separated_by_table_column_and_name():
    """Each (table, column, name) gets its own key; moving a length byte changes the key."""
    keys = {
        derive_index(ROOT, *place, bits=8).key
        for place in [
            ("t", "c", "n"),
            ("t", "c", "m"),
            ("t", "d", "n"),
            ("u", "c", "n"),
            ("tc", "", "n"),
            ("t", "cn", ""),
        ]
    }
    assert len(keys) == 6


def test_index_repr_hides_key_and_width_bounds():
    """The repr shows the width, never the key; widths outside 1..31 and short keys are refused."""
    index = derive_index(ROOT, "t", "c", "n", bits=31)
    assert "key" not in repr(index)
    assert index.key.hex() not in repr(index)
    assert index.value(b"x") < 1 << 31
    for bits in (0, 32):
        with pytest.raises(ValueError, match="width"):
            derive_index(ROOT, "t", "c", "n", bits=bits)
    with pytest.raises(ValueError, match="32 bytes"):
        BlindIndex(8, bytes(16))
