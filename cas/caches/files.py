"""The files cache: skip reading files that have not changed since the last put.

For each file put into a store, the cache remembers its `lstat` identity
(size, mtime_ns, ctime_ns, inode) and the chunk list that put computed. A
later put of the same path into the same store, with the same chunking
parameters, reuses the chunk list when the identity still matches, without
opening the file.

Two rules keep it honest:

1. **Racy entries are never recorded** (the rule borg and git use): a file
   whose mtime or ctime is within `RACY_WINDOW_NS` of the moment the put
   started could be changed again within the same timestamp tick without
   its stat changing, so it is read again next time.
2. **Reused chunks are still checked**: the put asks the store whether the
   chunks exist (garbage collection may have removed them); if any is
   missing the file is read and stored normally.

Changing content and then restoring the mtime (`touch -d`) still changes the
ctime, which the kernel sets and no user can, so such files are read again.
Entries unused for `MAX_AGE_S` are dropped when the cache is opened for a put.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import blake3
import lmdb

from cas.caches.lmdbenv import StampedTable, open_env, put_all
from cas.chunking import ChunkParams
from cas.ids import ID_BYTES, ObjectId
from cas.objects import ChunkRef

if TYPE_CHECKING:
    from cas.put.listing import SourceEntry

RACY_WINDOW_NS: Final = 2 * 10**9
MAX_AGE_S: Final = 30 * 24 * 3600
_REFRESH_AFTER_S: Final = 24 * 3600
_MAP_SIZE: Final = 2 << 30
_HEADER = struct.Struct(">QqqQQ32sI")  # size, mtime, ctime, inode, used_at, digest, n
_CHUNK = struct.Struct(f">{ID_BYTES}sI")


@dataclass(frozen=True)
class FileIdentity:
    """What must be unchanged for a file's chunk list to be reused."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        """From an `lstat` result."""
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


@dataclass(frozen=True)
class CachedFile:
    """A remembered file: its identity, whole-file digest and chunks."""

    identity: FileIdentity
    digest: ObjectId
    chunks: tuple[ChunkRef, ...]
    used_at: int = 0


class FilesCache:
    """Path -> chunk list, per store and chunking parameters, in LMDB."""

    def __init__(self, directory: Path, store_url: str, params: ChunkParams) -> None:
        self.directory = directory
        path = directory / "files.lmdb"
        # A cache: a crash may lose the newest entries, nothing worse.
        self._env = open_env(path, map_size=_MAP_SIZE, max_dbs=8, sync=False, what="files cache")
        self._now_s = int(time.time())
        self._table = StampedTable(self._env, b"files", _stamp_of, self._now_s)
        self._db = self._table.db
        scope = f"{store_url}\0{sorted(params.to_dict().items())}".encode()
        self._scope = blake3.blake3(scope).digest()

    @property
    def env(self) -> lmdb.Environment:
        """The LMDB environment, shared with the directories cache."""
        return self._env

    @property
    def scope(self) -> bytes:
        """Digest of the store and chunking parameters every entry belongs to."""
        return self._scope

    def table(self, name: bytes) -> lmdb._Database:
        """Another named table in the same environment."""
        return self._env.open_db(name)

    def close(self) -> None:
        """Close this handle; other processes keep theirs."""
        self._env.close()

    def _key(self, path: str) -> bytes:
        return blake3.blake3(self._scope + b"\0" + os.fsencode(os.path.abspath(path))).digest()

    def lookup_many(self, items: Sequence[tuple[str, FileIdentity]]) -> dict[str, CachedFile]:
        """Entries whose identity still matches, keyed by path; one read transaction."""
        found: dict[str, CachedFile] = {}
        try:
            with self._env.begin(buffers=False) as txn:
                for path, identity in items:
                    raw = txn.get(self._key(path), db=self._db)
                    if raw is None:
                        continue
                    cached = _decode(raw)
                    if cached is not None and cached.identity == identity:
                        found[path] = cached
        except lmdb.Error:
            return {}
        return found

    def record_many(self, entries: Iterable[tuple[str, CachedFile]], started_ns: int) -> None:
        """Remember files just put, except racy ones; also refreshes reused entries."""
        batch = [
            (self._key(path), _encode(cached, self._now_s))
            for path, cached in entries
            if not _is_racy(cached.identity, started_ns)
            and self._now_s - cached.used_at > _REFRESH_AFTER_S  # unchanged entries: daily
        ]
        if batch:
            self._table.write(batch)

    def prune(self, max_age_s: int = MAX_AGE_S) -> int:
        """Drop entries not used for `max_age_s`; at most once a day."""
        return self._table.prune(max_age_s)


def _stamp_of(value: bytes) -> int | None:
    return _HEADER.unpack_from(value)[4] if len(value) >= _HEADER.size else None


def _is_racy(identity: FileIdentity, started_ns: int) -> bool:
    return max(identity.mtime_ns, identity.ctime_ns) >= started_ns - RACY_WINDOW_NS


def _encode(cached: CachedFile, used_at: int) -> bytes:
    ident = cached.identity
    parts = [
        _HEADER.pack(
            ident.size,
            ident.mtime_ns,
            ident.ctime_ns,
            ident.inode,
            used_at,
            bytes(cached.digest),
            len(cached.chunks),
        )
    ]
    parts.extend(_CHUNK.pack(bytes(c.id), c.length) for c in cached.chunks)
    return b"".join(parts)


def _decode(raw: bytes) -> CachedFile | None:
    """Parse an entry; a damaged one is simply not a hit."""
    if len(raw) < _HEADER.size:
        return None
    size, mtime, ctime, inode, _used, digest, count = _HEADER.unpack_from(raw)
    if len(raw) != _HEADER.size + count * _CHUNK.size:
        return None
    chunks = tuple(
        ChunkRef(ObjectId(raw_id), length)
        for raw_id, length in _CHUNK.iter_unpack(raw[_HEADER.size :])
    )
    if sum(c.length for c in chunks) != size or any(c.length <= 0 for c in chunks):
        return None
    return CachedFile(FileIdentity(size, mtime, ctime, inode), ObjectId(digest), chunks, _used)


def reusable_candidates(
    cache: FilesCache, files: Sequence[SourceEntry], inline_max: int
) -> dict[str, CachedFile]:
    """Remembered files of `files` whose stat is unchanged (their chunks still need a check)."""
    items = [(f.path, FileIdentity.of(f.st)) for f in files if f.st.st_size > inline_max]
    return cache.lookup_many(items) if items else {}


def chunk_ids(cached: dict[str, CachedFile]) -> list[ObjectId]:
    """Every chunk the remembered files name, once each."""
    return list(dict.fromkeys(ref.id for hit in cached.values() for ref in hit.chunks))


def still_stored(cached: dict[str, CachedFile], absent: set[ObjectId]) -> dict[str, CachedFile]:
    """The remembered files none of whose chunks the store lacks."""
    return {
        path: hit for path, hit in cached.items() if not any(r.id in absent for r in hit.chunks)
    }


class _IdTable:
    """A table of the files cache's environment holding one manifest id per key.

    A hint only: a read that fails or finds no well-formed id is no answer,
    a write that fails loses the hint.
    """

    def __init__(self, files: FilesCache, name: bytes) -> None:
        self._env = files.env
        self._db = files.table(name)

    def get(self, key: bytes) -> ObjectId | None:
        """The id stored under `key`, if one."""
        try:
            with self._env.begin() as txn:
                raw = txn.get(key, db=self._db)
        except lmdb.Error:
            return None
        return ObjectId(bytes(raw)) if raw is not None and len(raw) == ID_BYTES else None

    def put(self, key: bytes, object_id: ObjectId) -> None:
        """Store `object_id` under `key`."""
        put_all(self._env, self._db, [(key, bytes(object_id))])

    def delete(self, key: bytes) -> None:
        """Forget `key`; absent is fine."""
        try:
            with self._env.begin(write=True) as txn:
                txn.delete(key, db=self._db)
        except lmdb.Error:
            pass


class LastPuts:
    """The manifest each source directory was last put as, per store: a put's default parent.

    A later put of the same directory reuses what that manifest's index
    locates instead of uploading it again.
    """

    def __init__(self, files: FilesCache) -> None:
        self._files = files
        self._table = _IdTable(files, b"parents")

    def _key(self, source: str) -> bytes:
        scope = self._files.scope + b"\0" + os.fsencode(os.path.abspath(source))
        return blake3.blake3(scope).digest()

    def get(self, source: str) -> ObjectId | None:
        """The manifest last put from `source`, if remembered."""
        return self._table.get(self._key(source))

    def remember(self, source: str, manifest_id: ObjectId) -> None:
        """Record a completed put (a cache: failures only lose the hint)."""
        self._table.put(self._key(source), manifest_id)


class UnsettledRefs:
    """Refs a put created but did not live to finish with: what its re-run completes.

    A put names its manifest before it settles against collections, so a
    put killed in between (a cancelled CI job) leaves a ref to a manifest it
    never saw through. Noted here before the ref is created and forgotten
    when the put ends; the re-run of the same source with the same ref then
    completes that manifest instead of failing on a name that is its own.
    """

    def __init__(self, files: FilesCache) -> None:
        self._files = files
        self._table = _IdTable(files, b"unsettled")

    def _key(self, source: str, ref: str) -> bytes:
        path = os.fsencode(os.path.abspath(source))
        name = ref.encode("utf-8", "surrogatepass")
        return blake3.blake3(self._files.scope + b"\0" + path + b"\0" + name).digest()

    def get(self, source: str, ref: str) -> ObjectId | None:
        """The manifest an unfinished put of `source` named `ref`, if any."""
        return self._table.get(self._key(source, ref))

    def note(self, source: str, ref: str, manifest_id: ObjectId) -> None:
        """Before the ref is created (a cache: failures only lose the hint)."""
        self._table.put(self._key(source, ref), manifest_id)

    def clear(self, source: str, ref: str) -> None:
        """The put that created the ref finished."""
        self._table.delete(self._key(source, ref))


class PutJournal:
    """Packs an unfinished put of a source directory has stored: what its re-run reuses.

    A pack is not named by any index until its put writes one at the end, so
    a put that dies leaves packs nothing points at. Each pack's trailer is
    noted here after its upload; the next put of the same source into the
    same store adopts the packs the store still holds (`PackWriter.adopt`)
    and uploads only the rest. A completed put clears its journal.
    """

    def __init__(self, files: FilesCache, source: str) -> None:
        self._files = files
        self._db = files.table(b"journal")
        scope = files.scope + b"\0" + os.fsencode(os.path.abspath(source))
        self._prefix = blake3.blake3(scope).digest()

    def note(self, pack_id: ObjectId, trailer: bytes) -> None:
        """Remember one stored pack (a cache: failures only lose the hint)."""
        put_all(self._files.env, self._db, [(self._prefix + bytes(pack_id), trailer)])

    def packs(self) -> dict[ObjectId, bytes]:
        """Pack id -> trailer of every pack noted since the last completed put."""
        found: dict[ObjectId, bytes] = {}
        try:
            with self._files.env.begin() as txn:
                cursor = txn.cursor(db=self._db)
                if cursor.set_range(self._prefix):
                    for key, value in cursor:
                        if not key.startswith(self._prefix):
                            break
                        found[ObjectId(key[len(self._prefix) :])] = bytes(value)
        except lmdb.Error:
            return {}
        return found

    def clear(self) -> None:
        """Forget the noted packs (the put that used them completed)."""
        try:
            with self._files.env.begin(write=True) as txn:
                cursor = txn.cursor(db=self._db)
                while cursor.set_range(self._prefix) and cursor.key().startswith(self._prefix):
                    cursor.delete()
        except lmdb.Error:
            pass
