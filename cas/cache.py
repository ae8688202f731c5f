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
"""

from __future__ import annotations

import os
import struct
import threading
import time
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

    def __init__(self, path: Path | None = None, capacity: int | None = None) -> None:
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

    def _map_size(self) -> int:
        # Room for the cap, LMDB's page overhead and the copy-on-write slack.
        return max(self.capacity * 2, 64 << 20)

    def close(self) -> None:
        """Close the environment; other processes keep theirs."""
        self._env.close()

    # ------------------------------------------------------------ reads

    def get(self, object_id: ObjectId) -> bytes | None:
        """The cached blob, or None. Callers verify it like any other read."""
        key = bytes(object_id)
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
            now = time.time_ns()
            if now - atime > _TOUCH_INTERVAL_NS:
                self._touch(key, now, len(blob))
        return blob

    def get_many(self, ids: Iterable[ObjectId]) -> dict[ObjectId, bytes]:
        """The cached blobs among `ids`, read in one transaction."""
        found: dict[ObjectId, bytes] = {}
        stale: list[tuple[bytes, int]] = []
        now = time.time_ns()
        try:
            with self._env.begin(buffers=False) as txn:
                for object_id in ids:
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
            return {}
        for key, size in stale:
            self._touch(key, now, size)
        return found

    def has_many(self, ids: Iterable[ObjectId]) -> set[ObjectId]:
        """The ids among `ids` the cache holds (no data read; for planning)."""
        try:
            with self._env.begin() as txn:
                return {i for i in ids if txn.get(bytes(i), db=self._meta) is not None}
        except lmdb.MapResizedError:
            self._env.set_mapsize(0)
            return self.has_many(ids)
        except lmdb.Error:
            return set()

    def put_many(self, items: Iterable[tuple[ObjectId, bytes]]) -> None:
        """Insert verified blobs in one transaction (commits are the expensive part)."""
        batch = [(bytes(i), b) for i, b in items if len(b) <= self.capacity // 4]
        if not batch:
            return
        for _attempt in range(3):
            try:
                with self._env.begin(write=True) as txn:
                    total = self._total(txn)
                    now = time.time_ns()
                    for key, blob in batch:
                        if txn.get(key, db=self._meta) is not None:
                            continue
                        txn.put(key, blob, db=self._data)
                        txn.put(key, _META.pack(now, len(blob)), db=self._meta)
                        total += len(blob)
                    txn.put(_TOTAL_KEY, struct.pack(">Q", total), db=self._stats)
                if total > self.capacity:
                    self.evict_to(int(self.capacity * _EVICT_TO))
                return
            except lmdb.MapFullError:
                self.evict_to(int(self.capacity * 0.5))
            except lmdb.MapResizedError:
                self._env.set_mapsize(0)
            except lmdb.Error:
                return

    def _touch(self, key: bytes, now: int, size: int) -> None:
        try:
            with self._env.begin(write=True) as txn:
                if txn.get(key, db=self._data) is not None:
                    txn.put(key, _META.pack(now, size), db=self._meta)
        except lmdb.Error:
            pass

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
        with self._env.begin(write=True) as txn:
            txn.drop(self._data, delete=False)
            txn.drop(self._meta, delete=False)
            txn.put(_TOTAL_KEY, struct.pack(">Q", 0), db=self._stats)

    def stats(self) -> CacheStats:
        """Entry count and bytes held."""
        with self._env.begin() as txn:
            entries = txn.stat(self._meta)["entries"]
            return CacheStats(self.path, entries, self._total(txn), self.capacity)
