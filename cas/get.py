"""The downward transfer engine: a manifest id in, a directory out.

1. Read the manifest and walk its trees (`cas.browse.walk`), verifying and
   validating every tree before anything is written: names, chunk sizes,
   depth. A hostile manifest fails here, with the destination untouched.
2. Create the directories (owner-writable for now).
3. Write files concurrently. Each chunk comes from the local cache when it
   holds it, else from the store; either way it is decompressed within the
   maximum chunk size and verified against its id (`Repository.get_chunk`),
   and each file's whole-content digest is checked before it is renamed into
   place (`cas.fswrite`).
4. Create symlinks, only now that no more file content will be written.
5. Set directory modes and mtimes, deepest first.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Final

from cas.batching import batch_by_size
from cas.browse import Located, check_digest, checked_length, walk
from cas.errors import UsageError
from cas.fswrite import Destination, PendingFile
from cas.ids import ObjectId, new_hasher
from cas.objects import ChunkRef, DirEntry, FileEntry, Manifest, SymlinkEntry
from cas.progress import NullProgress, Progress
from cas.repo import Repository

_UNIT_CONCURRENCY: Final = 4
_BATCH_BYTES: Final = 8 << 20
_BATCH_FILES: Final = 256


@dataclass
class GetStats:
    """What a get did, for its summary line and `--json`."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes_written: int = 0
    chunks_from_cache: int = 0
    chunks_from_store: int = 0
    bytes_from_cache: int = 0
    bytes_from_store: int = 0
    seconds: float = 0.0


@dataclass
class _Plan:
    dirs: list[Located] = field(default_factory=list)
    files: list[Located] = field(default_factory=list)
    symlinks: list[Located] = field(default_factory=list)


async def plan(repo: Repository, manifest: Manifest) -> _Plan:
    """Read and validate every tree first, so a bad manifest writes nothing."""
    result = _Plan()
    async for located in walk(repo, manifest):
        entry = located.entry
        if isinstance(entry, DirEntry):
            result.dirs.append(located)
        elif isinstance(entry, FileEntry):
            result.files.append(located)
        elif isinstance(entry, SymlinkEntry):
            result.symlinks.append(located)
    return result


class Downloader:
    """One get into one destination."""

    def __init__(self, repo: Repository, progress: Progress | None = None) -> None:
        self.repo = repo
        self.progress: Progress = progress or NullProgress()
        self.stats = GetStats()
        self._lock = threading.Lock()

    async def get(self, manifest_id: ObjectId, dest: str | os.PathLike[str]) -> GetStats:
        """Restore the manifest into `dest` (created if missing)."""
        if not os.fspath(dest):
            raise UsageError("destination path is empty")
        started = time.monotonic()
        manifest = await self.repo.get_manifest(manifest_id)
        todo = await plan(self.repo, manifest)
        self.progress.set_total(sum(f.entry.size for f in todo.files))  # type: ignore[union-attr]
        before_cache = (self.repo.chunks_from_cache, self.repo.bytes_from_cache)
        before_store = (self.repo.chunks_from_store, self.repo.bytes_from_store)
        with Destination(dest) as out:
            await asyncio.to_thread(self._make_dirs, out, todo.dirs)
            await self._write_files(out, manifest, todo.files)
            await asyncio.to_thread(self._make_links, out, todo.symlinks)
            await asyncio.to_thread(self._finish_dirs, out, todo.dirs)
        self.stats.chunks_from_cache = self.repo.chunks_from_cache - before_cache[0]
        self.stats.bytes_from_cache = self.repo.bytes_from_cache - before_cache[1]
        self.stats.chunks_from_store = self.repo.chunks_from_store - before_store[0]
        self.stats.bytes_from_store = self.repo.bytes_from_store - before_store[1]
        self.stats.seconds = time.monotonic() - started
        return self.stats

    def _make_dirs(self, out: Destination, dirs: list[Located]) -> None:
        for located in dirs:
            out.make_dir(located.parts, located.entry.name)
            self.stats.dirs += 1

    async def _write_files(
        self, out: Destination, manifest: Manifest, files: list[Located]
    ) -> None:
        limit = asyncio.Semaphore(_UNIT_CONCURRENCY)
        max_chunk = manifest.chunker.max_size

        async def one(unit: list[Located]) -> None:
            async with limit:
                if len(unit) == 1 and unit[0].entry.size > _BATCH_BYTES:  # type: ignore[union-attr]
                    await self._write_large(out, unit[0], max_chunk)
                else:
                    await self._write_batch(out, unit, max_chunk)

        tasks = [asyncio.ensure_future(one(unit)) for unit in _units(files)]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _write_batch(self, out: Destination, batch: list[Located], max_chunk: int) -> None:
        """Small files: fetch all their chunks, then write them all in one thread hop."""
        ids = [c.id for f in batch for c in f.entry.chunks]  # type: ignore[union-attr]
        chunks = await self.repo.get_chunks(ids, max_chunk) if ids else {}
        await asyncio.to_thread(self._write_batch_sync, out, batch, chunks)

    def _write_batch_sync(
        self, out: Destination, batch: list[Located], chunks: dict[ObjectId, bytes]
    ) -> None:
        for located in batch:
            entry = located.entry
            assert isinstance(entry, FileEntry)
            if entry.inline is not None:
                pieces: list[bytes] = [entry.inline]
            else:
                pieces = [
                    checked_length(chunks[c.id], c.length, located.path) for c in entry.chunks
                ]
            hasher = new_hasher()
            for piece in pieces:
                hasher.update(piece)
            check_digest(entry, hasher, located.path)
            pending = out.open_file(located.parts, entry.name)
            try:
                for piece in pieces:
                    pending.write(piece)
                pending.commit(entry.mode, entry.mtime_ns)
            except BaseException:
                pending.abort()
                raise
            self._count_file(entry.size)

    async def _write_large(self, out: Destination, located: Located, max_chunk: int) -> None:
        """A large file in segments: the next segment is fetched while this one is written."""
        entry = located.entry
        assert isinstance(entry, FileEntry)
        segments = _segments(entry)
        hasher = new_hasher()
        pending = await asyncio.to_thread(out.open_file, located.parts, entry.name)
        fetch = asyncio.ensure_future(self.repo.get_chunks([c.id for c in segments[0]], max_chunk))
        try:
            for index, segment in enumerate(segments):
                chunks = await fetch
                if index + 1 < len(segments):
                    ids = [c.id for c in segments[index + 1]]
                    fetch = asyncio.ensure_future(self.repo.get_chunks(ids, max_chunk))
                await asyncio.to_thread(
                    self._write_segment, pending, segment, chunks, hasher, located.path
                )
            check_digest(entry, hasher, located.path)
            await asyncio.to_thread(pending.commit, entry.mode, entry.mtime_ns)
        except BaseException:
            fetch.cancel()
            await asyncio.to_thread(pending.abort)
            raise
        self.stats.files += 1
        self.stats.bytes_written += entry.size

    def _write_segment(
        self,
        pending: PendingFile,
        segment: list[ChunkRef],
        chunks: dict[ObjectId, bytes],
        hasher: object,
        where: str,
    ) -> None:
        for ref in segment:
            data = checked_length(chunks[ref.id], ref.length, where)
            hasher.update(data)  # type: ignore[attr-defined]
            pending.write(data)
            self.progress.advance(len(data))

    def _count_file(self, size: int) -> None:
        with self._lock:
            self.stats.files += 1
            self.stats.bytes_written += size
        self.progress.advance(size)

    def _make_links(self, out: Destination, links: list[Located]) -> None:
        for located in links:
            entry = located.entry
            assert isinstance(entry, SymlinkEntry)
            out.symlink(located.parts, entry.name, entry.target, entry.mtime_ns)
            self.stats.symlinks += 1

    def _finish_dirs(self, out: Destination, dirs: list[Located]) -> None:
        for located in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
            entry = located.entry
            assert isinstance(entry, DirEntry)
            out.finish_dir((*located.parts, entry.name), entry.mode, entry.mtime_ns)


def _units(files: list[Located]) -> list[list[Located]]:
    """Batches of small files (in plan order, so mostly one directory each); large files alone."""
    return batch_by_size(
        files,
        lambda located: located.entry.size,  # type: ignore[union-attr]
        max_bytes=_BATCH_BYTES,
        max_items=_BATCH_FILES,
        alone_from=_BATCH_BYTES + 1,
    )


def _segments(entry: FileEntry) -> list[list[ChunkRef]]:
    segments: list[list[ChunkRef]] = [[]]
    size = 0
    for ref in entry.chunks:
        if segments[-1] and size + ref.length > _BATCH_BYTES:
            segments.append([])
            size = 0
        segments[-1].append(ref)
        size += ref.length
    return segments


async def get_manifest(
    repo: Repository,
    manifest_id: ObjectId,
    dest: str | os.PathLike[str],
    progress: Progress | None = None,
) -> GetStats:
    """Convenience wrapper: one `Downloader`, one get."""
    return await Downloader(repo, progress).get(manifest_id, dest)
