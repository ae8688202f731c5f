"""Opening the LMDB environments behind the local caches, one way for both."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import lmdb

from cas.errors import UsageError


def open_env(path: Path, *, map_size: int, max_dbs: int, sync: bool, what: str) -> lmdb.Environment:
    """An LMDB environment shared by every cas process on the machine.

    `metasync=False` everywhere: a crash may roll back the last transaction
    but never corrupts the database. `sync=False` drops even the data sync,
    for caches whose newest entries may simply be lost.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        return lmdb.open(
            str(path),
            map_size=map_size,
            max_dbs=max_dbs,
            subdir=True,
            metasync=False,
            sync=sync,
            readahead=False,
            max_readers=512,
        )
    except (OSError, lmdb.Error) as exc:
        raise UsageError(f"cannot open the {what} at {path}: {exc}") from None


def put_all(
    env: lmdb.Environment, db: lmdb._Database, items: Iterable[tuple[bytes, bytes]]
) -> bool:
    """Write `items` in one transaction. False if the map is full (the caller empties it).

    Other LMDB errors lose the write silently: these are caches.
    """
    try:
        with env.begin(write=True) as txn:
            for key, value in items:
                txn.put(key, value, db=db)
    except lmdb.MapFullError:
        return False
    except lmdb.Error:
        pass
    return True


class StampedTable:
    """A cache table whose values carry a last-used time: written in batches, pruned daily."""

    def __init__(
        self,
        env: lmdb.Environment,
        name: bytes,
        stamp_of: Callable[[bytes], int | None],
        now_s: int,
    ) -> None:
        self.env = env
        self.db = env.open_db(name)
        self._meta = env.open_db(b"meta")
        self._marker = name + b"_pruned_at"
        self._stamp_of = stamp_of
        """The last-used time (s) a value records; None for a value that does not parse."""
        self._now_s = now_s

    def write(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Store `items` in one transaction; a full map is emptied (a cache may forget)."""
        if not put_all(self.env, self.db, items):
            self.clear()

    def prune(self, max_age_s: int) -> int:
        """Drop entries last used over `max_age_s` ago (or unreadable); at most once a day."""
        cutoff = self._now_s - max_age_s
        removed = 0
        try:
            with self.env.begin(write=True) as txn:
                last = txn.get(self._marker, db=self._meta)
                if last is not None and self._now_s - struct.unpack(">Q", last)[0] < 86400:
                    return 0
                with txn.cursor(db=self.db) as cursor:
                    for key, value in list(cursor):
                        stamp = self._stamp_of(value)
                        if stamp is None or stamp < cutoff:
                            txn.delete(key, db=self.db)
                            removed += 1
                txn.put(self._marker, struct.pack(">Q", self._now_s), db=self._meta)
        except lmdb.Error:
            return removed
        return removed

    def clear(self) -> None:
        """Forget every entry."""
        with self.env.begin(write=True) as txn:
            txn.drop(self.db, delete=False)
