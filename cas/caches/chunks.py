"""The local chunk cache: LMDB, size-capped, shared by every cas process on a machine.

Stored objects are cached as the compressed blobs the store returned, keyed
by id, and are verified again on every read like data from the store (a cache
is a hint, not a source of truth). Eviction is least-recently-used with a
coarse clock: reading an entry refreshes its access time only when that time
is more than an hour old, so a warm read costs no write
transaction.

LMDB gives multi-process safety (one writer at a time, readers never block)
and crash safety (copy-on-write pages; a killed process leaves the last
committed state). Every cache failure degrades to a miss: a broken cache
must never fail a `get`.

Writes are behind the reader: `put_many` hands verified blobs to one
background writer thread per cache and returns at once, so a synchronous
LMDB commit (an fsync) is never on a read's path. The writer commits
whatever is pending in one transaction (commits, not bytes, are the
expensive part), evicts, and applies access-time refreshes. Pending blobs
are answered by this process's reads as if committed, and are bounded
(`pending_bytes`): a writer that falls that far behind makes `put_many`
wait a moment, then drops the entries (a cache only loses entries).
`flush` waits for the pending writes; `close` flushes, so the next process
finds them.
"""

from __future__ import annotations

import atexit
import logging
import os
import struct
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import lmdb
import platformdirs

from cas.caches.lmdbenv import open_env
from cas.caches.writebehind import WriteBehind
from cas.errors import UsageError
from cas.ids import ObjectId
from cas.sizes import parse_size

DEFAULT_CACHE_SIZE: Final = 4 << 30
_TOUCH_INTERVAL_NS: Final = 3600 * 10**9
_META = struct.Struct(">QQ")  # access time (ns), blob size
_TOTAL_KEY: Final = b"total"
_EVICT_TO: Final = 0.9
DEFAULT_PENDING_BYTES: Final = 32 << 20
"""Blobs handed to the writer and not committed yet, at most (per cache object)."""
log = logging.getLogger("cas.caches.chunks")


def default_cache_dir() -> Path:
    """`$CAS_CACHE_DIR`, else `$XDG_CACHE_HOME/cas`."""
    env = os.environ.get("CAS_CACHE_DIR")
    if env:
        return Path(env)
    return Path(platformdirs.user_cache_dir("cas", appauthor=False))


def configured_cache_size() -> int:
    """`$CAS_CACHE_SIZE` (e.g. `10G`; `0` disables the cache), else 4 GiB."""
    env = os.environ.get("CAS_CACHE_SIZE")
    return parse_size(env, "CAS_CACHE_SIZE") if env else DEFAULT_CACHE_SIZE


@dataclass(frozen=True)
class CacheStats:
    """What `cas cache info` shows."""

    path: Path
    entries: int
    bytes: int
    capacity: int


class ChunkCache:
    """A size-capped LRU map from object id to stored blob."""

    def __init__(
        self,
        path: Path | None = None,
        capacity: int | None = None,
        *,
        pending_bytes: int = DEFAULT_PENDING_BYTES,
    ) -> None:
        self.path = (path or default_cache_dir()) / "chunks.lmdb"
        self.capacity = configured_cache_size() if capacity is None else capacity
        if self.capacity <= 0:
            raise UsageError("cache capacity must be positive (use no cache instead)")
        self._lock = threading.Lock()
        self._env = open_env(
            self.path, map_size=self._map_size(), max_dbs=4, sync=True, what="cache"
        )
        self._data = self._env.open_db(b"data")
        self._meta = self._env.open_db(b"meta")
        self._stats = self._env.open_db(b"stats")
        self._behind = WriteBehind(
            self._commit, self._apply_touches, pending_bytes, _TOUCH_INTERVAL_NS
        )
        _OPEN.add(self)

    @property
    def dropped(self) -> int:
        """Entries not cached because the writer was too far behind (or closed)."""
        return self._behind.dropped

    def _map_size(self) -> int:
        # Room for the cap, LMDB's page overhead and the copy-on-write slack.
        return max(self.capacity * 2, 64 << 20)

    def close(self) -> None:
        """Commit what is pending, stop the writer, close the environment."""
        if not self._behind.close():
            return
        _OPEN.discard(self)
        self._env.close()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every write handed over so far is committed (or dropped); False on timeout."""
        return self._behind.flush(timeout)

    # ------------------------------------------------------------ the writer

    def _commit(self, batch: list[tuple[bytes, tuple[bytes, int]]]) -> None:
        """Insert blobs in one transaction, evicting when over capacity; errors lose them."""
        for _attempt in range(3):
            try:
                with self._env.begin(write=True) as txn:
                    total = self._total(txn)
                    for key, (blob, stamp) in batch:
                        meta = txn.get(key, db=self._meta)
                        if meta is not None:  # cached already; a read since may have refreshed it
                            atime, size = _META.unpack(meta)
                            if stamp - atime > _TOUCH_INTERVAL_NS:
                                txn.put(key, _META.pack(stamp, size), db=self._meta)
                            continue
                        txn.put(key, blob, db=self._data)
                        txn.put(key, _META.pack(stamp, len(blob)), db=self._meta)
                        total += len(blob)
                    txn.put(_TOTAL_KEY, struct.pack(">Q", total), db=self._stats)
                if total > self.capacity:
                    self.evict_to(int(self.capacity * _EVICT_TO))
                return
            except lmdb.MapFullError:
                self.evict_to(int(self.capacity * 0.5))
            except lmdb.MapResizedError:
                self._env.set_mapsize(0)
            except lmdb.Error as exc:
                log.debug("chunk cache write lost: %s", exc)
                return

    def _apply_touches(self, touches: dict[bytes, tuple[int, int]]) -> None:
        try:
            with self._env.begin(write=True) as txn:
                for key, (now, size) in touches.items():
                    if txn.get(key, db=self._meta) is not None:  # no copy of the blob
                        txn.put(key, _META.pack(now, size), db=self._meta)
        except lmdb.Error:
            pass

    # ------------------------------------------------------------ reads

    def get(self, object_id: ObjectId) -> bytes | None:
        """The cached blob, or None. Callers verify it like any other read."""
        key = bytes(object_id)
        now = time.time_ns()
        pending = None if self._behind.idle else self._behind.blob(key, now)
        if pending is not None:
            return pending
        try:
            with self._env.begin(buffers=False) as txn:
                blob = txn.get(key, db=self._data)
                meta = txn.get(key, db=self._meta)
        except lmdb.MapResizedError:
            self._env.set_mapsize(0)
            return self.get(object_id)
        except lmdb.Error:
            return None
        if blob is None:
            return None
        if meta is not None:
            atime, _ = _META.unpack(meta)
            if now - atime > _TOUCH_INTERVAL_NS:
                self._touch(key, now, len(blob))
        return blob

    def get_many(self, ids: Iterable[ObjectId]) -> dict[ObjectId, bytes]:
        """The cached blobs among `ids`, read in one transaction."""
        found: dict[ObjectId, bytes] = {}
        stale: list[tuple[bytes, int]] = []
        now = time.time_ns()
        ids = list(ids)
        if not self._behind.idle:
            for object_id in ids:
                blob = self._behind.blob(bytes(object_id), now)
                if blob is not None:
                    found[object_id] = blob
        try:
            with self._env.begin(buffers=False) as txn:
                for object_id in ids:
                    if object_id in found:
                        continue
                    key = bytes(object_id)
                    blob = txn.get(key, db=self._data)
                    if blob is None:
                        continue
                    found[object_id] = blob
                    meta = txn.get(key, db=self._meta)
                    if meta is not None and now - _META.unpack(meta)[0] > _TOUCH_INTERVAL_NS:
                        stale.append((key, len(blob)))
        except lmdb.MapResizedError:
            self._env.set_mapsize(0)
            return self.get_many(ids)
        except lmdb.Error:
            return found
        for key, size in stale:
            self._touch(key, now, size)
        return found

    def has_many(self, ids: Iterable[ObjectId]) -> set[ObjectId]:
        """The ids among `ids` the cache holds or will (no data read; for planning)."""
        ids = list(ids)
        keys = self._behind.among(bytes(i) for i in ids)
        pending = {i for i in ids if bytes(i) in keys}
        try:
            with self._env.begin() as txn:
                return pending | {
                    i for i in ids if i not in pending and txn.get(bytes(i), db=self._meta)
                }
        except lmdb.MapResizedError:
            self._env.set_mapsize(0)
            return self.has_many(ids)
        except lmdb.Error:
            return set()

    def put_many(self, items: Iterable[tuple[ObjectId, bytes]]) -> None:
        """Hand verified blobs to the writer; returns before they are committed.

        Waits (a moment) only when the pending writes are at their bound;
        what still finds no room then is not cached.
        """
        batch = [(bytes(i), b) for i, b in items if len(b) <= self.capacity // 4]
        if batch:
            self._behind.add(batch, time.time_ns())

    def _touch(self, key: bytes, now: int, size: int) -> None:
        self._behind.touch(key, now, size)

    # ------------------------------------------------------------ writes

    def put(self, object_id: ObjectId, blob: bytes) -> None:
        """Insert a verified blob, evicting old entries when over capacity."""
        self.put_many([(object_id, blob)])

    def _total(self, txn: lmdb.Transaction) -> int:
        raw = txn.get(_TOTAL_KEY, db=self._stats)
        return struct.unpack(">Q", raw)[0] if raw else 0

    def discard(self, object_id: ObjectId) -> None:
        """Drop one entry (found damaged), keeping the byte count right."""
        key = bytes(object_id)
        self._behind.forget(key)
        try:
            with self._env.begin(write=True) as txn:
                meta = txn.get(key, db=self._meta)
                if meta is None:
                    return
                _, size = _META.unpack(meta)
                txn.delete(key, db=self._data)
                txn.delete(key, db=self._meta)
                total = max(0, self._total(txn) - size)
                txn.put(_TOTAL_KEY, struct.pack(">Q", total), db=self._stats)
        except lmdb.Error:
            pass

    def evict_to(self, target: int) -> int:
        """Drop least-recently-used entries until at most `target` bytes remain."""
        with self._lock:
            try:
                with self._env.begin(write=True) as txn:
                    total = self._total(txn)
                    if total <= target:
                        return 0
                    entries = []
                    with txn.cursor(db=self._meta) as cursor:
                        for key, value in cursor:
                            atime, size = _META.unpack(value)
                            entries.append((atime, size, bytes(key)))
                    entries.sort()
                    freed = 0
                    for _atime, size, key in entries:
                        if total - freed <= target:
                            break
                        txn.delete(key, db=self._data)
                        txn.delete(key, db=self._meta)
                        freed += size
                    txn.put(_TOTAL_KEY, struct.pack(">Q", total - freed), db=self._stats)
                    return freed
            except lmdb.MapResizedError:
                self._env.set_mapsize(0)
                return 0

    def clear(self) -> None:
        """Empty the cache."""
        self.flush()
        with self._env.begin(write=True) as txn:
            txn.drop(self._data, delete=False)
            txn.drop(self._meta, delete=False)
            txn.put(_TOTAL_KEY, struct.pack(">Q", 0), db=self._stats)

    def stats(self) -> CacheStats:
        """Entry count and bytes held (this process's pending writes committed first)."""
        self.flush()
        with self._env.begin() as txn:
            entries = txn.stat(self._meta)["entries"]
            return CacheStats(self.path, entries, self._total(txn), self.capacity)


_OPEN: weakref.WeakSet[ChunkCache] = weakref.WeakSet()
"""Caches not closed yet: their pending writes are committed at interpreter exit."""


@atexit.register
def _flush_open_caches() -> None:
    for cache in list(_OPEN):
        cache.flush(timeout=30)
