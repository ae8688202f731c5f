"""Opening the LMDB environments behind the local caches, one way for both."""

from __future__ import annotations

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
