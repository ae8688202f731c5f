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

from cas.errors import UsageError
from cas.ids import ObjectId
from cas.lmdbenv import open_env
from cas.sizes import parse_size

DEFAULT_CACHE_SIZE: Final = 4 << 30
_TOUCH_INTERVAL_NS: Final = 3600 * 10**9
_META = struct.Struct(">QQ")  # access time (ns), blob size
_TOTAL_KEY: Final = b"total"
_EVICT_TO: Final = 0.9
DEFAULT_PENDING_BYTES: Final = 32 << 20
"""Blobs handed to the writer and not committed yet, at most (per cache object)."""
_FULL_WAIT_S: Final = 1.0
"""How long `put_many` waits for room among the pending writes before it drops entries."""
log = logging.getLogger("cas.cache")


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
        self._pending_max = pending_bytes
        self._cond = threading.Condition()
        self._pending: dict[bytes, tuple[bytes, int]] = {}
        """Blobs handed to the writer, not committed yet: key -> (blob, access time ns)."""
        self._pending_size = 0
        self._touches: dict[bytes, tuple[int, int]] = {}
        """Access-time refreshes for the writer: key -> (time ns, size)."""
        self._writing = False
        self._writer: threading.Thread | None = None
        self._closed = False
        self.dropped = 0
        """Entries not cached because the writer was too far behind (or closed)."""
        _OPEN.add(self)

    def _map_size(self) -> int:
        # Room for the cap, LMDB's page overhead and the copy-on-write slack.
        return max(self.capacity * 2, 64 << 20)

    def close(self) -> None:
        """Commit what is pending, stop the writer, close the environment."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
            writer = self._writer
        if writer is not None:
            writer.join()
        _OPEN.discard(self)
        self._env.close()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every write handed over so far is committed (or dropped); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending or self._touches or self._writing:
                if self._writer is None or not self._writer.is_alive():
                    self._start_writer()
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    # ------------------------------------------------------------ the writer

    def _start_writer(self) -> None:
        """Start the writer thread (called with `_cond` held)."""
        self._writer = threading.Thread(
            target=self._write_loop, name="cas-cache-writer", daemon=True
        )
        self._writer.start()

    def _write_loop(self) -> None:
        """Commit pending blobs and refreshes, one transaction per round, until closed."""
        while True:
            with self._cond:
                while not self._pending and not self._touches and not self._closed:
                    self._cond.wait()
                if not self._pending and not self._touches:
                    return  # closed and drained
                batch = list(self._pending.items())
                touches, self._touches = self._touches, {}
                self._writing = True
            try:
                if touches:
                    self._apply_touches(touches)
                if batch:
                    self._commit(batch)
            finally:
                with self._cond:
                    for key, item in batch:
                        if self._pending.get(key) is item:
                            del self._pending[key]
                            self._pending_size -= len(item[0])
                    self._writing = False
                    self._cond.notify_all()

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
                    if txn.get(key, db=self._data) is not None:
                        txn.put(key, _META.pack(now, size), db=self._meta)
        except lmdb.Error:
            pass

    def _pending_blob(self, key: bytes, now: int) -> bytes | None:
        """A pending blob (its access time refreshed like a committed entry's), or None."""
        with self._cond:
            item = self._pending.get(key)
            if item is None:
                return None
            blob, stamp = item
            if now - stamp > _TOUCH_INTERVAL_NS:
                self._pending[key] = (blob, now)
            return blob

    # ------------------------------------------------------------ reads

    def get(self, object_id: ObjectId) -> bytes | None:
        """The cached blob, or None. Callers verify it like any other read."""
        key = bytes(object_id)
        now = time.time_ns()
        pending = self._pending_blob(key, now) if self._pending else None
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
        if self._pending:
            for object_id in ids:
                blob = self._pending_blob(bytes(object_id), now)
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
        with self._cond:
            pending = {i for i in ids if bytes(i) in self._pending} if self._pending else set()
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

        Waits (at most `_FULL_WAIT_S`) only when the pending writes are at
        their bound; what still finds no room then is not cached.
        """
        now = time.time_ns()
        batch = [(bytes(i), b) for i, b in items if len(b) <= self.capacity // 4]
        if not batch:
            return
        deadline = None
        with self._cond:
            if not self._closed and (self._writer is None or not self._writer.is_alive()):
                self._start_writer()
            for key, blob in batch:
                if key in self._pending:
                    continue
                while self._pending_size + len(blob) > self._pending_max and self._pending:
                    if self._closed:
                        break
                    deadline = deadline or time.monotonic() + _FULL_WAIT_S
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.notify_all()
                    self._cond.wait(left)
                if self._closed or (
                    self._pending and self._pending_size + len(blob) > self._pending_max
                ):
                    self.dropped += 1
                    continue
                self._pending[key] = (blob, now)
                self._pending_size += len(blob)
            self._cond.notify_all()

    def _touch(self, key: bytes, now: int, size: int) -> None:
        """Refresh an entry's access time: by the writer, off the reader's path."""
        with self._cond:
            if self._closed:
                return
            self._touches[key] = (now, size)
            if self._writer is None or not self._writer.is_alive():
                self._start_writer()
            self._cond.notify_all()

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
        with self._cond:
            item = self._pending.pop(key, None)
            if item is not None:
                self._pending_size -= len(item[0])
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
