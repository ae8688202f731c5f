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
import time
from dataclasses import dataclass, field
from typing import Final

from cas.browse import Located, stream_file, walk
from cas.errors import UsageError
from cas.fswrite import Destination, PendingFile
from cas.ids import ObjectId
from cas.objects import DirEntry, FileEntry, Manifest, SymlinkEntry
from cas.progress import NullProgress, Progress
from cas.repo import Repository

_FILE_CONCURRENCY: Final = 8
_SMALL_FILE: Final = 256 << 10


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

    async def get(self, manifest_id: ObjectId, dest: str | os.PathLike[str]) -> GetStats:
        """Restore the manifest into `dest` (created if missing)."""
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
        limit = asyncio.Semaphore(_FILE_CONCURRENCY)
        max_chunk = manifest.chunker.max_size

        async def one(located: Located) -> None:
            async with limit:
                await self._write_file(out, located, max_chunk)

        tasks = [asyncio.ensure_future(one(f)) for f in files]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _write_file(self, out: Destination, located: Located, max_chunk: int) -> None:
        entry = located.entry
        assert isinstance(entry, FileEntry)
        pending = await asyncio.to_thread(out.open_file, located.parts, entry.name)
        try:
            if entry.size <= _SMALL_FILE:
                # Small files: collect, then one thread hop for write + rename.
                collected: list[bytes] = []

                async def collect(data: bytes) -> None:
                    collected.append(data)

                await stream_file(self.repo, entry, max_chunk, collect, where=located.path)
                await asyncio.to_thread(_write_and_commit, pending, collected, entry)
            else:
                # Large files: later chunks are fetched while earlier ones are written.
                async def write(data: bytes) -> None:
                    await asyncio.to_thread(pending.write, data)
                    self.progress.advance(len(data))

                await stream_file(self.repo, entry, max_chunk, write, where=located.path)
                await asyncio.to_thread(pending.commit, entry.mode, entry.mtime_ns)
        except BaseException:
            await asyncio.to_thread(pending.abort)
            raise
        self.stats.files += 1
        self.stats.bytes_written += entry.size
        if entry.size <= _SMALL_FILE:
            self.progress.advance(entry.size)

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


def _write_and_commit(pending: PendingFile, parts: list[bytes], entry: FileEntry) -> None:
    for data in parts:
        pending.write(data)
    pending.commit(entry.mode, entry.mtime_ns)


async def get_manifest(
    repo: Repository,
    manifest_id: ObjectId,
    dest: str | os.PathLike[str],
    progress: Progress | None = None,
) -> GetStats:
    """Convenience wrapper: one `Downloader`, one get."""
    if not os.fspath(dest):
        raise UsageError("destination path is empty")
    return await Downloader(repo, progress).get(manifest_id, dest)
