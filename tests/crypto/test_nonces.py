"""Nonce sequences: unique, fixed field from the given randomness, renewed before wrapping."""

from __future__ import annotations

from crypto import nonces
from crypto.nonces import NonceSequence


def test_nonces_are_fixed_field_then_counter():
    """The first nonces are the 8 drawn bytes followed by 0, 1, 2 as 4-byte counters."""
    seq = NonceSequence(lambda n: b"\xab" * n)
    assert [seq() for _ in range(3)] == [b"\xab" * 8 + i.to_bytes(4, "big") for i in range(3)]


def test_fixed_field_renewed_before_the_counter_repeats(monkeypatch):
    """At the counter limit a new fixed field is drawn, so no nonce repeats."""
    monkeypatch.setattr(nonces, "COUNTER_LIMIT", 2)
    draws = iter([b"A" * 8, b"B" * 8])
    seq = NonceSequence(lambda _n: next(draws))
    assert [seq() for _ in range(3)] == [
        b"A" * 8 + b"\0\0\0\0",
        b"A" * 8 + b"\0\0\0\1",
        b"B" * 8 + b"\0\0\0\0",
    ]
