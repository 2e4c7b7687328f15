"""A hostile-input corpus through the real Mosquitto into a real bridge: every reject accounted for.

More than 10,000 hostile messages (garbage, forgeries, replays, skewed clocks, wrong types, NaN,
huge and deep containers, bad topics, SQL-ish strings, ...) are published at QoS 1 next to a
known set of good frames. Afterwards every hostile message must be exactly one quarantine
occurrence with the reason its category predicts, the good frames must all be stored once (and
nothing else), no worker may have crashed, and no injected SQL-ish text may show in quarantine.

How the corpus is generated: every category has a ``hypothesis.strategies`` strategy for its
variable parts (bytes, values, offsets, topic levels, bit positions). ``SearchStrategy.example()``
is not used: it always emits ``NonInteractiveExampleWarning``, which ``filterwarnings = error``
turns into a failure. A ``@given`` test is not used either: the bridge fixture is function
scoped (a health-check failure with ``@given``) and one bridge must see the whole corpus. So
each strategy is drawn by ``draw_many``: a ``@given``-decorated collector called directly, with
``derandomize=True``, ``database=None`` and only the generate phase, which appends each example
to a list (deterministic across runs). Frames only exist at run time (they are sealed under live
session keys), so the drawn values are turned into messages after the devices connected; a
``random.Random(SEED)`` only shuffles the corpus and spreads the good frames through it.

Expected reasons come from the category (``frame_reason`` spells out the order of the header
checks for payloads whose tag cannot verify). Identical hostile messages (same topic and bytes)
share one quarantine row whose ``occurrences`` counts them, so the check is per SHA-256 digest of
topic and payload, exactly as the quarantine table keys its rows.
"""

from __future__ import annotations

import hashlib
import random
import string
import struct
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import paho.mqtt.client as paho
import psycopg
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from broker_bridge.mqtt import BrokerAddress
from crypto import device_keys
from crypto.device_keys import HEADER, HEADER_BYTES, MAX_COUNTER, TAG_BYTES, Flags
from device_registry.model import DEVICE_ID_ALPHABET, DEVICE_ID_LENGTH
from device_registry.profiles import INFO, PROFILES, STATUS, DataPoint, PointType
from qnect.simulator import Pump, SimDevice, Tally
from telemetry.errors import Rejected
from telemetry.pipeline import MAX_PAYLOAD_BYTES, split_topic
from telemetry.validate import MAX_TS_MS, decode_body
from tests.broker_bridge.stream import fleet, plain_points
from tests.fix_bridge import count
from tests.fix_mqtt import Broker

T = TypeVar("T")
SEED = 1234
KINDS = ("telemetry", "status", "info")
DAY_MS = 86_400_000
MIN_MS = 60_000
STALE_BEFORE_MS = 7 * DAY_MS + 60 * MIN_MS  # max age 7 days, plus an hour of margin
FUTURE_AFTER_MS = 15 * MIN_MS  # max skew 5 minutes, plus ten of margin for the run itself
KX_SKEW_MS = 10 * MIN_MS  # key-exchange skew window is 5 minutes
STALE_RECONNECTS = 4  # the stale device's first epochs are superseded
GOOD_BEFORE = 3  # good telemetry frames per device before the hostile stream
GOOD_EVERY = 180  # one good frame per this many hostile messages during the stream
AD_HOC_COUNTER = 2**40  # counters of hand-sealed frames stay clear of the devices' own
MIN_CORPUS = 10_000
SQL_CORE = (
    "'; DROP TABLE frames;--",
    "x' OR '1'='1",
    "'); DELETE FROM devices; --",
    '"; TRUNCATE quarantine; --',
    "1; UPDATE devices SET status='revoked';--",
    "' UNION SELECT root_key_wrapped FROM devices--",
    "Robert'); DROP TABLE quarantine;--",
    "$$; DROP SCHEMA public CASCADE; $$",
    "\\'; COPY frames TO PROGRAM 'id';--",
    "%27; DROP TABLE telemetry;--",
    "\u02bc; DROP TABLE telemetry;--",
)
# Good info frames whose SSID is SQL-ish but valid (printable, <= 32 chars): they are stored.
SQL_SSIDS = ("x'; DROP TABLE frames;--", "'); DELETE FROM devices;--", "a' OR '1'='1")
# Reasons each category may produce (the per-message reason is computed when it is built).
ALLOWED: dict[str, set[str]] = {
    "random_bytes": {
        "malformed_frame",
        "unsupported_version",
        "bad_topic",
        "unknown_epoch",
        "stale_epoch",
        "key_mismatch",
        "bad_tag",
    },
    "random_header": {
        "malformed_frame",
        "unsupported_version",
        "bad_topic",
        "unknown_epoch",
        "stale_epoch",
        "key_mismatch",
        "bad_tag",
    },
    "truncated_frame": {"malformed_frame", "bad_tag"},
    "bit_flip": {
        "malformed_frame",
        "unsupported_version",
        "bad_topic",
        "unknown_epoch",
        "stale_epoch",
        "key_mismatch",
        "bad_tag",
    },
    "forged_tag": {"bad_tag"},
    "appended_bytes": {"bad_tag"},
    "cross_kind_topic": {"bad_tag"},
    "malformed_msgpack": {"malformed_payload"},
    "body_mutation": {"malformed_payload"},
    "wrong_shape": {"malformed_payload"},
    "shape_fault": {"malformed_payload"},
    "huge_container": {"malformed_payload", "oversized"},
    "deep_under_point": {"schema_violation"},
    "many_unknown_points": {"schema_violation"},
    "nan_inf_value": {"schema_violation"},
    "nan_inf_timestamp": {"malformed_payload"},
    "wrong_type": {"schema_violation"},
    "out_of_range": {"out_of_range"},
    "clock_past": {"stale_timestamp"},
    "clock_future": {"future_timestamp"},
    "clock_invalid": {"malformed_payload"},
    "replay": {"replay"},
    "other_device": {"key_mismatch", "stale_epoch", "unknown_epoch"},
    "bad_topic": {"bad_topic"},
    "oversized": {"oversized"},
    "unknown_epoch": {"unknown_epoch", "stale_epoch"},
    "stale_epoch": {"stale_epoch"},
    "bad_version": {"unsupported_version", "bad_tag"},
    "bad_counter_or_flags": {"malformed_frame"},
    "unknown_device": {"unknown_device"},
    "kx_forged": {"kx_invalid", "kx_replay"},
    "will_misuse": {"unknown_epoch", "bad_topic"},
    "sql_in_body": {"schema_violation", "out_of_range"},
}


# -- drawing from hypothesis strategies -------------------------------------------------------
def draw_many(strategy: st.SearchStrategy[T], n: int) -> list[T]:
    """Draw *n* examples of *strategy*, deterministically (see the module docstring)."""
    out: list[T] = []

    @settings(
        max_examples=n,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(value: T) -> None:
        out.append(value)

    collect()
    return out[:n]


# -- the corpus -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Hostile:
    """One hostile message and the reject it must produce."""

    category: str
    reason: str
    topic: str
    payload: bytes
    via: SimDevice | None = None  # the device client that publishes it; None: the raw client
    secret: str | None = None  # injected text that must never show in quarantine

    @property
    def digest(self) -> bytes:
        """The quarantine row key of this message."""
        return hashlib.sha256(self.topic.encode() + b"\0" + self.payload).digest()


@dataclass
class Ctx:
    """What the builders need: connected devices and the frames already stored."""

    devices: list[SimDevice]
    creds: dict[str, dict[str, Any]]
    stale: SimDevice
    stored: list[tuple[str, bytes]]
    known_ids: set[str]
    now_ms: int
    ad_hoc: Iterator[int] = field(default_factory=lambda: iter(range(AD_HOC_COUNTER, 2**62)))

    def pick(self, i: int) -> SimDevice:
        """A device by a drawn index."""
        return self.devices[i % len(self.devices)]

    def pick_model(self, i: int, models: tuple[str, ...]) -> SimDevice:
        """A device of one of *models* by a drawn index."""
        pool = [d for d in self.devices if d.model in models]
        return pool[i % len(pool)]

    def root(self, device: SimDevice) -> bytes:
        """The device's root key."""
        return bytes.fromhex(self.creds[device.device_id]["root_key"])


def good_data(device: SimDevice, kind: str) -> dict[str, object]:
    """A valid data map of *kind* for *device*."""
    if kind == "status":
        return {"online": True}
    if kind == "info":
        return {"mac": device.mac, "fw": "1.4.2"}
    return device.telemetry()


def body(t: object, d: object) -> bytes:
    """A report body."""
    return bytes(msgpack.packb({"t": t, "d": d}))


def good_body(ctx: Ctx, device: SimDevice, kind: str = "telemetry") -> bytes:
    """A valid report body."""
    return body(ctx.now_ms, good_data(device, kind))


def raw_map(items: list[tuple[bytes, bytes]]) -> bytes:
    """A msgpack map from already encoded keys and values (duplicates and odd floats allowed)."""
    n = len(items)
    head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
    return head + b"".join(k + v for k, v in items)


def in_d(ctx: Ctx, items: list[tuple[bytes, bytes]]) -> bytes:
    """A body stamped now whose data map holds the encoded *items*."""
    return raw_map([(enc("t"), enc(ctx.now_ms)), (enc("d"), raw_map(items))])


def enc(value: object) -> bytes:
    """Encode one msgpack value."""
    return bytes(msgpack.packb(value))


def sealed(device: SimDevice, plaintext: bytes, kind: str = "telemetry") -> bytes:
    """A frame sealed under the device's current session for its own *kind* topic."""
    return device.seal(kind, plaintext)[1]


def reheader(frame: bytes, **fields: int) -> bytes:
    """*frame* with some header fields replaced (the tag no longer verifies)."""
    names = ("version", "suite", "flags", "epoch", "counter", "sid")
    values = dict(zip(names, HEADER.unpack_from(frame), strict=True))
    values.update(fields)
    return HEADER.pack(*(values[n] for n in names)) + frame[HEADER_BYTES:]


def _header_reason(payload: bytes) -> str | None:
    """Reason the bridge gives before it looks at the device, if any."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return "oversized"
    if len(payload) < HEADER_BYTES + TAG_BYTES:
        return "malformed_frame"
    version, suite, _flags, _epoch, counter, _sid = HEADER.unpack_from(payload)
    if version != device_keys.PROTOCOL_VERSION or suite not in {2, 3}:
        return "unsupported_version"
    return None if 0 < counter <= MAX_COUNTER else "malformed_frame"


def frame_reason(payload: bytes, device: SimDevice, kind: str) -> str:
    """Reason for a payload on a known device's *kind* topic whose AEAD tag cannot verify."""
    early = _header_reason(payload)
    if early is not None:
        return early
    _version, _suite, flags, epoch, _counter, sid = HEADER.unpack_from(payload)
    if flags & Flags.WILL:  # no connection has this id: the will names no session
        return "unknown_epoch" if kind == "status" else "bad_topic"
    if flags & (Flags.DOWN | Flags.RANDOM_COUNTER):
        return "malformed_frame"
    if epoch != device.epoch:  # the bridge runs with an epoch grace of 0
        return "unknown_epoch" if epoch > device.epoch or epoch == 0 else "stale_epoch"
    return "bad_tag" if sid == device.sessions[device.epoch].up.sid else "key_mismatch"


def is_report_shape(data: bytes) -> bool:
    """Whether *data* gets past the bridge's body decoder (so it is not a malformed payload)."""
    try:
        decode_body(data)
    except Rejected:
        return False
    return True


def is_valid_uplink(topic: str) -> bool:
    """Whether the bridge accepts *topic*'s shape (then it is no bad-topic sample)."""
    try:
        split_topic(topic)
    except Rejected:
        return False
    return True


def publishable(topic: str) -> bool:
    """Whether MQTT lets a client publish to *topic* (no wildcards, NUL or empty levels)."""
    return (
        bool(topic)
        and not any(c in topic for c in "+#\0")
        and "" not in topic.split("/")
        and len(topic.encode()) <= 65535
    )


def telemetry_points(device: SimDevice) -> tuple[DataPoint, ...]:
    """The telemetry data points of *device*'s model."""
    return PROFILES[device.model].points


def with_point(ctx: Ctx, device: SimDevice, point: DataPoint, raw: bytes) -> bytes:
    """A body of good telemetry in which *point*'s value is the encoded *raw*."""
    data = device.telemetry()
    items = [(enc(k), raw if k == point.name else enc(v)) for k, v in data.items()]
    if point.name not in data:
        items.append((enc(point.name), raw))
    return in_d(ctx, items)


# -- strategies -------------------------------------------------------------------------------
IDX = st.integers(0, 1023)
KIND = st.sampled_from(KINDS)
BIG = st.integers(0, 2**64 - 1)
TOPIC_CHARS = st.characters(
    exclude_categories=("Cs", "Cc", "Cn"), exclude_characters="/+#\x00"
)  # mosquitto drops a client whose topic has control characters or non-characters
TOPIC_LEVEL = st.text(TOPIC_CHARS, min_size=1, max_size=40)
PRINTABLE = st.text(string.ascii_letters + string.digits + " .,-_'\";()=*", max_size=10)
SQL = st.builds(lambda a, b, c: a + b + c, PRINTABLE, st.sampled_from(SQL_CORE), PRINTABLE)
SQL_TOPIC_LEVEL = SQL.filter(publishable)
LEAF = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=12)
)
OBJ = st.recursive(
    LEAF,
    lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=6), c, max_size=5),
    max_leaves=16,
)
WRONG = (
    st.text(max_size=12)
    | st.booleans()
    | st.floats()
    | st.none()
    | st.integers(-(2**63), 2**64 - 1)
    | st.binary(max_size=8)
    | st.lists(st.integers(0, 9), max_size=3)
    | st.dictionaries(st.text("ab", max_size=2), st.integers(0, 9), max_size=2)
)

POINT_NAMES = {p.name for prof in (*PROFILES.values(), INFO, STATUS) for p in prof.points}
UNKNOWN_NAME = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True).filter(
    lambda n: n not in POINT_NAMES
)

Builder = Callable[[Ctx, Any], Hostile | None]


def _random_bytes(ctx: Ctx, v: tuple[int, str, bytes]) -> Hostile:
    device, kind, payload = ctx.pick(v[0]), v[1], v[2]
    reason = frame_reason(payload, device, kind)
    return Hostile("random_bytes", reason, device.topic(kind), payload)


def _random_header(ctx: Ctx, v: tuple[int, str, int, int, int, int, int, int, bytes]) -> Hostile:
    i, kind, version, suite, flags, epoch, counter, sid, tail = v
    device = ctx.pick(i)
    epoch = device.epoch if epoch < 0 else epoch
    sid = device.sessions[device.epoch].up.sid if sid < 0 else sid
    payload = HEADER.pack(version, suite, flags, epoch, counter, sid) + tail
    return Hostile(
        "random_header", frame_reason(payload, device, kind), device.topic(kind), payload
    )


def _truncated(ctx: Ctx, v: tuple[int, str, int]) -> Hostile:
    device, kind = ctx.pick(v[0]), v[1]
    frame = sealed(device, good_body(ctx, device, kind), kind)
    payload = frame[: v[2] % len(frame)]
    reason = frame_reason(payload, device, kind)
    return Hostile("truncated_frame", reason, device.topic(kind), payload, device)


def _bit_flip(ctx: Ctx, v: tuple[int, str, int, int]) -> Hostile:
    device, kind = ctx.pick(v[0]), v[1]
    frame = bytearray(sealed(device, good_body(ctx, device, kind), kind))
    frame[v[2] % len(frame)] ^= 1 << v[3]
    payload = bytes(frame)
    reason = frame_reason(payload, device, kind)
    return Hostile("bit_flip", reason, device.topic(kind), payload, device)


def _forged_tag(ctx: Ctx, v: tuple[int, bytes]) -> Hostile | None:
    device = ctx.pick(v[0])
    frame = sealed(device, good_body(ctx, device))
    if frame[-TAG_BYTES:] == v[1]:
        return None
    payload = frame[:-TAG_BYTES] + v[1]
    return Hostile("forged_tag", "bad_tag", device.topic("telemetry"), payload, device)


def _appended(ctx: Ctx, v: tuple[int, bytes]) -> Hostile:
    device = ctx.pick(v[0])
    payload = sealed(device, good_body(ctx, device)) + v[1]
    return Hostile("appended_bytes", "bad_tag", device.topic("telemetry"), payload, device)


def _cross_kind(ctx: Ctx, v: tuple[int, tuple[str, str]]) -> Hostile:
    device, (sealed_for, sent_on) = ctx.pick(v[0]), v[1]
    payload = sealed(device, good_body(ctx, device, sealed_for), sealed_for)
    return Hostile("cross_kind_topic", "bad_tag", device.topic(sent_on), payload, device)


def _sealed_body(ctx: Ctx, category: str, reason: str, i: int, plaintext: bytes) -> Hostile:
    device = ctx.pick(i)
    payload = sealed(device, plaintext)
    if len(payload) > MAX_PAYLOAD_BYTES:
        reason = "oversized"
    return Hostile(category, reason, device.topic("telemetry"), payload, device)


def _malformed_msgpack(ctx: Ctx, v: tuple[int, bytes]) -> Hostile | None:
    if is_report_shape(v[1]):
        return None
    return _sealed_body(ctx, "malformed_msgpack", "malformed_payload", v[0], v[1])


def _body_mutation(ctx: Ctx, v: tuple[int, str, int, bytes]) -> Hostile:
    i, how, n, junk = v
    good = good_body(ctx, ctx.pick(i))
    mutated = {
        "truncate": lambda: good[: n % len(good)],
        "trailing": lambda: good + junk,
        "bad_utf8_key": lambda: in_d(ctx, [(b"\xa3\xff\xfe\xfd", b"\x01")]),
        "bad_utf8_value": lambda: in_d(ctx, [(enc("mode"), b"\xa2\xc3\x28")]),
        "ext_value": lambda: in_d(ctx, [(enc("power_w"), b"\xd4\x05\x01")]),
        "timestamp_ext": lambda: raw_map(
            [(enc("t"), b"\xd6\xff" + junk[:1] * 4), (enc("d"), b"\x80")]
        ),
        "int_key": lambda: in_d(ctx, [(enc(n % 100), b"\x01")]),
        "bin_key": lambda: raw_map([(b"\xc4\x01t", enc(ctx.now_ms)), (enc("d"), b"\x80")]),
        "map_len_lies": lambda: b"\x83" + good[1:],
        "str_len_lies": lambda: in_d(ctx, [(b"\xbfmode", b"\xa3off")]),
    }[how]()
    return _sealed_body(ctx, "body_mutation", "malformed_payload", i, mutated)


def _wrong_shape(ctx: Ctx, v: tuple[int, object]) -> Hostile | None:
    data = enc(v[1])
    if is_report_shape(data):
        return None
    return _sealed_body(ctx, "wrong_shape", "malformed_payload", v[0], data)


def _shape_fault(ctx: Ctx, v: tuple[int, str, object]) -> Hostile:
    i, how, x = v
    d = ctx.pick(i).telemetry()
    now = ctx.now_ms
    obj = {
        "no_d": {"t": now},
        "no_t": {"d": d},
        "extra_key": {"t": now, "d": d, "x": x},
        "d_not_map": {"t": now, "d": [x] if isinstance(x, dict) else x},
        "t_not_int": {"t": [now] if type(x) is int else x, "d": d},
        "array": [now, d],
        "t_as_str": {"t": str(now), "d": d},
        "t_as_float": {"t": float(now), "d": d},
        "t_as_bool": {"t": True, "d": d},
        "empty_map": {},
    }[how]
    return _sealed_body(ctx, "shape_fault", "malformed_payload", i, enc(obj))


def _huge(ctx: Ctx, v: tuple[int, str, int]) -> Hostile:
    i, how, n = v
    keys = [enc(f"k{j}") for j in range(n)]
    data = {
        "map_in_d": lambda: in_d(ctx, [(k, b"\x01") for k in keys]),
        "array_in_d": lambda: in_d(ctx, [(enc("x"), enc([1] * n))]),
        "long_str": lambda: in_d(ctx, [(enc("mode"), enc("a" * (n + 224)))]),
        "long_bin": lambda: in_d(ctx, [(enc("x"), enc(b"a" * (n + 224)))]),
        "deep_array": lambda: b"\x91" * (1025 + n % 900) + b"\xc0",
        "deep_map": lambda: b"\x81\xa1a" * (1025 + n % 300) + b"\xc0",
        "top_map": lambda: raw_map([*((k, b"\xc0") for k in keys), (enc("t"), enc(ctx.now_ms))]),
    }[how]()
    return _sealed_body(ctx, "huge_container", "malformed_payload", i, data)


def _deep_under_point(ctx: Ctx, v: tuple[int, int, bool]) -> Hostile:
    i, depth, as_map = v
    device = ctx.pick(i)
    nested = (b"\x81\xa1a" * (1 + depth // 2) if as_map else b"\x91" * depth) + b"\x01"
    plaintext = with_point(ctx, device, telemetry_points(device)[0], nested)
    return _sealed_body(ctx, "deep_under_point", "schema_violation", i, plaintext)


def _many_unknown(ctx: Ctx, v: tuple[int, list[str]]) -> Hostile:
    plaintext = body(ctx.now_ms, dict.fromkeys(v[1], 1))
    return _sealed_body(ctx, "many_unknown_points", "schema_violation", v[0], plaintext)


def _non_finite(sign: bool, single: bool, mantissa: int) -> bytes:
    if single:
        bits = (sign << 31) | (0xFF << 23) | (mantissa % 2**23)
        return b"\xca" + struct.pack(">I", bits)
    return b"\xcb" + struct.pack(">Q", (sign << 63) | (0x7FF << 52) | mantissa)


def _nan_value(ctx: Ctx, v: tuple[int, int, bool, bool, int]) -> Hostile:
    i, p, sign, single, mantissa = v
    device = ctx.pick(i)
    points = telemetry_points(device)
    plaintext = with_point(
        ctx, device, points[p % len(points)], _non_finite(sign, single, mantissa)
    )
    return _sealed_body(ctx, "nan_inf_value", "schema_violation", i, plaintext)


def _nan_timestamp(ctx: Ctx, v: tuple[int, bool, bool, int]) -> Hostile:
    i, sign, single, mantissa = v
    d = raw_map([(enc(k), enc(x)) for k, x in ctx.pick(i).telemetry().items()])
    plaintext = raw_map([(enc("t"), _non_finite(sign, single, mantissa)), (enc("d"), d)])
    return _sealed_body(ctx, "nan_inf_timestamp", "malformed_payload", i, plaintext)


def _is_right_type(point: DataPoint, value: object) -> bool:
    if point.type is PointType.BOOL:
        return isinstance(value, bool)
    if point.type is PointType.VALUE:
        return type(value) is int
    return isinstance(value, str)


def _wrong_type(ctx: Ctx, v: tuple[int, int, object]) -> Hostile | None:
    i, p, value = v
    device = ctx.pick(i)
    points = telemetry_points(device)
    point = points[p % len(points)]
    if _is_right_type(point, value):
        return None
    plaintext = with_point(ctx, device, point, enc(value))
    return _sealed_body(ctx, "wrong_type", "schema_violation", i, plaintext)


def _out_of_range(ctx: Ctx, v: tuple[int, int, int, str]) -> Hostile | None:
    i, p, number, text = v
    device = ctx.pick_model(i, ("plug", "thermostat", "scale", "cleaner"))
    points = [q for q in telemetry_points(device) if q.type in {PointType.VALUE, PointType.ENUM}]
    point = points[p % len(points)]
    value: object = text
    if point.type is PointType.VALUE:
        value = number
        if point.minimum <= number <= point.maximum and not (number - point.minimum) % point.step:
            return None
    elif text in point.choices:
        return None
    plaintext = with_point(ctx, device, point, enc(value))
    return Hostile(
        "out_of_range", "out_of_range", device.topic("telemetry"), sealed(device, plaintext), device
    )


def _clock(ctx: Ctx, v: tuple[int, str, int]) -> Hostile:
    i, how, off = v
    now = ctx.now_ms
    t, category, reason = {
        "past": (1 + off % (now - STALE_BEFORE_MS), "clock_past", "stale_timestamp"),
        "future": (
            now + FUTURE_AFTER_MS + off % (MAX_TS_MS - 1 - now - FUTURE_AFTER_MS),
            "clock_future",
            "future_timestamp",
        ),
        "zero": (0, "clock_invalid", "malformed_payload"),
        "negative": (-1 - off % 2**63, "clock_invalid", "malformed_payload"),
        "too_big": (MAX_TS_MS + off % (2**64 - MAX_TS_MS), "clock_invalid", "malformed_payload"),
    }[how]
    return _sealed_body(ctx, category, reason, i, body(t, ctx.pick(i).telemetry()))


def _replay(ctx: Ctx, v: int) -> Hostile:
    topic, frame = ctx.stored[v % len(ctx.stored)]
    return Hostile("replay", "replay", topic, frame)


def _other_device(ctx: Ctx, v: tuple[int, int, str, str]) -> Hostile:
    a = ctx.pick(v[0])
    b = ctx.pick(v[0] + 1 + v[1] % (len(ctx.devices) - 1))  # never a itself
    how, kind = v[2], v[3]
    plain = good_body(ctx, b, kind)
    keys = {"sealed_by_a": a.sessions[a.epoch].up, "reflected": b.sessions[b.epoch].down}
    if how == "moved":
        payload = sealed(a, plain, kind)
    else:
        payload = device_keys.seal_frame(
            keys[how],
            epoch=b.epoch,
            counter=next(ctx.ad_hoc),
            plaintext=plain,
            device_id=b.device_id,
            topic=b.topic(kind),
        )
    return Hostile("other_device", frame_reason(payload, b, kind), b.topic(kind), payload, a)


def _topic(ctx: Ctx, form: str, text: str, i: int) -> str:
    device_id = ctx.pick(i).device_id
    return {
        "bad_id": f"devices/{text}/up/telemetry",
        "long_id": f"devices/{'a' * (17 + len(text) * 499)}/up/telemetry",
        "upper_id": f"devices/{device_id.upper()}/up/info",
        "short_id": f"devices/{device_id[: 1 + len(text) % 15]}/up/status",
        "bad_kind": f"devices/{device_id}/up/{text}",
        "kind_case": f"devices/{device_id}/up/{text[:1]}Telemetry",
        "too_short": f"devices/{device_id}/up",
        "too_deep": f"devices/{device_id}/up/telemetry/{text}",
        "deeper": f"devices/{device_id}/up/{text}/{text}/x",
        "sql_id": f"devices/{text}/up/telemetry",
        "sql_kind": f"devices/{device_id}/up/telemetry{text}",
    }[form]


def _bad_topic(ctx: Ctx, v: tuple[str, str, int, str, bytes]) -> Hostile | None:
    form, text, i, payload_kind, data = v
    topic = _topic(ctx, form, text, i)
    if is_valid_uplink(topic) or not publishable(topic):
        return None
    device = ctx.pick(i)
    payload = {
        "frame": lambda: sealed(device, good_body(ctx, device)),
        "random": lambda: data,
        "oversized": lambda: data * (1 + 3000 // max(len(data), 1)) + b"x" * 3000,
    }[payload_kind]()
    secret = text if form.startswith("sql") else None
    return Hostile("bad_topic", "bad_topic", topic, payload, secret=secret)


def _oversized(ctx: Ctx, v: tuple[int, str, int, int]) -> Hostile:
    i, where, size, seed = v
    device = ctx.pick(i)
    if where == "sealed":
        payload = sealed(device, random.Random(seed).randbytes(size - 35))
        return Hostile("oversized", "oversized", device.topic("telemetry"), payload, device)
    payload = random.Random(seed).randbytes(size)
    topic = (
        f"devices/{'b' * DEVICE_ID_LENGTH}/up/telemetry"
        if where == "unknown"
        else device.topic(where)
    )
    return Hostile("oversized", "oversized", topic, payload)


def _unknown_epoch(ctx: Ctx, v: tuple[int, int, str]) -> Hostile | None:
    i, epoch, kind = v
    device = ctx.pick(i)
    if epoch == device.epoch:
        return None
    payload = device_keys.seal_frame(
        device.sessions[device.epoch].up,
        epoch=epoch,
        counter=next(ctx.ad_hoc),
        plaintext=good_body(ctx, device, kind),
        device_id=device.device_id,
        topic=device.topic(kind),
    )
    reason = frame_reason(payload, device, kind)
    return Hostile("unknown_epoch", reason, device.topic(kind), payload, device)


def _stale_epoch(ctx: Ctx, v: tuple[int, str]) -> Hostile:
    device = ctx.stale
    old = sorted(e for e in device.sessions if e < device.epoch)
    epoch = old[v[0] % len(old)]
    kind = v[1]
    payload = device_keys.seal_frame(
        device.sessions[epoch].up,
        epoch=epoch,
        counter=next(ctx.ad_hoc),
        plaintext=good_body(ctx, device, kind),
        device_id=device.device_id,
        topic=device.topic(kind),
    )
    return Hostile("stale_epoch", "stale_epoch", device.topic(kind), payload, device)


def _bad_version(ctx: Ctx, v: tuple[int, str, int]) -> Hostile | None:
    i, field_name, value = v
    device = ctx.pick(i)
    frame = sealed(device, good_body(ctx, device))
    if field_name == "version" and value == device_keys.PROTOCOL_VERSION:
        return None
    if field_name == "suite" and value == device_keys.Suite.AES_256_GCM:
        return None
    payload = reheader(frame, **{field_name: value})
    reason = frame_reason(payload, device, "telemetry")
    return Hostile("bad_version", reason, device.topic("telemetry"), payload, device)


def _bad_counter_or_flags(ctx: Ctx, v: tuple[int, str, int]) -> Hostile:
    i, how, big = v
    device = ctx.pick(i)
    frame = sealed(device, good_body(ctx, device))
    changes: dict[str, dict[str, int]] = {
        "counter_zero": {"counter": 0},
        "counter_high": {"counter": MAX_COUNTER + 1 + big % (2**64 - MAX_COUNTER - 1)},
        "down": {"flags": Flags.DOWN},
        "random_counter": {"flags": Flags.RANDOM_COUNTER},
        "down_random": {"flags": Flags.DOWN | Flags.RANDOM_COUNTER | (big % 256 & 0xF8)},
    }
    payload = reheader(frame, **changes[how])
    return Hostile(
        "bad_counter_or_flags", "malformed_frame", device.topic("telemetry"), payload, device
    )


def _unknown_device(ctx: Ctx, v: tuple[str, str, int, bytes]) -> Hostile | None:
    device_id, kind, i, data = v
    if device_id in ctx.known_ids:
        return None
    device = ctx.pick(i)
    payload = data if kind == "kx" else sealed(device, good_body(ctx, device))
    return Hostile("unknown_device", "unknown_device", f"devices/{device_id}/up/{kind}", payload)


def _kx(ctx: Ctx, v: tuple[int, str, bytes, int]) -> Hostile:
    i, how, data, n = v
    device = ctx.pick(i)
    k_kx = device_keys.kx_key(ctx.root(device), device.device_id)
    drk = ctx.creds[device.device_id]["drk_version"]
    nonce = hashlib.sha256(n.to_bytes(8, "big")).digest()[:16]
    now = ctx.now_ms

    def request(ts: int, version: int = drk) -> bytes:
        return device_keys.encode_kx_request(
            k_kx,
            device.device_id,
            drk_version=version,
            ts_ms=ts,
            cid=1 + n % 2**62,
            device_nonce=nonce,
        )

    payload, reason = {
        "random": lambda: (data, "kx_invalid"),
        "drk_version": lambda: (request(now, drk + 1 + n % (65535 - drk)), "kx_invalid"),
        "past": lambda: (request(n % (now - KX_SKEW_MS)), "kx_replay"),
        "future": lambda: (
            request(now + KX_SKEW_MS + n % (2**64 - 1 - now - KX_SKEW_MS)),
            "kx_replay",
        ),
        "version": lambda: (bytes([2 + n % 254]) + request(now)[1:], "kx_invalid"),
        "type": lambda: (request(now)[:1] + bytes([2 + n % 254]) + request(now)[2:], "kx_invalid"),
        "bad_mac": lambda: (request(now)[:-1] + bytes([request(now)[-1] ^ 1]), "kx_invalid"),
        "frame": lambda: (sealed(device, good_body(ctx, device)), "kx_invalid"),
    }[how]()
    return Hostile("kx_forged", reason, device.topic("kx"), payload, device)


def _will(ctx: Ctx, v: tuple[int, str, int]) -> Hostile:
    device, kind = ctx.pick(v[0]), v[1]
    payload = device_keys.seal_frame(
        device_keys.will_keys(ctx.root(device), device.device_id),
        epoch=0,
        counter=1 + v[2] % MAX_COUNTER,
        plaintext=body(ctx.now_ms, {"online": False}),
        device_id=device.device_id,
        topic=device.topic(kind),
        flags=Flags.WILL,
    )
    reason = frame_reason(payload, device, kind)
    return Hostile("will_misuse", reason, device.topic(kind), payload, device)


def _sql_in_body(ctx: Ctx, v: tuple[int, str, str]) -> Hostile:
    i, where, sql = v
    models = {"media_ref": ("camera",), "enum": ("thermostat", "cleaner")}.get(
        where, tuple(PROFILES)
    )
    device = ctx.pick_model(i, models)
    info = {"mac": device.mac, "fw": "1.4.2"}
    enum_point = "mode" if device.model == "thermostat" else "state"
    text = {"ssid_long": sql + "#" * 33, "ssid_ctrl": sql[:20] + "\n"}.get(where, sql)
    kind, data, reason = {
        "point_name": ("telemetry", {**device.telemetry(), text: 1}, "schema_violation"),
        "media_ref": ("telemetry", {"motion": True, "media_ref": text}, "schema_violation"),
        "enum": ("telemetry", {enum_point: text}, "out_of_range"),
        "fw": ("info", {**info, "fw": text}, "schema_violation"),
        "mac": ("info", {**info, "mac": text}, "schema_violation"),
        "ip": ("info", {**info, "ip": text}, "schema_violation"),
        "ssid_long": ("info", {**info, "ssid": text}, "schema_violation"),
        "ssid_ctrl": ("info", {**info, "ssid": text}, "schema_violation"),
        "online": ("status", {"online": text}, "schema_violation"),
    }[where]
    payload = sealed(device, body(ctx.now_ms, data), kind)
    return Hostile("sql_in_body", reason, device.topic(kind), payload, device, secret=text)


CATEGORIES: list[tuple[str, st.SearchStrategy[Any], int, Builder]] = [
    (
        "random_bytes",
        st.tuples(IDX, KIND, st.binary(max_size=120) | st.binary(min_size=35, max_size=2048)),
        600,
        _random_bytes,
    ),
    (
        "random_header",
        st.tuples(
            IDX,
            KIND,
            st.sampled_from([1, 1, 1, 1, 1, 0, 2, 255]),  # mostly well-formed headers,
            st.sampled_from([3, 3, 3, 2, 0, 1, 4, 255]),  # so the later checks are reached
            st.just(0) | st.integers(0, 255),
            st.just(-1) | st.integers(0, 2**32 - 1),
            st.integers(1, 2**20) | BIG,
            st.just(-1) | st.integers(0, 2**32 - 1),
            st.binary(min_size=16, max_size=80),
        ),
        800,
        _random_header,
    ),
    ("truncated_frame", st.tuples(IDX, KIND, st.integers(0, 10**4)), 500, _truncated),
    ("bit_flip", st.tuples(IDX, KIND, st.integers(0, 10**4), st.integers(0, 7)), 1200, _bit_flip),
    ("forged_tag", st.tuples(IDX, st.binary(min_size=16, max_size=16)), 300, _forged_tag),
    ("appended_bytes", st.tuples(IDX, st.binary(min_size=1, max_size=64)), 200, _appended),
    (
        "cross_kind_topic",
        st.tuples(IDX, st.permutations(KINDS).map(lambda p: (p[0], p[1]))),
        200,
        _cross_kind,
    ),
    ("malformed_msgpack", st.tuples(IDX, st.binary(max_size=300)), 500, _malformed_msgpack),
    (
        "body_mutation",
        st.tuples(
            IDX,
            st.sampled_from(
                [
                    "truncate",
                    "trailing",
                    "bad_utf8_key",
                    "bad_utf8_value",
                    "ext_value",
                    "timestamp_ext",
                    "int_key",
                    "bin_key",
                    "map_len_lies",
                    "str_len_lies",
                ]
            ),
            st.integers(0, 10**4),
            st.binary(min_size=1, max_size=16),
        ),
        400,
        _body_mutation,
    ),
    ("wrong_shape", st.tuples(IDX, OBJ), 300, _wrong_shape),
    (
        "shape_fault",
        st.tuples(
            IDX,
            st.sampled_from(
                [
                    "no_d",
                    "no_t",
                    "extra_key",
                    "d_not_map",
                    "t_not_int",
                    "array",
                    "t_as_str",
                    "t_as_float",
                    "t_as_bool",
                    "empty_map",
                ]
            ),
            LEAF,
        ),
        300,
        _shape_fault,
    ),
    (
        "huge_container",
        st.tuples(
            IDX,
            st.sampled_from(
                [
                    "map_in_d",
                    "array_in_d",
                    "long_str",
                    "long_bin",
                    "deep_array",
                    "deep_map",
                    "top_map",
                ]
            ),
            st.integers(33, 1900),
        ),
        400,
        _huge,
    ),
    (
        "deep_under_point",
        st.tuples(IDX, st.integers(1, 900), st.booleans()),
        100,
        _deep_under_point,
    ),
    (
        "many_unknown_points",
        st.tuples(IDX, st.lists(UNKNOWN_NAME, min_size=1, max_size=30, unique=True)),
        100,
        _many_unknown,
    ),
    (
        "nan_inf_value",
        st.tuples(IDX, st.integers(0, 9), st.booleans(), st.booleans(), st.integers(0, 2**52 - 1)),
        400,
        _nan_value,
    ),
    (
        "nan_inf_timestamp",
        st.tuples(IDX, st.booleans(), st.booleans(), st.integers(0, 2**52 - 1)),
        100,
        _nan_timestamp,
    ),
    ("wrong_type", st.tuples(IDX, st.integers(0, 9), WRONG), 700, _wrong_type),
    (
        "out_of_range",
        st.tuples(
            IDX,
            st.integers(0, 9),
            st.integers(-(2**63), 2**64 - 1),
            st.text(string.printable, min_size=1, max_size=12),
        ),
        400,
        _out_of_range,
    ),
    (
        "clock",
        st.tuples(IDX, st.sampled_from(["past", "future", "zero", "negative", "too_big"]), BIG),
        900,
        _clock,
    ),
    ("replay", st.integers(0, 10**4), 300, _replay),
    (
        "other_device",
        st.tuples(IDX, IDX, st.sampled_from(["moved", "sealed_by_a", "reflected"]), KIND),
        500,
        _other_device,
    ),
    (
        "bad_topic",
        st.one_of(
            st.tuples(
                st.sampled_from(
                    [
                        "bad_id",
                        "long_id",
                        "upper_id",
                        "short_id",
                        "bad_kind",
                        "kind_case",
                        "too_short",
                        "too_deep",
                        "deeper",
                    ]
                ),
                TOPIC_LEVEL,
                IDX,
                st.sampled_from(["frame", "random", "oversized"]),
                st.binary(max_size=64),
            ),
            st.tuples(
                st.sampled_from(["sql_id", "sql_kind"]),
                SQL_TOPIC_LEVEL,
                IDX,
                st.sampled_from(["frame", "random"]),
                st.binary(max_size=64),
            ),
        ),
        900,
        _bad_topic,
    ),
    (
        "oversized",
        st.tuples(
            IDX,
            st.sampled_from(["telemetry", "status", "info", "kx", "unknown", "sealed"]),
            st.integers(MAX_PAYLOAD_BYTES + 1, 70_000),
            st.integers(0, 2**32),
        ),
        300,
        _oversized,
    ),
    ("unknown_epoch", st.tuples(IDX, st.integers(0, 2**32 - 1), KIND), 300, _unknown_epoch),
    ("stale_epoch", st.tuples(st.integers(0, 100), KIND), 300, _stale_epoch),
    (
        "bad_version",
        st.tuples(IDX, st.sampled_from(["version", "suite"]), st.integers(0, 255)),
        400,
        _bad_version,
    ),
    (
        "bad_counter_or_flags",
        st.tuples(
            IDX,
            st.sampled_from(
                ["counter_zero", "counter_high", "down", "random_counter", "down_random"]
            ),
            BIG,
        ),
        300,
        _bad_counter_or_flags,
    ),
    (
        "unknown_device",
        st.tuples(
            st.text(DEVICE_ID_ALPHABET, min_size=DEVICE_ID_LENGTH, max_size=DEVICE_ID_LENGTH),
            st.sampled_from([*KINDS, "kx"]),
            IDX,
            st.binary(max_size=100),
        ),
        400,
        _unknown_device,
    ),
    (
        "kx_forged",
        st.tuples(
            IDX,
            st.sampled_from(
                ["random", "drk_version", "past", "future", "version", "type", "bad_mac", "frame"]
            ),
            st.binary(max_size=200),
            BIG,
        ),
        500,
        _kx,
    ),
    ("will_misuse", st.tuples(IDX, KIND, BIG), 200, _will),
    (
        "sql_in_body",
        st.tuples(
            IDX,
            st.sampled_from(
                [
                    "point_name",
                    "media_ref",
                    "enum",
                    "fw",
                    "mac",
                    "ip",
                    "ssid_long",
                    "ssid_ctrl",
                    "online",
                ]
            ),
            SQL,
        ),
        600,
        _sql_in_body,
    ),
]


def build_corpus(ctx: Ctx) -> list[Hostile]:
    """Draw every category's values and turn them into hostile messages."""
    corpus: list[Hostile] = []
    for _name, strategy, n, build in CATEGORIES:
        for value in draw_many(strategy, n):
            message = build(ctx, value)
            if message is not None:
                corpus.append(message)
    return corpus


# -- running it -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Good:
    """A good frame as sent (its identity and its bytes, for replays)."""

    device_id: str
    epoch: int
    counter: int
    kind: str
    topic: str
    frame: bytes
    points: int


def send_good(device: SimDevice, kind: str, data: dict[str, object], ts_ms: int) -> Good:
    """``SimDevice.send`` a good frame and return what it sent."""
    device.send(kind, data, ts_ms=ts_ms)
    epoch, counter, topic = device.epoch, device._counter, device.topic(kind)
    frame = device_keys.seal_frame(  # AEAD is deterministic: the same bytes send() published
        device.sessions[epoch].up,
        epoch=epoch,
        counter=counter,
        plaintext=body(ts_ms, data),
        device_id=device.device_id,
        topic=topic,
    )
    return Good(device.device_id, epoch, counter, kind, topic, frame, len(data))


@contextmanager
def raw_publisher(url: str) -> Iterator[paho.Client]:
    """A plain MQTT 5 client for hostile bytes on arbitrary topics."""
    address = BrokerAddress.parse(url)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="hostile-raw", protocol=paho.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(address.host, address.port, keepalive=30)
    client.loop_start()
    try:
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


@contextmanager
def connected_fleet(creds: list[dict[str, Any]], url: str) -> Iterator[list[SimDevice]]:
    """Every credential as a connected SimDevice (key exchange done)."""
    pump, address = Pump(), BrokerAddress.parse(url)
    devices = [SimDevice(c, address, Tally(), random.Random(n), pump) for n, c in enumerate(creds)]
    try:
        for device in devices:
            device.connect()
        yield devices
    finally:
        for device in devices:
            device.close()
        pump.stop()


def wait_confirmed(devices: list[SimDevice], timeout: float = 30) -> None:
    """Wait until every good frame has a storage receipt."""
    deadline = time.monotonic() + timeout
    while any(d.unconfirmed for d in devices) and time.monotonic() < deadline:
        time.sleep(0.05)


def totals(dsn: str) -> tuple[int, int]:
    """(quarantine occurrences, stored frames)."""
    return (
        count(dsn, "SELECT coalesce(sum(occurrences), 0) FROM quarantine"),
        count(dsn, "SELECT count(*) FROM frames"),
    )


def settle(dsn: str, expected: tuple[int, int], devices: list[SimDevice]) -> tuple[int, int]:
    """Wait (bounded) until the expected totals are reached and stop changing."""
    deadline, last, since = time.monotonic() + 60, (-1, -1), time.monotonic()
    while time.monotonic() < deadline:
        now = totals(dsn)
        if now != last:
            last, since = now, time.monotonic()
        reached = now >= expected and not any(d.unconfirmed for d in devices)
        quiet = time.monotonic() - since
        if (reached and quiet > 1.0) or quiet > 10.0:
            break
        time.sleep(0.25)
    return last


def public_tables(dsn: str) -> set[str]:
    """Names of the tables in the public schema."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r[0] for r in rows.fetchall()}


def publish_all(
    corpus: list[Hostile], devices: list[SimDevice], raw: paho.Client, now_ms: int
) -> tuple[Counter[bytes], list[Good], int]:
    """Publish the corpus with good frames spread through it; returns what was published."""
    published: Counter[bytes] = Counter()
    goods: list[Good] = []
    infos: list[paho.MQTTMessageInfo] = []
    refused = 0
    for n, message in enumerate(corpus):
        if n % GOOD_EVERY == 0:
            device = devices[(n // GOOD_EVERY) % len(devices)]
            goods.append(send_good(device, "telemetry", device.telemetry(), now_ms + n // 100))
        try:
            if message.via is not None:
                message.via.publish(message.topic, message.payload)
            else:
                infos.append(raw.publish(message.topic, message.payload, qos=1))
        except ValueError:  # paho refuses the topic at publish time: never sent, not counted
            refused += 1
            continue
        published[message.digest] += 1
    deadline = time.monotonic() + 60
    for info in infos:
        info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        assert info.is_published(), "the broker did not acknowledge a hostile message"
    return published, goods, refused


def report(corpus: list[Hostile], refused: int) -> None:
    """Print the corpus composition (shown with -s or on failure)."""
    by_category: dict[str, Counter[str]] = defaultdict(Counter)
    for m in corpus:
        by_category[m.category][m.reason] += 1
    print(f"\nhostile corpus: {len(corpus)} messages, {refused} refused by paho")
    for category, reasons in sorted(by_category.items()):
        print(f"  {category:22} {sum(reasons.values()):5}  {dict(reasons.most_common())}")


def test_hostile_corpus_is_quarantined_by_reason_and_good_data_is_untouched(
    db_dsn: str, broker: Broker, root_key_file: Path, bridge_factory: Any
) -> None:
    """10,000+ hostile messages: each one reject with its reason; good frames stored; no crash."""
    rng = random.Random(SEED)
    creds = fleet(db_dsn, root_key_file, 2)
    bridge = bridge_factory(workers=2, QNECT_EPOCH_GRACE_S="0")
    pids = sorted(bridge.wait_workers())
    with connected_fleet(creds, broker.url) as devices, raw_publisher(broker.url) as raw:
        stale = devices[0]
        for _ in range(STALE_RECONNECTS):
            stale.reconnect()
        rekeyed_at = time.monotonic()
        now_ms = int(time.time() * 1000)
        goods = [
            send_good(d, "telemetry", d.telemetry(), now_ms + k)
            for k in range(GOOD_BEFORE)
            for d in devices
        ]
        goods += [
            send_good(d, "info", {"mac": d.mac, "fw": "1.4.2", "ssid": ssid}, now_ms)
            for d, ssid in zip(devices[1:], SQL_SSIDS, strict=False)
        ]
        wait_confirmed(devices)
        assert not any(d.unconfirmed for d in devices), "good frames before the stream"
        tables = public_tables(db_dsn)
        q_before, f_before = totals(db_dsn)
        ctx = Ctx(
            devices,
            {c["device_id"]: c for c in creds},
            stale,
            [(g.topic, g.frame) for g in goods if g.kind == "telemetry"],
            {c["device_id"] for c in creds},
            now_ms,
        )
        corpus = build_corpus(ctx)
        rng.shuffle(corpus)
        report(corpus, 0)
        check_corpus(corpus)
        time.sleep(max(0.0, 2.5 - (time.monotonic() - rekeyed_at)))  # 2 s directory TTL
        published, during, refused = publish_all(corpus, devices, raw, now_ms)
        goods += during
        q_after, f_after = settle(
            db_dsn, (q_before + published.total(), f_before + len(during)), devices
        )
        unconfirmed = sum(len(d.unconfirmed) for d in devices)
    assert refused == 0, f"paho refused {refused} topics the corpus should have filtered"
    assert published.total() >= MIN_CORPUS
    assert sorted(bridge.worker_pids()) == pids, "a bridge worker crashed"
    assert unconfirmed == 0, f"{unconfirmed} good frames not confirmed"
    check_quarantine(db_dsn, corpus, published)
    check_good_frames(db_dsn, creds, goods)
    assert (q_after - q_before, f_after - f_before) == (published.total(), len(during))
    check_no_echo(db_dsn, corpus)
    assert public_tables(db_dsn) == tables
    assert {"devices", "frames", "quarantine", "telemetry", "device_state"} <= tables
    assert count(db_dsn, "SELECT count(*) FROM devices") == len(creds)
    assert bridge.log_path is not None
    log = bridge.log_path.read_text()
    assert "internal_error" not in log
    assert "Traceback" not in log


def check_corpus(corpus: list[Hostile]) -> None:
    """The corpus is big enough, each category yields only its reasons, digests are consistent."""
    assert len(corpus) >= MIN_CORPUS
    reasons: dict[bytes, str] = {}
    for m in corpus:
        assert m.reason in ALLOWED[m.category], (m.category, m.reason)
        assert reasons.setdefault(m.digest, m.reason) == m.reason, m.category


def check_quarantine(dsn: str, corpus: list[Hostile], published: Counter[bytes]) -> None:
    """Each published hostile message is one occurrence of its quarantine row, with its reason."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT digest, reason, occurrences FROM quarantine").fetchall()
        by_reason: dict[str, int] = dict(
            conn.execute(
                "SELECT reason, sum(occurrences) FROM quarantine GROUP BY reason"
            ).fetchall()
        )
    stored = {bytes(d): (r, n) for d, r, n in rows}
    expected = {m.digest: m for m in corpus if m.digest in published}
    problems: dict[str, list[str]] = defaultdict(list)
    for digest, m in expected.items():
        got = stored.get(digest)
        want = (m.reason, published[digest])
        if got != want:
            problems[m.category].append(
                f"{m.topic[:60]!r} {m.payload[:24].hex()} want {want} got {got}"
            )
    extra = set(stored) - set(expected)
    assert not extra, f"{len(extra)} quarantine rows are not from the hostile corpus"
    summary = {c: (len(p), p[:3]) for c, p in problems.items()}
    assert not problems, f"hostile messages not quarantined as expected: {summary}"
    want_by_reason: Counter[str] = Counter()
    for digest, m in expected.items():
        want_by_reason[m.reason] += published[digest]
    assert by_reason == dict(want_by_reason)
    assert "internal_error" not in by_reason


def check_good_frames(dsn: str, creds: list[dict[str, Any]], goods: list[Good]) -> None:
    """Exactly the good frames are stored, each once, with their data rows."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT device_id, epoch, counter, kind FROM frames").fetchall()
    kinds = {1: "telemetry", 2: "status", 3: "info"}
    stored = sorted((d, e, c, kinds[k]) for d, e, c, k in rows)
    assert stored == sorted((g.device_id, g.epoch, g.counter, g.kind) for g in goods)
    models = {c["device_id"]: c["model"] for c in creds}
    rows_expected = sum(plain_points(models[g.device_id]) for g in goods if g.kind == "telemetry")
    assert count(dsn, "SELECT count(*) FROM telemetry") == rows_expected
    sealed_info = sum(g.points for g in goods if g.kind == "info")  # all info points are sealed
    assert count(dsn, "SELECT count(*) FROM device_info") == sealed_info


def check_no_echo(dsn: str, corpus: list[Hostile]) -> None:
    """No SQL-ish text injected by the corpus shows up in quarantine or the device state."""
    with psycopg.connect(dsn) as conn:
        quarantine = conn.execute(
            "SELECT DISTINCT coalesce(device_id, ''), kind, reason, detail FROM quarantine"
        ).fetchall()
        state = conn.execute(
            "SELECT latest::text, coalesce(firmware, '') FROM device_state"
        ).fetchall()
    text = "\n".join("\t".join(r) for r in quarantine + state)
    secrets = {m.secret for m in corpus if m.secret} | set(SQL_CORE) | set(SQL_SSIDS)
    assert len(secrets) > 100
    leaked = sorted(s for s in secrets if s in text)
    assert not leaked, f"injected text echoed: {leaked[:5]}"
