"""Minimising transforms applied to a field before it leaves the service (pure).

Owns: masking identifiers, coarsening positions and keyed pseudonyms, chosen per purpose by
the purpose table. Does not own which purpose gets which transform.
"""

from __future__ import annotations

import hashlib
import hmac

from privacy.purposes import Transform

COARSE_STEP_M = 2.0  # a robot-cleaner position rounded to 2 m says "which room", not "where"
PSEUDONYM_HEX = 16  # 64 bits: stable per purpose, unlinkable across purposes


def mask(value: object) -> str:
    """Hide all but the end of an identifier (MAC, IP) or the domain of an e-mail address."""
    text = str(value)
    if "@" in text:
        local, _, domain = text.partition("@")
        return f"{local[:1]}***@{domain}"
    if text.count(":") == 5 and len(text) == 17:  # MAC: keep the last two octets for support
        return "**:**:**:**:" + text[-5:]
    keep = max(1, len(text) // 4)
    return "*" * (len(text) - keep) + text[-keep:]


def coarsen(value: object) -> object:
    """Round a coordinate to ``COARSE_STEP_M``; other values pass unchanged."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return round(float(value) / COARSE_STEP_M) * COARSE_STEP_M
    return value


def pseudonymise(key: bytes, purpose: str, value: object) -> str:
    """A keyed pseudonym of *value* that is stable within *purpose* only."""
    mac = hmac.new(key, f"{purpose}\x00{value}".encode(), hashlib.sha256)
    return mac.hexdigest()[:PSEUDONYM_HEX]


def apply(transform: Transform, value: object, *, key: bytes, purpose: str) -> object:
    """Apply *transform* to one value (``None`` stays ``None``)."""
    if value is None:
        return None
    if transform is Transform.MASK:
        return mask(value)
    if transform is Transform.COARSEN:
        return coarsen(value)
    return pseudonymise(key, purpose, value)
