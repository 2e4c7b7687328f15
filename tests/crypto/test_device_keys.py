"""Device protocol v1: fixed vectors, an independent recomputation, and every rejection."""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from hypothesis import given
from hypothesis import strategies as st

from crypto.device_keys import (
    HEADER_BYTES,
    MAX_COUNTER,
    NO_FLAGS,
    TAG_BYTES,
    DirectionKeys,
    Flags,
    KxRequest,
    Suite,
    decode_kx_request,
    decode_kx_response,
    encode_kx_request,
    encode_kx_response,
    kx_key,
    open_frame,
    parse_header,
    seal_frame,
    session_keys,
    will_keys,
)
from crypto.errors import CryptoError, DecryptionFailed, MalformedFrame, UnsupportedVersion

ROOT = bytes(range(32))
DEVICE = "abcdefghijklmnop"
OTHER_DEVICE = "qrstuvwxyzabcdef"
N_D = bytes([1]) * 16
N_S = bytes([2]) * 16
EPOCH = 7
COUNTER = 1
TOPIC = f"devices/{DEVICE}/up/telemetry"
PLAINTEXT = b"hello"
DRK_VERSION = 1
TS_MS = 1_700_000_000_000
CID = 42

# Vectors produced once by this implementation, then checked against the spec below.
KX_KEY = "332269fdd85ed6ecfbe5d94fb74c7650d1737a8f93e862b26041efee18eced4f"
WILL_KEY = "ce3a864657db2014eced06d610246749fdf4c7ca7b601619d8499bbd20bc03ec"
WILL_IV = "f7f64038a340de30d06e62bc"
KX_REQUEST = (
    "010100010000018bcfe56800000000000000002a01010101010101010101010101010101"
    "3e9c65b7503ef0fc1a09d712425540e1"
)
KX_RESPONSE = "010200000007020202020202020202020202020202020bef83c9730af55d0fc1a684a0caddfe"
UP_KEY = "4e6b1a87607301922d9c8150750ff39297e37a408c7c415420befdb9b178dd25"
UP_IV = "ecb3f1272f177b0a3f341590"
UP_SID = 1180109758
DOWN_KEY = "c2a502d572b7a4e7ea4926e8f221d030d548c3b88e81b4fd75e9be2f90b35210"
DOWN_IV = "3bb2fb25b7a0693b77c60468"
DOWN_SID = 1253579378
FRAME_AES = "01030000000007000000000000000146570bbeec546567bafa13230543db21c141accfbf85684c7c"
FRAME_CHACHA = "01020000000007000000000000000146570bbe7964b41d28ee3be5a911a4b66a8baaf1e7e076f129"


def _lp(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def _keys() -> tuple[DirectionKeys, DirectionKeys]:
    keys = session_keys(ROOT, DEVICE, epoch=EPOCH, device_nonce=N_D, server_nonce=N_S)
    return keys.up, keys.down


def _request() -> bytes:
    return encode_kx_request(
        kx_key(ROOT, DEVICE),
        DEVICE,
        drk_version=DRK_VERSION,
        ts_ms=TS_MS,
        cid=CID,
        device_nonce=N_D,
    )


def _frame(suite: Suite = Suite.AES_256_GCM) -> bytes:
    up, _ = _keys()
    return seal_frame(
        up,
        epoch=EPOCH,
        counter=COUNTER,
        plaintext=PLAINTEXT,
        device_id=DEVICE,
        topic=TOPIC,
        suite=suite,
    )


def _open(frame: bytes, keys: DirectionKeys | None = None, topic: str = TOPIC) -> bytes:
    return open_frame(keys or _keys()[0], parse_header(frame), frame, device_id=DEVICE, topic=topic)


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_kx_key_vector():
    """kx_key of the fixed root key and device id has the pinned value."""
    assert kx_key(ROOT, DEVICE).hex() == KX_KEY


def test_kx_key_matches_spec():
    """kx_key is HKDF-SHA256 without salt, info 'qnect/kx/v1' plus the length-prefixed id."""
    info = b"qnect/kx/v1" + _lp(DEVICE.encode())
    expected = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(ROOT)
    assert expected.hex() == KX_KEY


def test_kx_key_separates_devices():
    """Two devices under one root key get different key-exchange keys."""
    assert kx_key(ROOT, DEVICE) != kx_key(ROOT, OTHER_DEVICE)


def test_will_keys_vector_and_spec():
    """will_keys is HKDF 'qnect/will/v1' split into a 32-byte key and 12-byte IV, sid 0."""
    keys = will_keys(ROOT, DEVICE)
    info = b"qnect/will/v1" + _lp(DEVICE.encode())
    okm = HKDF(algorithm=hashes.SHA256(), length=44, salt=None, info=info).derive(ROOT)
    assert (keys.key.hex(), keys.iv.hex(), keys.sid) == (WILL_KEY, WILL_IV, 0)
    assert (keys.key, keys.iv) == (okm[:32], okm[32:])


def test_direction_keys_repr_hides_secrets():
    """The repr of DirectionKeys shows the sid but neither key nor IV."""
    up, _ = _keys()
    assert UP_KEY not in repr(up)
    assert repr(up.key) not in repr(up)
    assert str(UP_SID) in repr(up)


def test_kx_request_vector():
    """The key-exchange request for the fixed inputs has the pinned bytes."""
    assert _request().hex() == KX_REQUEST


def test_kx_request_matches_spec():
    """A request is version, type, drk_ver, ts, cid, N_d and a 16-byte HMAC over 'kxreq'."""
    body = struct.pack(">BBHQQ16s", 1, 1, DRK_VERSION, TS_MS, CID, N_D)
    mac = hmac.new(
        bytes.fromhex(KX_KEY), b"kxreq" + _lp(DEVICE.encode()) + body, hashlib.sha256
    ).digest()[:16]
    assert (body + mac).hex() == KX_REQUEST


def test_kx_request_round_trip():
    """decode_kx_request returns the fields and the exact authenticated body."""
    data = _request()
    request = decode_kx_request(kx_key(ROOT, DEVICE), DEVICE, data)
    assert request == KxRequest(DRK_VERSION, TS_MS, CID, N_D, data[:36])


def test_kx_request_rejects_short_nonce():
    """encode_kx_request refuses a device nonce that is not 16 bytes."""
    with pytest.raises(MalformedFrame):
        encode_kx_request(
            kx_key(ROOT, DEVICE), DEVICE, drk_version=1, ts_ms=1, cid=1, device_nonce=N_D[:15]
        )


@pytest.mark.parametrize("bit", [16, 100, 20 * 8 + 3, 36 * 8, 52 * 8 - 1])
def test_kx_request_bad_mac(bit: int):
    """A request with a flipped body or MAC bit (version, type kept) is DecryptionFailed."""
    data = _flip(_request(), bit)
    with pytest.raises(DecryptionFailed):
        decode_kx_request(kx_key(ROOT, DEVICE), DEVICE, data)


def test_kx_request_other_device():
    """A request is bound to its device id: another device's key or id does not verify it."""
    with pytest.raises(DecryptionFailed):
        decode_kx_request(kx_key(ROOT, DEVICE), OTHER_DEVICE, _request())
    with pytest.raises(DecryptionFailed):
        decode_kx_request(kx_key(ROOT, OTHER_DEVICE), DEVICE, _request())


@pytest.mark.parametrize("length", [0, 51, 53])
def test_kx_request_wrong_length(length: int):
    """A request that is not exactly 52 bytes is MalformedFrame."""
    data = (_request() + b"\0")[:length]
    with pytest.raises(MalformedFrame):
        decode_kx_request(kx_key(ROOT, DEVICE), DEVICE, data)


def test_kx_request_unknown_version():
    """A request with protocol version 9 is UnsupportedVersion."""
    data = b"\x09" + _request()[1:]
    with pytest.raises(UnsupportedVersion):
        decode_kx_request(kx_key(ROOT, DEVICE), DEVICE, data)


def test_kx_request_wrong_type():
    """A request whose type byte says response is MalformedFrame."""
    data = _request()[:1] + b"\x02" + _request()[2:]
    with pytest.raises(MalformedFrame):
        decode_kx_request(kx_key(ROOT, DEVICE), DEVICE, data)


def _response(request: bytes | None = None) -> bytes:
    k = kx_key(ROOT, DEVICE)
    parsed = decode_kx_request(k, DEVICE, request or _request())
    return encode_kx_response(k, DEVICE, parsed, epoch=EPOCH, server_nonce=N_S)


def test_kx_response_vector():
    """The key-exchange response for the fixed inputs has the pinned bytes."""
    assert _response().hex() == KX_RESPONSE


def test_kx_response_matches_spec():
    """A response is version, type, epoch, N_s and an HMAC over 'kxresp', request and body."""
    body = struct.pack(">BBI16s", 1, 2, EPOCH, N_S)
    transcript = b"kxresp" + _lp(DEVICE.encode()) + _request()[:36] + body
    mac = hmac.new(bytes.fromhex(KX_KEY), transcript, hashlib.sha256).digest()[:16]
    assert (body + mac).hex() == KX_RESPONSE


def test_kx_response_round_trip():
    """decode_kx_response returns the epoch and server nonce of a response to this request."""
    response = decode_kx_response(kx_key(ROOT, DEVICE), DEVICE, _request(), _response())
    assert (response.epoch, response.server_nonce) == (EPOCH, N_S)


def test_kx_response_bound_to_request():
    """A response checked against a different request (other N_d) is DecryptionFailed."""
    k = kx_key(ROOT, DEVICE)
    other = encode_kx_request(
        k, DEVICE, drk_version=DRK_VERSION, ts_ms=TS_MS, cid=CID, device_nonce=bytes([3]) * 16
    )
    with pytest.raises(DecryptionFailed):
        decode_kx_response(k, DEVICE, other, _response())


def test_kx_response_bad_mac():
    """A response with a flipped epoch or MAC bit is DecryptionFailed."""
    k = kx_key(ROOT, DEVICE)
    for bit in (5 * 8, 38 * 8 - 1):
        with pytest.raises(DecryptionFailed):
            decode_kx_response(k, DEVICE, _request(), _flip(_response(), bit))


def test_kx_response_other_device():
    """A response is bound to its device id."""
    with pytest.raises(DecryptionFailed):
        decode_kx_response(kx_key(ROOT, DEVICE), OTHER_DEVICE, _request(), _response())


@pytest.mark.parametrize("length", [0, 37, 39])
def test_kx_response_wrong_length(length: int):
    """A response that is not exactly 38 bytes is MalformedFrame."""
    data = (_response() + b"\0")[:length]
    with pytest.raises(MalformedFrame):
        decode_kx_response(kx_key(ROOT, DEVICE), DEVICE, _request(), data)


@pytest.mark.parametrize("prefix", [b"\x09\x02", b"\x01\x01"])
def test_kx_response_wrong_version_or_type(prefix: bytes):
    """A response with an unknown version or the request type byte is MalformedFrame."""
    data = prefix + _response()[2:]
    with pytest.raises(MalformedFrame):
        decode_kx_response(kx_key(ROOT, DEVICE), DEVICE, _request(), data)


def test_session_keys_vector():
    """session_keys of the fixed inputs has the pinned keys, IVs and sids for both directions."""
    up, down = _keys()
    assert (up.key.hex(), up.iv.hex(), up.sid) == (UP_KEY, UP_IV, UP_SID)
    assert (down.key.hex(), down.iv.hex(), down.sid) == (DOWN_KEY, DOWN_IV, DOWN_SID)
    assert session_keys(ROOT, DEVICE, epoch=EPOCH, device_nonce=N_D, server_nonce=N_S).epoch == 7


def test_session_keys_match_spec():
    """PRK = HMAC(N_d||N_s, DRK); OKM = HKDF-Expand(PRK, 'qnect/sess/v1'||lp(id)||u32 epoch)."""
    prk = hmac.new(N_D + N_S, ROOT, hashlib.sha256).digest()
    info = b"qnect/sess/v1" + _lp(DEVICE.encode()) + struct.pack(">I", EPOCH)
    okm = HKDFExpand(algorithm=hashes.SHA256(), length=96, info=info).derive(prk)
    assert okm[0:32].hex() == UP_KEY
    assert okm[32:64].hex() == DOWN_KEY
    assert okm[64:76].hex() == UP_IV
    assert okm[76:88].hex() == DOWN_IV
    assert int.from_bytes(okm[88:92], "big") == UP_SID
    assert int.from_bytes(okm[92:96], "big") == DOWN_SID


def test_session_keys_depend_on_every_input():
    """Changing the epoch, either nonce or the device id yields different uplink keys."""
    base = _keys()[0].key
    variants = [
        session_keys(ROOT, DEVICE, epoch=8, device_nonce=N_D, server_nonce=N_S),
        session_keys(ROOT, DEVICE, epoch=EPOCH, device_nonce=N_S, server_nonce=N_S),
        session_keys(ROOT, DEVICE, epoch=EPOCH, device_nonce=N_D, server_nonce=N_D),
        session_keys(ROOT, OTHER_DEVICE, epoch=EPOCH, device_nonce=N_D, server_nonce=N_S),
    ]
    assert all(v.up.key != base for v in variants)


def test_frame_vector():
    """The sealed frame for the fixed inputs has the pinned bytes (AES-256-GCM and ChaCha)."""
    assert _frame().hex() == FRAME_AES
    assert _frame(Suite.CHACHA20_POLY1305).hex() == FRAME_CHACHA


def _spec_frame(counter: int, suite: Suite) -> bytes:
    header = struct.pack(">BBBIQI", 1, suite, 0, EPOCH, counter, UP_SID)
    nonce = (int.from_bytes(bytes.fromhex(UP_IV), "big") ^ counter).to_bytes(12, "big")
    ad = header + _lp(DEVICE.encode()) + _lp(TOPIC.encode())
    key = bytes.fromhex(UP_KEY)
    aead = AESGCM(key) if suite is Suite.AES_256_GCM else ChaCha20Poly1305(key)
    return header + aead.encrypt(nonce, PLAINTEXT, ad)


def test_frame_matches_spec():
    """A frame is the 19-byte header then AEAD(IV xor counter, AD = header||lp(id)||lp(topic))."""
    assert _spec_frame(COUNTER, Suite.AES_256_GCM).hex() == FRAME_AES
    assert _spec_frame(COUNTER, Suite.CHACHA20_POLY1305).hex() == FRAME_CHACHA


def test_frame_nonce_at_max_counter_matches_spec():
    """The nonce xor also holds at the largest counter, where it touches the IV's top bits."""
    up, _ = _keys()
    frame = seal_frame(
        up, epoch=EPOCH, counter=MAX_COUNTER, plaintext=PLAINTEXT, device_id=DEVICE, topic=TOPIC
    )
    assert frame == _spec_frame(MAX_COUNTER, Suite.AES_256_GCM)
    assert _open(frame) == PLAINTEXT


def test_parse_header_fields():
    """parse_header returns every clear field and the raw 19 header bytes."""
    header = parse_header(_frame())
    assert (header.version, header.suite, header.flags) == (1, Suite.AES_256_GCM, NO_FLAGS)
    assert (header.epoch, header.counter, header.sid) == (EPOCH, COUNTER, UP_SID)
    assert header.raw == bytes.fromhex(FRAME_AES)[:HEADER_BYTES]


@pytest.mark.parametrize("suite", list(Suite))
def test_open_frame_round_trip(suite: Suite):
    """open_frame returns the plaintext of a frame sealed with the same keys, id and topic."""
    assert _open(_frame(suite)) == PLAINTEXT


def test_flags_round_trip():
    """Flags set at sealing are read back by parse_header and are authenticated."""
    _, down = _keys()
    topic = f"devices/{DEVICE}/down/receipt"
    flags = Flags.DOWN | Flags.RANDOM_COUNTER
    frame = seal_frame(
        down, epoch=EPOCH, counter=99, plaintext=b"", device_id=DEVICE, topic=topic, flags=flags
    )
    header = parse_header(frame)
    assert header.flags == flags
    assert open_frame(down, header, frame, device_id=DEVICE, topic=topic) == b""
    stripped = frame[:2] + b"\x00" + frame[3:]
    with pytest.raises(DecryptionFailed):
        open_frame(down, parse_header(stripped), stripped, device_id=DEVICE, topic=topic)


def test_will_frame_round_trip():
    """A last-will frame sealed under will_keys with the WILL flag opens under will_keys."""
    keys = will_keys(ROOT, DEVICE)
    topic = f"devices/{DEVICE}/up/status"
    frame = seal_frame(
        keys, epoch=0, counter=CID, plaintext=b"x", device_id=DEVICE, topic=topic, flags=Flags.WILL
    )
    header = parse_header(frame)
    assert (header.sid, header.counter, header.flags) == (0, CID, Flags.WILL)
    assert open_frame(keys, header, frame, device_id=DEVICE, topic=topic) == b"x"


def _parse_rejects(bit: int) -> type[CryptoError] | None:
    """Which error parse_header must raise for a flip of *bit* in the vector frame, if any."""
    byte, shift = divmod(bit, 8)
    if byte == 0:
        return UnsupportedVersion  # version 1 becomes anything else
    if byte == 1 and shift != 0:
        return UnsupportedVersion  # suite 3 becomes 1, 7, 11, ...; bit 0 gives 2 (ChaCha)
    if (byte, shift) in {(7, 7), (14, 0)}:
        return MalformedFrame  # counter 1 becomes 2**63 + 1 or 0
    return None


def test_any_flipped_bit_is_rejected():
    """Every single-bit flip of a frame fails: DecryptionFailed unless the header is unreadable."""
    frame = _frame()
    for bit in range(len(frame) * 8):
        flipped = _flip(frame, bit)
        expected = _parse_rejects(bit)
        if expected is not None:
            with pytest.raises(expected):
                parse_header(flipped)
            continue
        with pytest.raises(DecryptionFailed):
            _open(flipped)


def test_other_devices_topic_does_not_open():
    """A frame opened with the topic or id of another device is DecryptionFailed."""
    frame = _frame()
    with pytest.raises(DecryptionFailed):
        _open(frame, topic=f"devices/{OTHER_DEVICE}/up/telemetry")
    with pytest.raises(DecryptionFailed):
        open_frame(_keys()[0], parse_header(frame), frame, device_id=OTHER_DEVICE, topic=TOPIC)


def test_other_topic_of_same_device_does_not_open():
    """A frame moved to another topic of the same device is DecryptionFailed."""
    with pytest.raises(DecryptionFailed):
        _open(_frame(), topic=f"devices/{DEVICE}/up/status")


def test_downlink_key_does_not_open_uplink():
    """An uplink frame does not open under the downlink key of the same session."""
    with pytest.raises(DecryptionFailed) as info:
        _open(_frame(), keys=_keys()[1])
    assert info.value.key_id == f"session/{EPOCH}"


@pytest.mark.parametrize("length", [0, 1, HEADER_BYTES, HEADER_BYTES + TAG_BYTES - 1])
def test_truncated_frame_is_malformed(length: int):
    """A frame shorter than header plus tag is MalformedFrame."""
    with pytest.raises(MalformedFrame):
        parse_header(_frame()[:length])


def test_truncated_ciphertext_fails_to_open():
    """A frame cut by one byte but still longer than header plus tag is DecryptionFailed."""
    with pytest.raises(DecryptionFailed):
        _open(_frame()[:-1])


def test_version_9_is_unsupported():
    """A frame with version byte 9 is UnsupportedVersion."""
    with pytest.raises(UnsupportedVersion):
        parse_header(b"\x09" + _frame()[1:])


@pytest.mark.parametrize("suite", [0, 1, 4, 255])
def test_unknown_suite_is_unsupported(suite: int):
    """A frame naming a suite other than 2 or 3 is UnsupportedVersion."""
    frame = _frame()
    with pytest.raises(UnsupportedVersion):
        parse_header(frame[:1] + bytes([suite]) + frame[2:])


@pytest.mark.parametrize("counter", [0, MAX_COUNTER + 1, 2**64 - 1])
def test_counter_out_of_range_is_malformed(counter: int):
    """A header counter of 0 or above 2**63-1 is MalformedFrame."""
    frame = _frame()
    forged = frame[:7] + struct.pack(">Q", counter) + frame[15:]
    with pytest.raises(MalformedFrame):
        parse_header(forged)


@pytest.mark.parametrize("counter", [0, -1, MAX_COUNTER + 1])
def test_seal_refuses_counter_out_of_range(counter: int):
    """seal_frame refuses counter 0, negatives and counters above 2**63-1."""
    with pytest.raises(MalformedFrame):
        seal_frame(
            _keys()[0],
            epoch=EPOCH,
            counter=counter,
            plaintext=PLAINTEXT,
            device_id=DEVICE,
            topic=TOPIC,
        )


@given(
    plaintext=st.binary(max_size=64),
    counter=st.integers(1, MAX_COUNTER),
    topic=st.text(max_size=40),
    suite=st.sampled_from(Suite),
)
def test_seal_open_round_trip_property(plaintext: bytes, counter: int, topic: str, suite: Suite):
    """For any plaintext, counter, topic and suite, open_frame inverts seal_frame."""
    up, _ = _keys()
    frame = seal_frame(
        up,
        epoch=EPOCH,
        counter=counter,
        plaintext=plaintext,
        device_id=DEVICE,
        topic=topic,
        suite=suite,
    )
    assert len(frame) == HEADER_BYTES + len(plaintext) + TAG_BYTES
    header = parse_header(frame)
    assert header.counter == counter
    assert open_frame(up, header, frame, device_id=DEVICE, topic=topic) == plaintext
