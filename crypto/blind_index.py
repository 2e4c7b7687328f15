"""Blind indexes: truncated keyed hashes that let an encrypted column be looked up by equality.

Owns: deriving one index key per (table, column, index name) from the root key, computing index
values, normalising MAC addresses, and sizing indexes with CipherSweet's planning rule. Does not
own: storing index values or fetching and decrypting candidates (``device_registry.postgres``).

Planning (CipherSweet ``docs/SECURITY.md``): with R rows, an index of L bits over an input of K
bits of entropy gives about C = R / 2**min(L, K) *coincidences* (rows sharing a value). Aim for
2 <= C < sqrt(R): at least two candidates per value, so a value never singles out one row, and
few enough that the application can decrypt and compare them all.

MAC addresses carry little entropy. A MAC is a 24-bit OUI (the vendor prefix) and 24 bits the
vendor assigns; one vendor's fleet shares a handful of OUIs, so the input entropy is about
K = 24 bits. Whoever holds the index key can hash all 2**24 candidates in seconds and narrow
every device's MAC to a few values. The index is therefore a lookup aid, not secrecy: the
MAC's confidentiality rests on its envelope (``devices.mac_enc``) and on the root key never
reaching the database.
Truncation only keeps the stored values from being unique per device. The index key does not
depend on the KEK version, so a KEK rotation leaves index values untouched; the index width
cannot change without recomputing every value (AWS DB-SDK beacons have the same rule), which is
why ``MAC_INDEX_BITS`` is sized for the design fleet, not for today's.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto.keys import KEY_BYTES, lp

INDEX_INFO = b"qnect/bidx/v1"  # HKDF domain, apart from the KEKs' b"qnect/kek/v1/"
MAX_INDEX_BITS = 31  # values are stored in a signed 32-bit ``integer`` column, kept >= 0
MAC_INPUT_BITS = 24  # one vendor's OUI is shared: only the 24 NIC-specific bits vary
MAC_DESIGN_ROWS = 10_000_000  # fleet size the MAC index is planned for
# plan_bits(MAC_DESIGN_ROWS, MAC_INPUT_BITS): about 2.4 devices per value at 10 million devices
# (fewer while the fleet is smaller; a lookup then usually returns one candidate).
MAC_INDEX_BITS = 22
_MAC = re.compile(r"[0-9A-Fa-f]{2}([:-]?)[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}")


@dataclass(frozen=True, slots=True)
class BlindIndex:
    """One blind index: its key and its width in bits."""

    bits: int
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        """Refuse widths the storage column cannot hold and keys of the wrong size."""
        if not 1 <= self.bits <= MAX_INDEX_BITS:
            raise ValueError(f"index width must be 1..{MAX_INDEX_BITS} bits")
        if len(self.key) != KEY_BYTES:
            raise ValueError("index key must be 32 bytes")

    def value(self, normalised: bytes) -> int:
        """The first ``bits`` bits of HMAC-SHA256(key, *normalised*), as a non-negative int."""
        digest = hmac.digest(self.key, normalised, hashlib.sha256)
        return int.from_bytes(digest[:4], "big") >> (32 - self.bits)


def derive_index(root_key: bytes, table: str, column: str, name: str, *, bits: int) -> BlindIndex:
    """Derive the index key for (*table*, *column*, *name*) from the root key (HKDF-SHA256).

    Raises:
        ValueError: *bits* is outside 1..31.
    """
    info = INDEX_INFO + lp(table.encode()) + lp(column.encode()) + lp(name.encode())
    key = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(root_key)
    return BlindIndex(bits, key)


def normalise_mac(text: str) -> str:
    """Canonical form ``AA:BB:CC:DD:EE:FF`` of a MAC written with ``:``, ``-`` or no separators.

    Raises:
        ValueError: *text* is not a 48-bit MAC address.
    """
    text = text.strip()
    if not _MAC.fullmatch(text):
        raise ValueError("not a MAC address (6 hex octets, separated by ':' or '-' or not at all)")
    digits = text.replace(":", "").replace("-", "").upper()
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def mac_value(index: BlindIndex, mac: str) -> int:
    """Index value of a MAC address, in any accepted spelling.

    Raises:
        ValueError: *mac* is not a MAC address.
    """
    return index.value(normalise_mac(mac).encode("ascii"))


def coincidences(rows: int, bits: int, input_bits: int) -> float:
    """Expected rows per index value, C = R / 2**min(L, K)."""
    return rows / float(2 ** min(bits, input_bits))


def plan_bits(rows: int, input_bits: int) -> int:
    """The widest index (L bits) with 2 <= C < sqrt(R) for *rows* rows of *input_bits* entropy.

    Widening past K adds nothing (C stops falling), so L <= K; L also fits ``MAX_INDEX_BITS``.

    Raises:
        ValueError: no width satisfies the rule (too few rows, or too little input entropy for
            the candidates to stay under sqrt(R)).
    """
    if rows < 1 or input_bits < 1:
        raise ValueError("rows and input bits must be positive")
    for bits in range(min(input_bits, MAX_INDEX_BITS), 0, -1):
        found = coincidences(rows, bits, input_bits)
        if found >= 2:
            if found < math.sqrt(rows):
                return bits
            break
    raise ValueError(
        f"no index width gives 2 <= coincidences < sqrt(rows) for {rows} rows "
        f"of {input_bits} bits; use another lookup or a slow (Argon2id) index"
    )
