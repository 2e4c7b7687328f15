"""In-memory cache of device contexts and session keys for bridge workers (no I/O itself).

Workers keep no state a peer needs: everything here can be rebuilt from the database through
the ``DeviceSource`` the cache is given. Entries expire after a TTL so that revocations and key
exchanges handled by other workers are seen within ``ttl_ms``; the worker that handled a key
exchange updates its own entry at once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

from crypto.device_keys import SessionKeys, kx_key, session_keys
from crypto.errors import CryptoError
from crypto.keys import KekRing
from crypto.replay import ReplayWindow
from device_registry.model import DeviceContext, DeviceRecord, RootKey, open_record
from device_registry.sessions import SessionRecord

DEFAULT_TTL_MS = 2_000  # how stale a revocation or another worker's key exchange may be seen
DEFAULT_CAPACITY = 50_000  # devices kept; ~2 KB each with keys and ciphers


class DeviceSource(Protocol):
    """Where the cache loads from (the registry tables)."""

    def devices(self, device_ids: Collection[str]) -> Mapping[str, DeviceRecord]:
        """Load device records by id."""
        ...

    def sessions(
        self, keys: Collection[tuple[str, int]]
    ) -> Mapping[tuple[str, int], SessionRecord]:
        """Load sessions by (device id, epoch)."""
        ...

    def sessions_by_cid(
        self, keys: Collection[tuple[str, int]]
    ) -> Mapping[tuple[str, int], SessionRecord]:
        """Load sessions by (device id, connection id)."""
        ...


@dataclass(slots=True)
class _Entry:
    context: DeviceContext | None  # None: unknown or revoked-and-shredded
    loaded_ms: int


class Directory:
    """LRU cache of device contexts, session keys and per-session replay windows."""

    def __init__(
        self,
        source: DeviceSource,
        ring: KekRing,
        *,
        ttl_ms: int = DEFAULT_TTL_MS,
        capacity: int = DEFAULT_CAPACITY,
    ) -> None:
        self._source = source
        self._ring = ring
        self._ttl_ms = ttl_ms
        self._capacity = capacity
        self._devices: OrderedDict[str, _Entry] = OrderedDict()
        self._sessions: OrderedDict[tuple[str, int], tuple[SessionKeys, SessionRecord]] = (
            OrderedDict()
        )
        self._by_cid: dict[tuple[str, int], int] = {}
        self.windows: OrderedDict[tuple[str, int], ReplayWindow] = OrderedDict()
        self._broken: set[str] = set()
        self._root_gone: set[tuple[str, int]] = set()  # sessions whose root key is destroyed
        self._revoked: set[str] = set()
        self.hits = 0  # lookups answered from the cache, for the worker's metrics
        self.misses = 0  # lookups that went to the source

    def prepare(
        self,
        device_ids: Iterable[str],
        epochs: Iterable[tuple[str, int]],
        cids: Iterable[tuple[str, int]],
        *,
        now_ms: int,
        refresh: Iterable[str] = (),
    ) -> None:
        """Load whatever a batch needs that is missing or expired (or in *refresh*), in bulk."""
        ids, epoch_keys, cid_keys = set(device_ids), set(epochs), set(cids)
        stale = {
            d
            for d in ids
            if (e := self._devices.get(d)) is None or now_ms - e.loaded_ms > self._ttl_ms
        }
        stale.update(refresh)
        # A frame under an epoch newer than the cached one means another worker re-keyed it.
        stale.update(
            d
            for d, epoch in epoch_keys
            if (e := self._devices.get(d)) is not None
            and e.context is not None
            and epoch > e.context.current_epoch
        )
        self.misses += len(stale)
        self.hits += len(ids - stale)
        if stale:
            records = self._source.devices(stale)
            for device_id in stale:
                record = records.get(device_id)
                self._put_device(device_id, _Entry(self._open(record), now_ms))
        missing = {k for k in epoch_keys if k not in self._sessions}
        self.misses += len(missing)
        self.hits += len(epoch_keys) - len(missing)
        if missing:
            for key, session in self._source.sessions(missing).items():
                self._put_session(key, session)
        missing_cid = {k for k in cid_keys if k not in self._by_cid}
        self.misses += len(missing_cid)
        self.hits += len(cid_keys) - len(missing_cid)
        if missing_cid:
            for (device_id, cid), session in self._source.sessions_by_cid(missing_cid).items():
                self._by_cid[(device_id, cid)] = session.epoch
                self._put_session((device_id, session.epoch), session)

    def _open(self, record: DeviceRecord | None) -> DeviceContext | None:
        if record is None:
            return None
        if record.root_key_wrapped is None:  # revoked: the root key was destroyed
            self._revoked.add(record.device_id)
            return None
        try:
            context = open_record(record, self._ring)
        except (CryptoError, KeyError):  # damaged row, bad KEK version, or no network key
            self._broken.add(record.device_id)
            return None
        self._broken.discard(record.device_id)
        return context

    def is_revoked(self, device_id: str) -> bool:
        """Whether the device exists but was revoked (its root key is gone)."""
        return device_id in self._revoked

    def is_broken(self, device_id: str) -> bool:
        """Whether the device exists but its keys could not be opened."""
        return device_id in self._broken

    def device(self, device_id: str) -> DeviceContext | None:
        """A prepared device context (None when unknown or shredded)."""
        entry = self._devices.get(device_id)
        return entry.context if entry is not None else None

    def session(self, device_id: str, epoch: int) -> tuple[SessionKeys, SessionRecord] | None:
        """Keys and record of a prepared session."""
        return self._sessions.get((device_id, epoch))

    def root_gone(self, device_id: str, epoch: int) -> bool:
        """Whether a session exists whose root-key version is destroyed (or unknown here)."""
        return (device_id, epoch) in self._root_gone

    def rotated(self, device_id: str, *, until: datetime, now_ms: int) -> None:
        """Record a root-key rotation this worker just committed: pending becomes current."""
        entry = self._devices.get(device_id)
        if entry is None or entry.context is None:
            return
        context = entry.context
        pending = context.pending
        if pending is None or pending.key is None:  # not what was committed: load it again
            del self._devices[device_id]
            return
        previous = RootKey(context.drk_version, context.root_key, until)
        context = replace(
            context,
            drk_version=pending.version,
            root_key=pending.key,
            kx_key=kx_key(pending.key, device_id),
            previous=previous,
            pending=None,
        )
        self._put_device(device_id, _Entry(context, now_ms))

    def epoch_of_cid(self, device_id: str, cid: int) -> int | None:
        """Epoch of the session a connection id belongs to."""
        return self._by_cid.get((device_id, cid))

    def window(self, device_id: str, epoch: int) -> ReplayWindow:
        """The replay window of a session, created on first use."""
        key = (device_id, epoch)
        window = self.windows.get(key)
        if window is None:
            window = self.windows[key] = ReplayWindow()
            if len(self.windows) > self._capacity:
                self.windows.popitem(last=False)
        return window

    def rekeyed(self, record: SessionRecord, *, since: datetime, now_ms: int) -> None:
        """Record a key exchange this worker just committed."""
        entry = self._devices.get(record.device_id)
        self._by_cid[(record.device_id, record.cid)] = record.epoch
        self._put_session((record.device_id, record.epoch), record)
        if entry is None or entry.context is None:
            return
        if record.drk_version != entry.context.drk_version:
            # A rotation another worker committed first: this context is stale; reload it.
            entry.loaded_ms = -self._ttl_ms - 1
            return
        context = replace(entry.context, current_epoch=record.epoch, current_since=since)
        self._put_device(record.device_id, _Entry(context, now_ms))

    def _put_device(self, device_id: str, entry: _Entry) -> None:
        self._devices[device_id] = entry
        self._devices.move_to_end(device_id)
        if len(self._devices) > self._capacity:
            self._devices.popitem(last=False)

    def _put_session(self, key: tuple[str, int], record: SessionRecord) -> None:
        entry = self._devices.get(key[0])
        if entry is None or entry.context is None:
            return
        root = entry.context.root_of(record.drk_version)
        if root is None:
            if len(self._root_gone) >= self._capacity:
                self._root_gone.clear()
            self._root_gone.add(key)
            return
        keys = session_keys(
            root,
            key[0],
            epoch=key[1],
            device_nonce=record.device_nonce,
            server_nonce=record.server_nonce,
        )
        self._sessions[key] = (keys, record)
        if len(self._sessions) > self._capacity:
            self._sessions.popitem(last=False)
