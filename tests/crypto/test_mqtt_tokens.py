"""MQTT password tokens: format, expiry, skew window, lifetime cap, key versions, tampering."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto.errors import (
    CryptoError,
    MalformedToken,
    TokenError,
    TokenExpired,
    TokenMacMismatch,
    TokenTooFarAhead,
    UnknownKeyVersion,
)
from crypto.mqtt_tokens import (
    CLOCK_SKEW_S,
    MAX_LIFETIME_S,
    MqttToken,
    mint,
    parse,
    token_key,
    verify,
)

ROOT = bytes(range(32))
ROOT_2 = bytes(range(32, 64))
DEVICE = "abcdefghijklmnop"
OTHER = "qrstuvwxyz234567"
NOW = 1_750_000_000
EXPIRES = NOW + 3600


def _token(**kw: int) -> str:
    return mint(ROOT, DEVICE, drk_version=kw.get("v", 1), expires_at=kw.get("exp", EXPIRES))


def test_token_matches_an_independent_derivation():
    """The token is q1.<exp>.<ver>.<b64url(HMAC-SHA256(HKDF(root, info), msg)[:16])>."""
    info = b"qnect/mqtt-token/v1" + struct.pack(">H", 16) + DEVICE.encode()
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(ROOT)
    msg = b"q1" + struct.pack(">H", 16) + DEVICE.encode() + struct.pack(">QI", EXPIRES, 1)
    tag = hmac.new(key, msg, hashlib.sha256).digest()[:16]
    expected = f"q1.{EXPIRES}.1.{base64.urlsafe_b64encode(tag).decode().rstrip('=')}"
    assert _token() == expected
    assert token_key(ROOT, DEVICE) == key


def test_valid_token_verifies_and_returns_its_fields():
    """A fresh token verifies for its device and reports its expiry and key version."""
    got = verify(_token(), DEVICE, root_keys={1: ROOT}, now=NOW)
    assert (got.expires_at, got.drk_version) == (EXPIRES, 1)
    assert "mac" not in repr(got)


def test_expired_token_is_refused():
    """A token that expired beyond the skew window is refused as expired."""
    token = _token(exp=NOW - CLOCK_SKEW_S - 1)
    with pytest.raises(TokenExpired):
        verify(token, DEVICE, root_keys={1: ROOT}, now=NOW)


def test_recently_expired_token_is_accepted_within_the_skew_window():
    """A device clock up to 120 s behind still gets in; one second more does not."""
    token = _token(exp=NOW)
    verify(token, DEVICE, root_keys={1: ROOT}, now=NOW + CLOCK_SKEW_S)
    with pytest.raises(TokenExpired):
        verify(token, DEVICE, root_keys={1: ROOT}, now=NOW + CLOCK_SKEW_S + 1)


def test_lifetime_is_capped_at_a_day_plus_skew():
    """An expiry more than 24 h + skew ahead is refused; exactly at the cap is accepted."""
    edge = NOW + MAX_LIFETIME_S + CLOCK_SKEW_S
    verify(_token(exp=edge), DEVICE, root_keys={1: ROOT}, now=NOW)
    with pytest.raises(TokenTooFarAhead):
        verify(_token(exp=edge + 1), DEVICE, root_keys={1: ROOT}, now=NOW)


def test_custom_skew_and_lifetime_are_honoured():
    """The skew window and lifetime cap are parameters."""
    token = _token(exp=NOW + 600)
    with pytest.raises(TokenTooFarAhead):
        verify(token, DEVICE, root_keys={1: ROOT}, now=NOW, max_lifetime_s=300, skew_s=0)
    with pytest.raises(TokenExpired):
        verify(token, DEVICE, root_keys={1: ROOT}, now=NOW + 601, skew_s=0)


def test_token_of_another_device_is_refused():
    """A token minted for one device does not verify as another device's password."""
    with pytest.raises(TokenMacMismatch):
        verify(_token(), OTHER, root_keys={1: ROOT}, now=NOW)


def test_token_under_another_root_key_is_refused():
    """A token minted with a different root key does not verify."""
    token = mint(ROOT_2, DEVICE, drk_version=1, expires_at=EXPIRES)
    with pytest.raises(TokenMacMismatch):
        verify(token, DEVICE, root_keys={1: ROOT}, now=NOW)


def test_unknown_key_version_is_refused_before_any_mac():
    """A token naming a root-key version the server does not hold is refused as such."""
    with pytest.raises(UnknownKeyVersion):
        verify(_token(v=2), DEVICE, root_keys={1: ROOT}, now=NOW)


def test_previous_and_current_versions_both_verify_during_grace():
    """With two versions on offer, a token under either verifies with its own key only."""
    old = mint(ROOT, DEVICE, drk_version=1, expires_at=EXPIRES)
    new = mint(ROOT_2, DEVICE, drk_version=2, expires_at=EXPIRES)
    keys = {1: ROOT, 2: ROOT_2}
    assert verify(old, DEVICE, root_keys=keys, now=NOW).drk_version == 1
    assert verify(new, DEVICE, root_keys=keys, now=NOW).drk_version == 2
    relabelled = new.replace(".2.", ".1.", 1)  # the version is under the MAC
    with pytest.raises(TokenMacMismatch):
        verify(relabelled, DEVICE, root_keys=keys, now=NOW)


@pytest.mark.parametrize("field", [1, 2, 3])
def test_tampering_with_any_field_is_detected(field: int):
    """Changing the expiry, the version or one MAC character breaks the MAC."""
    parts = _token().split(".")
    if field == 1:
        parts[1] = str(EXPIRES + 1)
    elif field == 2:
        parts[2] = "2"
    else:
        parts[3] = ("B" if parts[3][0] == "A" else "A") + parts[3][1:]
    keys = {1: ROOT, 2: ROOT}
    with pytest.raises(TokenMacMismatch):
        verify(".".join(parts), DEVICE, root_keys=keys, now=NOW)


def test_non_canonical_mac_spelling_is_malformed():
    """A MAC whose last character carries stray low bits is refused, not accepted twice."""
    token = _token()
    head, mac = token.rsplit(".", 1)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(mac[-1])
    twin = f"{head}.{mac[:-1]}{alphabet[last ^ 1]}"  # same 16 bytes, different spelling
    assert base64.urlsafe_b64decode(twin.rsplit(".", 1)[1] + "==") == base64.urlsafe_b64decode(
        mac + "=="
    )
    with pytest.raises(MalformedToken):
        verify(twin, DEVICE, root_keys={1: ROOT}, now=NOW)


VALID = _token()
MALFORMED = [
    "",
    "q1",
    "q1...",
    VALID.replace("q1.", "q2.", 1),
    VALID.replace("q1.", "Q1.", 1),
    VALID + ".",
    VALID + "A",
    VALID[:-1],
    "." + VALID,
    VALID.replace(".", ":"),
    f"q1.{EXPIRES}.0.{VALID.rsplit('.', 1)[1]}",  # version 0 does not exist
    f"q1.{EXPIRES}.01.{VALID.rsplit('.', 1)[1]}",  # leading zero: two spellings
    f"q1.0{EXPIRES}.1.{VALID.rsplit('.', 1)[1]}",
    f"q1.-{EXPIRES}.1.{VALID.rsplit('.', 1)[1]}",
    f"q1.+{EXPIRES}.1.{VALID.rsplit('.', 1)[1]}",
    f"q1.{EXPIRES}.2147483648.{VALID.rsplit('.', 1)[1]}",  # beyond a PostgreSQL integer
    f"q1.123456789012.1.{VALID.rsplit('.', 1)[1]}",  # 12-digit expiry
    f"q1.{EXPIRES}.1.{'A' * 21}=",  # padding is not part of the format
    f"q1.{EXPIRES}.1.{'A' * 10}+/{'A' * 10}",  # standard alphabet, not base64url
    "q1.١٧٥٠٠٠٠٠٠٠.1." + "A" * 22,  # Arabic-Indic digits  # noqa: RUF001
    VALID + "\x00",
    " " + VALID,
    VALID + "\n",
    "' OR '1'='1",
    "q1.1750000000.1.'; DROP TABLE devices;--",
    "1; UPDATE devices SET status='revoked';--",
    "q1.1750003600.1.AAAAAAAAAAAAAAAAAAAAAA' OR 1=1--",
    "x" * 10_000,
]


@pytest.mark.parametrize("token", MALFORMED)
def test_malformed_strings_are_refused_as_malformed(token: str):
    """Anything not exactly in the q1 shape is refused before any key is touched."""
    with pytest.raises(MalformedToken):
        parse(token)
    with pytest.raises(MalformedToken):
        verify(token, DEVICE, root_keys={}, now=NOW)


def test_errors_name_a_reason_and_never_carry_the_token():
    """Token errors are crypto errors with a reason code and no secret in their text."""
    token = _token(exp=NOW - 10_000)
    with pytest.raises(TokenError) as caught:
        verify(token, DEVICE, root_keys={1: ROOT}, now=NOW)
    assert isinstance(caught.value, CryptoError)
    assert caught.value.reason == "token_expired"
    assert token not in str(caught.value)
    assert token.rsplit(".", 1)[1] not in repr(caught.value)


def test_parse_returns_fields_without_checking_mac_or_time():
    """Parsing alone reads expiry and version and leaves the checks to verify."""
    parsed = parse(_token(exp=5, v=7))
    assert isinstance(parsed, MqttToken)
    assert (parsed.expires_at, parsed.drk_version, len(parsed.mac)) == (5, 7, 16)


@pytest.mark.parametrize(
    ("root", "device", "version", "expires"),
    [
        (ROOT, "", 1, EXPIRES),
        (ROOT, DEVICE, 0, EXPIRES),
        (ROOT, DEVICE, 2**31, EXPIRES),
        (ROOT, DEVICE, 1, -1),
        (ROOT, DEVICE, 1, 10**11),
        (ROOT[:31], DEVICE, 1, EXPIRES),
    ],
)
def test_mint_refuses_bad_inputs(root: bytes, device: str, version: int, expires: int):
    """Minting refuses an empty id, out-of-range version or expiry, and a short root key."""
    with pytest.raises(ValueError):
        mint(root, device, drk_version=version, expires_at=expires)
