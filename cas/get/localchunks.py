"""Chunks that files on this machine already hold: the destination and seeds.

1. A local file is described by its chunk list under the manifest's chunking
   parameters: from the files cache when its stat is unchanged since it was
   last cut, else by reading and cutting it exactly as `put` does
   (`cas.put.filecut`), which also refreshes the files cache.
2. Only chunks the get still needs are indexed (id -> file, offset, length),
   so the index never outgrows the set of chunks to write.
3. Reading a chunk re-reads its bytes and checks them against the id. A file
   that changed since it was cut, a corrupt seed or a file that vanished is
   only a miss: the chunk is then fetched from the store, never written wrong.
"""

from __future__ import annotations

import asyncio
import os
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from cas.caches.files import CachedFile, FileIdentity, FilesCache
from cas.chunking import ChunkParams, FastCdcChunker
from cas.errors import SourceError
from cas.ids import ObjectId, hash_bytes
from cas.objects import ChunkRef
from cas.put.filecut import CutSettings, FileCutter
from cas.put.listing import SourceEntry

_CUT_CONCURRENCY: Final = max(1, os.cpu_count() or 1)
_READ_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class Origin(StrEnum):
    """Where a local chunk comes from."""

    DESTINATION = "destination"
    SEED = "seed"


@dataclass
class LocalFile:
    """A file whose bytes may be copied into the destination."""

    path: str
    origin: Origin
    doomed: bool = False
    """This get replaces or removes the file, so it must be pinned before that."""
    rel: str | None = None
    """Path relative to the destination root (destination files only)."""


@dataclass(frozen=True)
class Described:
    """A local file's chunk list and whole-file digest under the manifest's parameters."""

    chunks: tuple[ChunkRef, ...]
    digest: ObjectId


@dataclass(frozen=True)
class _Where:
    file: LocalFile
    offset: int
    length: int


class LocalChunks:
    """Index of needed chunks held by local files, and verified reads from them."""

    def __init__(self) -> None:
        self._index: dict[ObjectId, _Where] = {}
        self._lock = threading.Lock()
        self.chunks_read: dict[Origin, int] = dict.fromkeys(Origin, 0)
        self.bytes_read: dict[Origin, int] = dict.fromkeys(Origin, 0)
        self.misses = 0

    def __len__(self) -> int:
        return len(self._index)

    def add(self, file: LocalFile, chunks: Sequence[ChunkRef], wanted: set[ObjectId]) -> None:
        """Index the chunks of `file` that are in `wanted` and not yet indexed."""
        offset = 0
        for ref in chunks:
            if ref.id in wanted and ref.id not in self._index:
                self._index[ref.id] = _Where(file, offset, ref.length)
            offset += ref.length

    def origin(self, chunk_id: ObjectId) -> Origin | None:
        """Which kind of local source holds `chunk_id`, if any."""
        where = self._index.get(chunk_id)
        return where.file.origin if where else None

    def files(self) -> list[LocalFile]:
        """Every file at least one indexed chunk lives in."""
        return list({id(w.file): w.file for w in self._index.values()}.values())

    def read_many(self, ids: list[ObjectId]) -> dict[ObjectId, bytes]:
        """The verified bytes of those `ids` local files still hold (blocking)."""
        found = [(i, self._index.get(i)) for i in ids]
        wanted = [(i, where) for i, where in found if where is not None]
        wanted.sort(key=lambda item: (item[1].file.path, item[1].offset))
        out: dict[ObjectId, bytes] = {}
        fd, open_path = -1, None
        try:
            for chunk_id, where in wanted:
                if where.file.path != open_path:
                    if fd >= 0:
                        os.close(fd)
                    open_path = where.file.path
                    try:
                        fd = os.open(open_path, _READ_FLAGS)
                    except OSError:
                        fd = -1
                if fd < 0:
                    self._miss(chunk_id)
                    continue
                try:
                    data = os.pread(fd, where.length, where.offset)
                except OSError:
                    data = b""
                if len(data) != where.length or hash_bytes(data) != chunk_id:
                    self._miss(chunk_id)
                    continue
                out[chunk_id] = data
                with self._lock:
                    self.chunks_read[where.file.origin] += 1
                    self.bytes_read[where.file.origin] += len(data)
        finally:
            if fd >= 0:
                os.close(fd)
        return out

    def _miss(self, chunk_id: ObjectId) -> None:
        with self._lock:
            self._index.pop(chunk_id, None)
            self.misses += 1


class Describer:
    """Cuts local files into chunk lists with the manifest's parameters, via the files cache."""

    def __init__(self, params: ChunkParams, files_cache: FilesCache | None) -> None:
        self.params = params
        self.files_cache = files_cache
        self._settings = CutSettings(params, inline_max=0, mtimes=True)
        self._started_ns = time.time_ns()
        self._local = threading.local()
        self._remember: list[tuple[str, CachedFile]] = []
        self._lock = threading.Lock()
        self.files_cut = 0
        self.bytes_cut = 0

    def _cutter(self) -> FileCutter:
        cutter = getattr(self._local, "cutter", None)
        if cutter is None:
            cutter = FileCutter(self._settings, FastCdcChunker(self.params))
            self._local.cutter = cutter
        return cutter

    async def describe_many(
        self, items: Sequence[tuple[str, os.stat_result]]
    ) -> dict[str, Described]:
        """Chunk lists of regular files (path, lstat); unreadable ones are left out."""
        hits: dict[str, CachedFile] = {}
        if self.files_cache is not None and items:
            keyed = [(path, FileIdentity.of(st)) for path, st in items]
            hits = await asyncio.to_thread(self.files_cache.lookup_many, keyed)
        out = {path: Described(hit.chunks, hit.digest) for path, hit in hits.items()}
        with self._lock:
            self._remember.extend(hits.items())  # refreshes their age
        limit = asyncio.Semaphore(_CUT_CONCURRENCY)

        async def one(path: str, st: os.stat_result) -> None:
            async with limit:
                described = await asyncio.to_thread(self._cut, path, st)
            if described is not None:
                out[path] = described

        await asyncio.gather(*(one(p, st) for p, st in items if p not in hits))
        return out

    def _cut(self, path: str, st: os.stat_result) -> Described | None:
        child = SourceEntry(os.path.basename(path), path, path, st)
        try:
            cut = self._cutter().cut(child, lambda _id, _data: None)
        except SourceError:
            return None  # unreadable: simply not a source
        entry = cut.entry  # inline only when empty (inline_max=0): no chunks then
        remembered = cut.remembered(child)
        with self._lock:
            self.files_cut += 1
            self.bytes_cut += entry.size
            if remembered is not None:
                self._remember.append((path, remembered))
        return Described(entry.chunks, entry.digest)

    def record(self) -> None:
        """Remember the files just cut (except racy ones) for the next get or put."""
        if self.files_cache is not None and self._remember:
            self.files_cache.record_many(self._remember, self._started_ns)
            self._remember.clear()


def regular_files(root: str) -> Iterator[tuple[str, os.stat_result]]:
    """Every regular file under `root`, never following a symlink (for seeds)."""
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda d: d.name)
        except OSError:
            continue
        for dirent in entries:
            try:
                st = dirent.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(dirent.path)
            elif stat.S_ISREG(st.st_mode):
                yield dirent.path, st
