"""Pure cryptographic primitives of Qnect: key hierarchy, device protocol, field envelopes.

No I/O happens here; time and randomness are parameters.
"""

from crypto.blind_index import BlindIndex, derive_index, normalise_mac, plan_bits
from crypto.device_keys import (
    DirectionKeys,
    FrameHeader,
    KxRequest,
    KxResponse,
    SessionKeys,
    Suite,
    open_frame,
    parse_header,
    seal_frame,
    session_keys,
)
from crypto.envelope import DataKey, FieldCipher, FieldContext
from crypto.errors import (
    CryptoError,
    DecryptionFailed,
    InvalidKeyMaterial,
    MalformedFrame,
    UnsupportedVersion,
)
from crypto.keys import Kek, KekRing, KeyClass, derive_kek, parse_root_key, unwrap, wrap
from crypto.replay import Freshness, ReplayWindow

__all__ = [
    "BlindIndex",
    "CryptoError",
    "DataKey",
    "DecryptionFailed",
    "DirectionKeys",
    "FieldCipher",
    "FieldContext",
    "FrameHeader",
    "Freshness",
    "InvalidKeyMaterial",
    "Kek",
    "KekRing",
    "KeyClass",
    "KxRequest",
    "KxResponse",
    "MalformedFrame",
    "ReplayWindow",
    "SessionKeys",
    "Suite",
    "UnsupportedVersion",
    "derive_index",
    "derive_kek",
    "normalise_mac",
    "open_frame",
    "parse_header",
    "parse_root_key",
    "plan_bits",
    "seal_frame",
    "session_keys",
    "unwrap",
    "wrap",
]
