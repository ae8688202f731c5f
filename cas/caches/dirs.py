"""The directories cache: skip rebuilding the trees of directories unchanged since a put.

The files cache spares reading large files, but a tree also holds its small
files inline, and rebuilding it means reading every one of them, encoding the
tree and asking the store about it. For a build directory of thousands of
small files that was most of an unchanged re-put.

So each directory put is also remembered, keyed by a fingerprint of its
listing: for every kept entry its name, type, mode, size, mtime_ns, ctime_ns
and inode (symlinks also their target; subdirectories only what their tree
entry records). The value is the tree id and totals that listing produced,
the subtree ids it named and the chunks its files named directly. A later
put whose listing has the same fingerprint reuses the tree without opening a
file, once

1. its subdirectories came out as the same trees (each checked the same way,
   bottom-up), and
2. the store still holds the tree and the chunks named directly (garbage
   collection may have removed them; subtrees are checked by their own
   entries). Otherwise the directory is put normally.

A directory is remembered only if none of its files is racy (see
`cas.caches.files`): a file changed within the same timestamp tick as its last
stat would keep its fingerprint. Entries are keyed by content, not path, so
they never go stale; entries unused for `MAX_AGE_S` are dropped.
"""

from __future__ import annotations

import os
import stat
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import blake3
import lmdb

from cas.caches.files import MAX_AGE_S, RACY_WINDOW_NS, FilesCache
from cas.caches.lmdbenv import StampedTable
from cas.ids import ID_BYTES, ObjectId
from cas.objects import Totals
from cas.put.filecut import CutSettings
from cas.put.listing import SourceEntry

_REFRESH_AFTER_S: Final = 24 * 3600
_HEADER = struct.Struct(f">Q{ID_BYTES}sQQQQQII")  # used_at, tree, totals x5, subtrees, chunks
_ID = struct.Struct(f"{ID_BYTES}s")
_FILE = struct.Struct(">cIQqqQ")  # type, mode, size, mtime, ctime, inode
_DIR = struct.Struct(">cIq")  # type, mode, mtime


@dataclass(frozen=True)
class CachedDir:
    """What one directory listing produced when it was last put."""

    tree_id: ObjectId
    totals: Totals
    subtrees: tuple[ObjectId, ...]
    """The tree ids of its subdirectories, in listing order."""
    chunks: tuple[ObjectId, ...]
    """The chunks its own files name (not those of subdirectories), once each."""
    used_at: int = 0


class DirsCache:
    """Listing fingerprint -> tree, in the files cache's LMDB environment."""

    def __init__(self, files: FilesCache, settings: CutSettings) -> None:
        self._env = files.env
        self._now_s = int(time.time())
        self._table = StampedTable(files.env, b"dirs", _stamp_of, self._now_s)
        self._db = self._table.db
        scope = f"{files.scope.hex()}\0{settings.inline_max}\0{settings.mtimes}".encode()
        self._scope = blake3.blake3(scope).digest()

    def fingerprint(self, children: Sequence[SourceEntry]) -> bytes:
        """The key of a directory whose kept entries are `children` (in listing order)."""
        hasher = blake3.blake3(self._scope)
        for child in children:
            st = child.st
            name = os.fsencode(child.name)
            hasher.update(len(name).to_bytes(4, "big") + name)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                hasher.update(_DIR.pack(b"d", mode, st.st_mtime_ns))
                continue
            kind = b"l" if child.link_target is not None else b"f"
            hasher.update(
                _FILE.pack(kind, mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
            )
            if child.link_target is not None:
                target = os.fsencode(child.link_target)
                hasher.update(len(target).to_bytes(4, "big") + target)
        return hasher.digest()

    def lookup(self, key: bytes) -> CachedDir | None:
        """The remembered result for this fingerprint; a damaged entry is no hit."""
        try:
            with self._env.begin(buffers=False) as txn:
                raw = txn.get(key, db=self._db)
        except lmdb.Error:
            return None
        return None if raw is None else _decode(raw)

    def needs_refresh(self, cached: CachedDir) -> bool:
        """Reused entries are re-stamped once a day, so pruning keeps them."""
        return self._now_s - cached.used_at > _REFRESH_AFTER_S

    def record_many(self, entries: Iterable[tuple[bytes, CachedDir]]) -> None:
        """Remember directories just put (callers leave out racy ones)."""
        batch = [(key, _encode(cached, self._now_s)) for key, cached in entries]
        if batch:
            self._table.write(batch)

    def prune(self, max_age_s: int = MAX_AGE_S) -> int:
        """Drop entries not used for `max_age_s`; at most once a day."""
        return self._table.prune(max_age_s)


def _stamp_of(value: bytes) -> int | None:
    return _HEADER.unpack_from(value)[0] if len(value) >= _HEADER.size else None


def recordable(children: Sequence[SourceEntry], started_ns: int) -> bool:
    """False if a file may change within its timestamp tick, unseen by its stat."""
    cutoff = started_ns - RACY_WINDOW_NS
    return all(
        max(c.st.st_mtime_ns, c.st.st_ctime_ns) < cutoff
        for c in children
        if not stat.S_ISDIR(c.st.st_mode)
    )


def _encode(cached: CachedDir, used_at: int) -> bytes:
    t = cached.totals
    header = _HEADER.pack(
        used_at,
        bytes(cached.tree_id),
        t.files,
        t.dirs,
        t.symlinks,
        t.bytes,
        t.chunks,
        len(cached.subtrees),
        len(cached.chunks),
    )
    return header + b"".join(bytes(i) for i in (*cached.subtrees, *cached.chunks))


def _decode(raw: bytes) -> CachedDir | None:
    if len(raw) < _HEADER.size:
        return None
    used_at, tree, files, dirs, links, size, chunks, n_sub, n_chunks = _HEADER.unpack_from(raw)
    if len(raw) != _HEADER.size + (n_sub + n_chunks) * ID_BYTES:
        return None
    ids = [ObjectId(raw_id) for (raw_id,) in _ID.iter_unpack(raw[_HEADER.size :])]
    return CachedDir(
        ObjectId(tree),
        Totals(files, dirs, links, size, chunks),
        tuple(ids[:n_sub]),
        tuple(ids[n_sub:]),
        used_at,
    )
