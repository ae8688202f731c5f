"""Writing the files of a get: chunks fetched, verified, written, renamed into place.

Step 5 of `cas.get.downloader`. Small files go in batches (their chunks
fetched together, written in one thread hop); a large file goes in 8 MiB
segments, several fetched and written at their offsets at once, its
whole-content digest fed in order. Every file is written to a temporary
name and checked before it is renamed (`cas.get.fswrite`).
"""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass, field
from typing import Final

from cas.aiotools import gather_or_cancel
from cas.batching import batch_by_size
from cas.get.browse import Located, check_digest, checked_length
from cas.get.fswrite import Destination, PendingFile
from cas.get.localchunks import LocalChunks
from cas.ids import ObjectId, new_hasher
from cas.objects import ChunkRef, FileEntry, Manifest
from cas.progress import Progress
from cas.repo import Repository

_UNIT_CONCURRENCY: Final = 4
_BATCH_BYTES: Final = 8 << 20
_BATCH_FILES: Final = 256
_SEGMENT_WINDOW: Final = 4


@dataclass
class Written:
    """What the writer did: files and bytes, and each file's stat right after its rename."""

    files: int = 0
    bytes: int = 0
    stats: list[tuple[str, os.stat_result, FileEntry]] = field(default_factory=list)


class FileWriter:
    """Writes planned files into one destination, taking chunks from `local` first."""

    def __init__(
        self, repo: Repository, progress: Progress, local: LocalChunks, out: Destination
    ) -> None:
        self.repo = repo
        self.progress = progress
        self.local = local
        self.out = out
        self.done = Written()
        self._lock = threading.Lock()

    async def write(self, manifest: Manifest, files: list[Located]) -> Written:
        """Write `files`; what was written, also when this raises part way."""
        await self._write_files(self.out, manifest, files)
        return self.done

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

        await gather_or_cancel(one(unit) for unit in _units(files))

    async def _chunks(self, ids: list[ObjectId], max_chunk: int) -> dict[ObjectId, bytes]:
        reader = self.local.read_many if len(self.local) else None
        return await self.repo.get_chunks(ids, max_chunk, reader)

    async def _write_batch(self, out: Destination, batch: list[Located], max_chunk: int) -> None:
        """Small files: fetch all their chunks, then write them all in one thread hop."""
        ids = [c.id for f in batch for c in f.entry.chunks]  # type: ignore[union-attr]
        chunks = await self._chunks(ids, max_chunk) if ids else {}
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
            self._note_written(located, pending.final_stat)
            self._count_file(entry.size)

    async def _write_large(self, out: Destination, located: Located, max_chunk: int) -> None:
        """A large file in 8 MiB segments, several fetched and written at their offsets at once.

        Up to `_SEGMENT_WINDOW` segments are in flight (fetch, verify, `pwrite`), so
        decompression and verification of one file use every core; the whole-file
        digest is fed in order as segments finish, which bounds memory to the window.
        """
        entry = located.entry
        assert isinstance(entry, FileEntry)
        segments = _segments(entry)
        offsets = [0]
        for segment in segments[:-1]:
            offsets.append(offsets[-1] + sum(ref.length for ref in segment))
        hasher = new_hasher()
        pending = await asyncio.to_thread(out.open_file, located.parts, entry.name)
        inflight: dict[int, asyncio.Future[list[bytes]]] = {}

        def start(index: int) -> None:
            inflight[index] = asyncio.ensure_future(
                self._fetch_segment(pending, segments[index], offsets[index], max_chunk, located)
            )

        try:
            await asyncio.to_thread(pending.truncate, entry.size)
            for index in range(min(_SEGMENT_WINDOW, len(segments))):
                start(index)
            for index in range(len(segments)):
                pieces = await inflight.pop(index)
                if index + _SEGMENT_WINDOW < len(segments):
                    start(index + _SEGMENT_WINDOW)
                await asyncio.to_thread(_feed, hasher, pieces)
            check_digest(entry, hasher, located.path)
            await asyncio.to_thread(pending.commit, entry.mode, entry.mtime_ns)
            self._note_written(located, pending.final_stat)
        except BaseException:
            for task in inflight.values():
                task.cancel()
            await asyncio.gather(*inflight.values(), return_exceptions=True)
            await asyncio.to_thread(pending.abort)
            raise
        with self._lock:
            self.done.files += 1
            self.done.bytes += entry.size
        self.progress.advance(0, files=1)

    async def _fetch_segment(
        self,
        pending: PendingFile,
        segment: list[ChunkRef],
        offset: int,
        max_chunk: int,
        located: Located,
    ) -> list[bytes]:
        chunks = await self._chunks([ref.id for ref in segment], max_chunk)
        pieces = [checked_length(chunks[ref.id], ref.length, located.path) for ref in segment]
        await asyncio.to_thread(pending.write_at, pieces, offset)
        self.progress.advance(sum(map(len, pieces)))
        return pieces

    def _count_file(self, size: int) -> None:
        with self._lock:
            self.done.files += 1
            self.done.bytes += size
        self.progress.advance(size, files=1)

    def _note_written(self, located: Located, final_stat: os.stat_result | None) -> None:
        entry = located.entry
        if final_stat is not None and isinstance(entry, FileEntry) and entry.chunks:
            self.done.stats.append((located.path, final_stat, entry))


def _feed(hasher: object, pieces: list[bytes]) -> None:
    for piece in pieces:
        hasher.update(piece)  # type: ignore[attr-defined]


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
