"""A set of object ids on disk, for sets too large for memory.

Garbage collection must remember every reachable chunk of a store that may
hold millions; a Python set of 32-byte ids costs about 100 bytes each. An
LMDB database in a temporary directory keeps the memory flat (the page cache
holds what fits) and gives sorted, batched inserts and cheap lookups.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import lmdb

from cas.caches.chunks import default_cache_dir
from cas.caches.lmdbenv import open_env
from cas.ids import ObjectId

_MAP_SIZE: Final = 1 << 36  # address space only; the file grows with what is stored


class IdSet:
    """Named on-disk sets of ids in one temporary LMDB environment; delete on `close`."""

    def __init__(self, names: Iterable[str], directory: Path | None = None) -> None:
        # Next to the caches (on disk), not in /tmp, which may be a RAM file system.
        parent = directory or default_cache_dir()
        parent.mkdir(parents=True, exist_ok=True)
        self._dir = Path(tempfile.mkdtemp(prefix="ids-", dir=parent))
        self._env = open_env(self._dir, map_size=_MAP_SIZE, max_dbs=8, sync=False, what="id set")
        self._dbs = {name: self._env.open_db(name.encode()) for name in names}

    def add_many(self, name: str, ids: Iterable[ObjectId]) -> int:
        """Add ids; return how many were new."""
        db = self._dbs[name]
        added = 0
        with self._env.begin(write=True, db=db) as txn:
            for object_id in sorted(ids):
                if txn.put(bytes(object_id), b"", overwrite=False):
                    added += 1
        return added

    def new_of(self, name: str, ids: Iterable[ObjectId]) -> list[ObjectId]:
        """Add ids and return those that were not there yet, in the given order."""
        db = self._dbs[name]
        fresh = []
        with self._env.begin(write=True, db=db) as txn:
            for object_id in ids:
                if txn.put(bytes(object_id), b"", overwrite=False):
                    fresh.append(object_id)
        return fresh

    def contains_many(self, name: str, ids: Iterable[ObjectId]) -> list[bool]:
        """Membership of each id, in order, in one read transaction."""
        db = self._dbs[name]
        with self._env.begin(db=db, buffers=True) as txn:
            return [txn.get(bytes(i)) is not None for i in ids]

    def count(self, name: str) -> int:
        """How many ids the named set holds."""
        with self._env.begin() as txn:
            return int(txn.stat(self._dbs[name])["entries"])

    def close(self) -> None:
        """Drop the sets and their files."""
        with contextlib.suppress(lmdb.Error):
            self._env.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> IdSet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
