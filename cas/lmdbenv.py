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


def prune_daily(
    env: lmdb.Environment,
    db: lmdb._Database,
    meta: lmdb._Database,
    marker: bytes,
    now_s: int,
    cutoff_s: int,
    used_at: Callable[[bytes], int | None],
) -> int:
    """Drop entries last used before `cutoff_s` (or unreadable); at most once a day per `marker`."""
    removed = 0
    try:
        with env.begin(write=True) as txn:
            last = txn.get(marker, db=meta)
            if last is not None and now_s - struct.unpack(">Q", last)[0] < 86400:
                return 0
            with txn.cursor(db=db) as cursor:
                for key, value in list(cursor):
                    stamp = used_at(value)
                    if stamp is None or stamp < cutoff_s:
                        txn.delete(key, db=db)
                        removed += 1
            txn.put(marker, struct.pack(">Q", now_s), db=meta)
    except lmdb.Error:
        return removed
    return removed
