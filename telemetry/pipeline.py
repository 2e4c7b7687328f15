"""The ingest pipeline over one batch of broker messages.

Stages per message: topic → size cap → device → frame header → epoch and session → AEAD tag →
replay window → body decode → profile validation → MAC check → field encryption. The only
I/O-shaped dependency is the ``Directory`` cache, prepared in bulk before the stages run, so a
batch costs one registry round trip at most. Storage happens after, in ``postgres.py``.
Every message ends as exactly one of: an accepted frame, a reject, a key exchange, a will.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgpack
import structlog

from crypto import device_keys
from crypto.device_keys import Flags, FrameHeader
from crypto.envelope import FieldContext
from crypto.errors import DecryptionFailed
from crypto.errors import MalformedFrame as CryptoMalformed
from crypto.errors import UnsupportedVersion as CryptoUnsupported
from crypto.keys import KeyClass
from crypto.nonces import NonceSequence
from crypto.replay import Freshness
from device_registry.model import DeviceContext, DeviceStatus, is_device_id
from device_registry.ota import ProgressReport
from device_registry.profiles import INFO, STATUS, DataPoint, ReportKind
from privacy.retention import RetentionClass
from telemetry import errors, ota, rekey
from telemetry.directory import Directory
from telemetry.ratelimit import RateConfig, RateLimiter
from telemetry.validate import Limits, Report, Value, validate

log = structlog.get_logger("telemetry.pipeline")

MAX_PAYLOAD_BYTES = 2048  # largest legitimate frame is ~400 B; caps decode work per message
TOPIC_PREFIX = "devices/"
KINDS = {"telemetry": ReportKind.TELEMETRY, "status": ReportKind.STATUS, "info": ReportKind.INFO}
MAX_KX_SKEW_MS = 5 * 60 * 1000  # key-exchange timestamps older than this are treated as replays
GRACE_EPOCHS = 3  # how many superseded sessions may still deliver resent frames
COARSE_POSITION_M = 2  # unconsented robot positions: a 2 m grid says which room, not where

Random = Callable[[int], bytes]
_CONTROL_KINDS = ("kx", "rekey", "ota")  # uplink kinds that carry no stored report
_FIXED_PROFILES = {ReportKind.STATUS: STATUS, ReportKind.INFO: INFO}  # same for every model


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message as the broker delivered it."""

    topic: str
    payload: bytes
    dup: bool  # broker redelivery flag
    token: int  # opaque ack handle for the MQTT adapter


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """Tunables of the pipeline."""

    limits: Limits = field(default_factory=Limits)
    epoch_grace_ms: int = 300_000  # resends of a reconnecting device may use the old session
    rates: RateConfig = field(default_factory=RateConfig)  # this worker's share (per_worker)
    drk_grace_ms: int = 3_600_000  # a rotated-away root key stays decrypt-only this long


@dataclass(slots=True)
class AcceptedFrame:
    """A frame that passed every stage, with the rows it will store."""

    index: int
    device_id: str
    binding: str
    epoch: int
    counter: int
    kind: ReportKind
    ts_ms: int
    plain: list[tuple[int, float]]  # (point code, value) for the numeric table
    sealed: list[tuple[RetentionClass, int, bytes]]  # (table class, point code, envelope)
    latest: dict[str, bool | int | str]  # plain values for the device's latest state
    online: bool | None = None
    firmware: str | None = None
    rssi: int | None = None

    @property
    def key(self) -> tuple[str, int, int]:
        """The frame's identity: (device, epoch, counter)."""
        return (self.device_id, self.epoch, self.counter)


@dataclass(frozen=True, slots=True)
class Reject:
    """A message that was refused, described without its content."""

    index: int
    device_id: str | None
    kind: str
    code: str
    detail: str
    size: int
    epoch: int | None = None
    counter: int | None = None


@dataclass(frozen=True, slots=True)
class KeyExchange:
    """An authenticated key-exchange request waiting for its epoch."""

    index: int
    device_id: str
    request: device_keys.KxRequest
    server_nonce: bytes
    kx_key: bytes = field(repr=False)  # the K_kx the request verified under (current or pending)


@dataclass(frozen=True, slots=True)
class Will:
    """A last-will (offline) notice for the session a connection id names."""

    index: int
    device_id: str
    epoch: int


@dataclass(slots=True)
class Outcome:
    """What a batch turned into."""

    accepted: list[AcceptedFrame] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    key_exchanges: list[KeyExchange] = field(default_factory=list)
    wills: list[Will] = field(default_factory=list)
    rotations: list[rekey.Rotation] = field(default_factory=list)  # root keys proven
    duplicates_seen: list[AcceptedFrame] = field(default_factory=list)  # caught by the window
    ota: list[ProgressReport] = field(default_factory=list)  # OTA progress (telemetry.ota)


@dataclass(frozen=True, slots=True)
class _Parsed:
    index: int
    device_id: str
    kind: str
    header: FrameHeader | None


def split_topic(topic: str) -> tuple[str, str]:
    """Return (device id, kind) of an uplink topic.

    Raises:
        BadTopic: not ``devices/<id>/up/<kind>`` with a known kind.
    """
    parts = topic.split("/")
    if (
        len(parts) != 4
        or parts[0] != "devices"
        or parts[2] != "up"
        or not is_device_id(parts[1])
        or (parts[3] not in KINDS and parts[3] not in _CONTROL_KINDS)
    ):
        raise errors.BadTopic("not devices/<id>/up/<kind>")
    return parts[1], parts[3]


def _parse(index: int, msg: Inbound) -> _Parsed:
    device_id, kind = split_topic(msg.topic)
    if len(msg.payload) > MAX_PAYLOAD_BYTES:
        raise errors.Oversized(f"{len(msg.payload)} bytes")
    if kind == "kx":
        return _Parsed(index, device_id, kind, None)
    try:
        header = device_keys.parse_header(msg.payload)
    except CryptoUnsupported as exc:
        raise errors.UnsupportedVersion(str(exc)) from exc
    except CryptoMalformed as exc:
        raise errors.MalformedFrame(str(exc)) from exc
    return _Parsed(index, device_id, kind, header)


class Pipeline:
    """Runs the stages over batches; holds no state beyond its directory cache."""

    def __init__(self, directory: Directory, config: PipelineConfig, rand: Random) -> None:
        self.directory = directory
        self.config = config
        self._rand = rand
        self._nonce = NonceSequence(rand)
        self._rates = RateLimiter(config.rates)

    def process(self, batch: Sequence[Inbound], *, now_ms: int) -> Outcome:
        """Turn a batch of messages into accepted frames, rejects, key exchanges and wills."""
        outcome = Outcome()
        parsed: list[_Parsed] = []
        for index, msg in enumerate(batch):
            try:
                parsed.append(_parse(index, msg))
            except errors.Rejected as exc:
                outcome.rejects.append(_reject(index, msg, exc))
            except Exception as exc:  # same reasoning as _stage_guarded
                log.exception("telemetry.internal_error", stage="parse")
                outcome.rejects.append(
                    _reject(index, msg, errors.InternalError(type(exc).__name__))
                )
        self._prepare(parsed, batch, now_ms)
        for item in parsed:
            msg = batch[item.index]
            try:
                self._stage_guarded(item, msg, outcome, now_ms)
            except errors.Rejected as exc:
                header = item.header
                outcome.rejects.append(
                    Reject(
                        item.index,
                        item.device_id,
                        item.kind,
                        exc.code,
                        exc.detail,
                        len(msg.payload),
                        header.epoch if header else None,
                        header.counter if header else None,
                    )
                )
        return outcome

    def _stage_guarded(self, item: _Parsed, msg: Inbound, outcome: Outcome, now_ms: int) -> None:
        # A message that trips a bug must not take the worker down: redelivered after a
        # crash, it would do it again forever. It is quarantined with the exception's type.
        try:
            self._stage(item, msg, outcome, now_ms)
        except errors.Rejected:
            raise
        except Exception as exc:
            log.exception("telemetry.internal_error", device_id=item.device_id, kind=item.kind)
            raise errors.InternalError(type(exc).__name__) from exc

    def _prepare(self, parsed: list[_Parsed], batch: Sequence[Inbound], now_ms: int) -> None:
        epochs, cids, refresh = set(), set(), set()
        for p in parsed:
            if p.kind == "rekey" or (p.kind == "kx" and self._new_version(p, batch)):
                refresh.add(p.device_id)  # a rotation may have been staged since it was cached
            if p.header is None:
                continue
            if p.header.flags & Flags.WILL:
                cids.add((p.device_id, p.header.counter))
            else:
                epochs.add((p.device_id, p.header.epoch))
        self.directory.prepare(
            {p.device_id for p in parsed}, epochs, cids, now_ms=now_ms, refresh=refresh
        )

    def _new_version(self, item: _Parsed, batch: Sequence[Inbound]) -> bool:
        device = self.directory.device(item.device_id)
        try:
            version = device_keys.kx_request_version(batch[item.index].payload)
        except CryptoMalformed:
            return False
        return device is None or version != device.drk_version

    def _stage(self, item: _Parsed, msg: Inbound, outcome: Outcome, now_ms: int) -> None:
        device = self.directory.device(item.device_id)
        if device is None:
            if self.directory.is_revoked(item.device_id):
                raise errors.DeviceRevoked("")
            if self.directory.is_broken(item.device_id):
                raise errors.KeyUnavailable("device root key cannot be opened")
            raise errors.UnknownDevice("")
        if device.status is not DeviceStatus.ACTIVE:
            raise errors.DeviceRevoked("")
        if item.header is None or item.kind == "rekey":
            self._control(item, msg, device, outcome, now_ms)
        elif item.kind == "ota":
            outcome.ota.append(self._ota(item, item.header, msg, device, now_ms))
        elif item.header.flags & Flags.WILL:
            outcome.wills.append(self._will(item, msg, device, now_ms))
        else:
            frame = self._frame(item, item.header, msg, device, now_ms)
            window = self.directory.window(frame.device_id, frame.epoch)
            if window.check(frame.counter) is Freshness.SEEN:
                outcome.duplicates_seen.append(frame)
                return
            # After the duplicate check (a redelivery costs no token) and before the window
            # records the counter, so a rate-limited frame can be resent later and accepted.
            since = device.current_since
            backlog = since is not None and frame.ts_ms < since.timestamp() * 1000
            limit = self._rates.allow(
                frame.device_id, backlog=backlog, now_ms=now_ms, stamp_ms=frame.ts_ms
            )
            if limit is not None:
                raise errors.RateLimited(f"limit={limit.value}")
            window.record(frame.counter)
            outcome.accepted.append(frame)

    def _control(
        self, item: _Parsed, msg: Inbound, device: DeviceContext, outcome: Outcome, now_ms: int
    ) -> None:
        """A key exchange or a root-key proof; either may prove a pending root key."""
        until_ms = now_ms + self.config.drk_grace_ms
        if item.header is not None:
            plaintext = self._open_control(item, item.header, msg, device, now_ms)
            rotation = rekey.proven(device, plaintext, index=item.index, until_ms=until_ms)
        else:
            kx = self._key_exchange(item, msg, device, now_ms)
            outcome.key_exchanges.append(kx)
            version = kx.request.drk_version
            rotation = None
            if version != device.drk_version:  # MACed under the pending key's K_kx
                rotation = rekey.Rotation(
                    item.index, item.device_id, version - 1, version, until_ms
                )
        if rotation is not None:
            outcome.rotations.append(rotation)

    def _key_exchange(
        self, item: _Parsed, msg: Inbound, device: DeviceContext, now_ms: int
    ) -> KeyExchange:
        try:
            k_kx = rekey.kx_key_for(device, device_keys.kx_request_version(msg.payload))
            request = device_keys.decode_kx_request(k_kx, item.device_id, msg.payload)
        except (DecryptionFailed, CryptoMalformed, CryptoUnsupported) as exc:
            raise errors.KxInvalid("request does not authenticate") from exc
        if abs(now_ms - request.ts_ms) > MAX_KX_SKEW_MS:
            raise errors.KxReplay("timestamp outside the skew window")
        return KeyExchange(item.index, item.device_id, request, self._rand(16), k_kx)

    def _open_control(
        self, item: _Parsed, header: FrameHeader, msg: Inbound, device: DeviceContext, now_ms: int
    ) -> bytes:
        # A control frame (re-key proof, OTA progress): an ordinary uplink frame of a session,
        # not counted against the rate and not kept in the replay window; resending one is
        # harmless (the rotation commit is idempotent, the OTA state only moves forward).
        if header.flags & (Flags.DOWN | Flags.RANDOM_COUNTER | Flags.WILL):
            raise errors.MalformedFrame("downlink or will flags on a re-key proof")
        self._check_epoch(device, header.epoch, now_ms)
        keys = self._session(item, header, device, now_ms)
        return self._open(keys.up, header, msg, item.device_id)

    def _ota(
        self, item: _Parsed, header: FrameHeader, msg: Inbound, device: DeviceContext, now_ms: int
    ) -> ProgressReport:
        plaintext = self._open_control(item, header, msg, device, now_ms)
        return ota.parse_report(
            plaintext,
            index=item.index,
            device_id=item.device_id,
            epoch=header.epoch,
            now_ms=now_ms,
            limits=self.config.limits,
        )

    def _will(self, item: _Parsed, msg: Inbound, device: DeviceContext, now_ms: int) -> Will:
        header = item.header
        assert header is not None  # noqa: S101 - _stage only routes frames here
        if item.kind != "status":
            raise errors.BadTopic("will frames belong on the status topic")
        epoch = self.directory.epoch_of_cid(item.device_id, header.counter)
        if epoch is None:
            raise errors.UnknownEpoch("will of an unknown connection")
        # Fixed at CONNECT: under the previous root key if the device rotated since.
        for root in rekey.will_roots(device, now_ms=now_ms):
            try:
                self._open(device_keys.will_keys(root, item.device_id), header, msg, item.device_id)
            except errors.BadTag:
                continue
            return Will(item.index, item.device_id, epoch)
        raise errors.BadTag("")

    def _open(
        self, keys: device_keys.DirectionKeys, header: FrameHeader, msg: Inbound, device_id: str
    ) -> bytes:
        if header.sid != keys.sid:
            raise errors.KeyMismatch("")
        try:
            return device_keys.open_frame(
                keys, header, msg.payload, device_id=device_id, topic=msg.topic
            )
        except DecryptionFailed as exc:
            raise errors.BadTag("") from exc

    def _check_epoch(self, device: DeviceContext, epoch: int, now_ms: int) -> None:
        current = device.current_epoch
        if epoch == current:
            return
        if epoch > current or epoch <= 0:
            raise errors.UnknownEpoch(f"epoch {epoch}")
        since = device.current_since
        since_ms = int(since.timestamp() * 1000) if since is not None else 0
        if current - epoch > GRACE_EPOCHS or now_ms - since_ms > self.config.epoch_grace_ms:
            raise errors.StaleEpoch(f"epoch {epoch}, current {current}")

    def _frame(
        self, item: _Parsed, header: FrameHeader, msg: Inbound, device: DeviceContext, now_ms: int
    ) -> AcceptedFrame:
        if header.flags & (Flags.DOWN | Flags.RANDOM_COUNTER):
            raise errors.MalformedFrame("downlink flags on an uplink frame")
        self._check_epoch(device, header.epoch, now_ms)
        keys = self._session(item, header, device, now_ms)
        plaintext = self._open(keys.up, header, msg, item.device_id)
        kind = KINDS[item.kind]
        profile = _FIXED_PROFILES.get(kind, device.profile)
        report = validate(kind, profile, plaintext, now_ms=now_ms, limits=self.config.limits)
        return self._seal(report, header, item, device)

    def _session(
        self, item: _Parsed, header: FrameHeader, device: DeviceContext, now_ms: int
    ) -> device_keys.SessionKeys:
        session = self.directory.session(item.device_id, header.epoch)
        if session is None:
            if self.directory.root_gone(item.device_id, header.epoch):
                raise errors.DrkDestroyed(f"epoch {header.epoch}")
            raise errors.UnknownEpoch(f"epoch {header.epoch}")
        rekey.check_session_root(device, session[1].drk_version, now_ms=now_ms)
        return session[0]

    def _seal(
        self, report: Report, header: FrameHeader, item: _Parsed, device: DeviceContext
    ) -> AcceptedFrame:
        frame = AcceptedFrame(
            item.index,
            item.device_id,
            device.binding,
            header.epoch,
            header.counter,
            report.kind,
            report.ts_ms,
            [],
            [],
            {},
        )
        row = f"{item.device_id}:{header.epoch}:{header.counter}"
        for point, value in report.values:
            if point.name == "mac" and value != device.registered_mac:
                raise errors.MacMismatch("reported MAC differs from the registry")
            if point.key_class is not None:
                table = _table_of(report.kind, point.retention)
                context = FieldContext(table, point.name, row)
                cipher = device.ciphers.get(point.key_class)
                if cipher is None and point.key_class is KeyClass.HEALTH:
                    raise errors.NoHealthConsent("the owner has not consented")
                if cipher is None:
                    raise errors.KeyUnavailable(f"no active {point.key_class.name.lower()} key")
                stored = value
                if point.key_class is KeyClass.LOCATION and not device.precise_location:
                    stored = _coarse(point, value)
                blob = cipher.seal(msgpack.packb(stored), context, nonce=self._nonce())
                frame.sealed.append((point.retention, point.code, blob))
            elif report.kind is ReportKind.STATUS:
                frame.online = bool(value)
            elif report.kind is ReportKind.INFO:
                frame.rssi = int(value)
            else:
                frame.plain.append((point.code, _numeric(point, value)))
                frame.latest[point.name] = value
        if report.kind is ReportKind.INFO:
            frame.firmware = _firmware(report)
        return frame


def _coarse(point: DataPoint, value: Value) -> Value:
    """A position rounded to ``COARSE_POSITION_M`` (which room, not where in it).

    Stored unless the owner consented to precise positions (privacy policy: minimisation).
    """
    if isinstance(value, bool) or not isinstance(value, int):
        return value
    step: int = COARSE_POSITION_M * 10**point.scale
    return round(value / step) * step


def _numeric(point: DataPoint, value: Value) -> float:
    """The number a plain point is stored as: enum index, 0/1, or raw / 10**scale."""
    if isinstance(value, str):  # enums; other strings are always encrypted (profiles.py)
        return float(point.choices.index(value))
    return value / 10**point.scale if point.scale else float(value)


def _firmware(report: Report) -> str | None:
    # Firmware versions are not personal; they are kept in the clear in the device state
    # too, for fleet operations (OTA targeting) without a decryption grant.
    return next((str(v) for p, v in report.values if p.name == "fw"), None)


def _table_of(kind: ReportKind, retention: RetentionClass) -> str:
    if kind is ReportKind.INFO:
        return "device_info"
    return SEALED_TABLES[retention]


SEALED_TABLES: dict[RetentionClass, str] = {
    RetentionClass.HEALTH: "health_readings",
    RetentionClass.LOCATION: "location_readings",
    RetentionClass.MEDIA: "media_readings",
}


def _reject(index: int, msg: Inbound, exc: errors.Rejected) -> Reject:
    parts = msg.topic.split("/")
    device_id = parts[1] if len(parts) > 1 and is_device_id(parts[1]) else None
    kind = parts[3] if len(parts) == 4 and parts[3] in {*KINDS, *_CONTROL_KINDS} else "other"
    return Reject(index, device_id, kind, exc.code, exc.detail, len(msg.payload))


def utc_from_ms(ms: int) -> datetime:
    """Convert milliseconds since the epoch to an aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, UTC)
