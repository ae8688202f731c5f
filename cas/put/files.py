"""Put's file stage: batches of files in, tree entries out, new chunks packed.

A batch runs in one reader thread from start to end: files the files cache
remembers unchanged are described without a read; the others are read,
cut by FastCDC and named by BLAKE3; chunks no other batch and no parent
holds are compressed right there and handed to the put's one pack writer
in one step. FastCDC, BLAKE3 and zstd all release the interpreter lock, so
reader threads use every core, and a batch costs two thread hops whatever
its number of files and chunks. Only a large file sends its chunks to a
compression pool, so that one big file still uses every core.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Final

from cas.caches.files import (
    CachedFile,
    FilesCache,
    chunk_ids,
    reusable_candidates,
    still_stored,
)
from cas.chunking import Chunker
from cas.errors import CasError
from cas.ids import ObjectId
from cas.objects import FileEntry
from cas.pack import ObjectKind, encode_frames
from cas.progress import Progress
from cas.put import worker as putworker
from cas.put.filecut import (
    CutSettings,
    Described,
    FileCutter,
    OpenedAhead,
    cut_all,
    entry_from_cache,
)
from cas.put.listing import SourceEntry
from cas.put.packwriter import PackWriter

COMPRESS_IN_POOL_FROM: Final = 32 << 20
"""Files this large send their chunks to the compression pool (one file, every core)."""
GROUP_BYTES: Final = 8 << 20
GROUP_CHUNKS: Final = 64
_GROUPS_IN_FLIGHT: Final = 3
PROCESSES_FROM: Final = 64 << 20
"""Small-file bytes after which batches go to worker processes (None: decide by size)."""

_Read = tuple[list[FileEntry | None], list[tuple[str, CachedFile]]]
"""A batch's entries (None: left out as unreadable) and its files-cache records."""
CountStats = Callable[..., None]
"""Adds to the put's statistics (thread-safe)."""


class WriterFeed:
    """Hands encoded objects from any thread to the put's pack writer, on the event loop."""

    def __init__(
        self, writer: PackWriter, loop: asyncio.AbstractEventLoop, count: CountStats
    ) -> None:
        self.writer = writer
        self._loop = loop
        self._count = count

    def add(self, kind: ObjectKind, items: list[tuple[ObjectId, int, bytes]]) -> None:
        """Pack `(id, raw length, frame)` items; waits while the writer's uploads are full."""
        if not items:
            return
        added = asyncio.run_coroutine_threadsafe(self.writer.add(kind, items), self._loop).result()
        if kind is ObjectKind.CHUNK:
            for (_, raw, frame), new in zip(items, added, strict=True):
                if new:
                    self._count(chunks_new=1, bytes_new_raw=raw, bytes_uploaded=len(frame))


class FileStage:
    """Describes batches of files and packs their new chunks; shared by a put's threads."""

    def __init__(
        self,
        settings: CutSettings,
        level: int,
        feed: WriterFeed,
        chunker_factory: Callable[[], Chunker],
        *,
        workers: int,
        in_flight: int,
        processes: bool | None,
        skip_unreadable: bool = False,
        files_cache: FilesCache | None,
        started_ns: int,
        abort: threading.Event,
        progress: Progress,
        count: CountStats,
    ) -> None:
        self.settings = settings
        self.level = level
        self.feed = feed
        self._writer = feed.writer
        self._chunker_factory = chunker_factory
        self.files_cache = files_cache
        self._started_ns = started_ns
        self._abort = abort
        self._progress = progress
        self._count = count
        self._threads = threading.local()
        self._claimed: set[ObjectId] = set()
        self._claim_lock = threading.Lock()
        self._workers = workers
        self.skip_unreadable = skip_unreadable
        self.unreadable: list[tuple[str, str]] = []
        """Files left out as unreadable (relative path, reason)."""
        self._processes = processes
        self._small_bytes = 0
        self._pool: ProcessPoolExecutor | None = None
        self._reading = threading.Semaphore(workers)
        """Threads reading at once: more would only queue on the interpreter lock."""
        # Threads that hand batches to worker processes mostly wait: one per batch in flight.
        self._readers = ThreadPoolExecutor(in_flight, thread_name_prefix="cas-read")
        self._compressors = ThreadPoolExecutor(workers, thread_name_prefix="cas-zstd")

    def submit(self, batch: Sequence[SourceEntry]) -> Future[list[FileEntry | None]]:
        """Describe `batch` in a reader thread."""
        return self._readers.submit(self.run, batch)

    def pack_aside(self, kind: ObjectKind, items: list[tuple[ObjectId, bytes]]) -> Future[None]:
        """Compress and pack `items` in the compression pool, off the caller's thread."""
        return self._compressors.submit(
            lambda: self.feed.add(kind, encode_frames(items, self.level))
        )

    def close(self) -> None:
        """Wait for the threads; batches not started are dropped (a failed put)."""
        self._readers.shutdown(wait=True, cancel_futures=True)
        self._compressors.shutdown(wait=True, cancel_futures=True)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def run(self, batch: Sequence[SourceEntry]) -> list[FileEntry | None]:
        """The entries of `batch`, in order (None: left out as unreadable); any thread."""
        reused, remember = self._reuse_unchanged(batch)
        fresh = [child for child in batch if child.path not in reused]
        read: dict[str, FileEntry | None] = {}
        if fresh:
            if len(fresh) > 1 or fresh[0].st.st_size < COMPRESS_IN_POOL_FROM:
                if self._in_worker_process(fresh):
                    entries, records = self._read_in_worker(fresh)
                else:
                    with self._reading:
                        entries, records = self._read_small(fresh)
            else:
                with self._reading:
                    entries, records = self._read_large(fresh[0])
            read = {child.path: entry for child, entry in zip(fresh, entries, strict=True)}
            remember.extend(records)
        if self.files_cache is not None and remember:
            self.files_cache.record_many(remember, self._started_ns)
        return [reused[child.path] if child.path in reused else read[child.path] for child in batch]

    # ------------------------------------------------------------ unchanged files

    def _reuse_unchanged(
        self, batch: Sequence[SourceEntry]
    ) -> tuple[dict[str, FileEntry], list[tuple[str, CachedFile]]]:
        """Files the cache remembers with the same stat and whose chunks are all still stored."""
        if self.files_cache is None:
            return {}, []
        cached = reusable_candidates(self.files_cache, batch, self.settings.inline_max)
        if not cached:
            return {}, []
        hits = still_stored(cached, self._writer.missing(ObjectKind.CHUNK, chunk_ids(cached)))
        reused: dict[str, FileEntry] = {}
        for child in batch:
            hit = hits.get(child.path)
            if hit is not None:
                entry = reused[child.path] = entry_from_cache(self.settings, child, hit)
                self._count(
                    files=1, files_unchanged=1, bytes_unchanged=entry.size, chunks=len(hit.chunks)
                )
                self._progress.advance(entry.size)
        return reused, list(hits.items())

    # ------------------------------------------------------------ files read

    def _read_small(self, batch: list[SourceEntry]) -> _Read:
        new: list[tuple[ObjectId, bytes]] = []

        def keep_new(chunk_id: ObjectId, data: bytes) -> None:
            if self._claim(chunk_id):
                new.append((chunk_id, data))

        with OpenedAhead(batch if len(batch) > 1 else []) as opened:
            described = cut_all(
                self._cutter(), batch, keep_new, skip_unreadable=self.skip_unreadable, opened=opened
            )
        self.feed.add(ObjectKind.CHUNK, encode_frames(new, self.level))
        return self._take(described)

    def _read_large(self, child: SourceEntry) -> _Read:
        """Stream one big file: its chunk groups compress in the pool while reading goes on."""
        group: list[tuple[ObjectId, bytes]] = []
        group_bytes = 0
        flying: deque[Future[list[tuple[ObjectId, int, bytes]]]] = deque()

        def send() -> None:
            nonlocal group, group_bytes
            if group:
                flying.append(self._compressors.submit(encode_frames, group, self.level))
                group, group_bytes = [], 0
            while len(flying) > _GROUPS_IN_FLIGHT:
                self.feed.add(ObjectKind.CHUNK, flying.popleft().result())

        def keep_new(chunk_id: ObjectId, data: bytes) -> None:
            nonlocal group_bytes
            if self._claim(chunk_id):
                group.append((chunk_id, data))
                group_bytes += len(data)
                if group_bytes >= GROUP_BYTES or len(group) >= GROUP_CHUNKS:
                    send()

        try:
            described = cut_all(
                self._cutter(), [child], keep_new, skip_unreadable=self.skip_unreadable
            )
            send()
            while flying:
                self.feed.add(ObjectKind.CHUNK, flying.popleft().result())
        finally:
            for future in flying:
                future.cancel()
        return self._take(described)

    def _take(self, described: Described) -> _Read:
        """Count what a batch read, pass its warnings on; its entries and records."""
        self._count(**described.counts)
        for warning in described.warnings:
            self._progress.warn(warning)
        for rel, reason in described.unreadable:
            self.leave_out(rel, reason)
        return described.entries, described.remember

    def leave_out(self, rel: str, reason: str) -> None:
        """Note a file or directory left out as unreadable (`skip_unreadable`); any thread."""
        self._progress.warn(f"left out {rel}: {reason}")
        with self._claim_lock:
            self.unreadable.append((rel, reason))

    # ------------------------------------------------------------ worker processes

    def _in_worker_process(self, batch: list[SourceEntry]) -> bool:
        """Small files go to worker processes once the tree proves big enough to pay for them.

        Starting the workers costs about a tenth of a second, so a small put
        stays in threads.
        """
        choice = self._processes
        if choice is False or self._workers < 2:
            return False
        if choice is None:
            with self._claim_lock:
                self._small_bytes += sum(child.st.st_size for child in batch)
                return self._small_bytes > PROCESSES_FROM
        return True

    def _worker_pool(self) -> ProcessPoolExecutor:
        with self._claim_lock:
            if self._pool is None:
                config = putworker.WorkerConfig(
                    settings=self.settings,
                    level=self.level,
                    known=self._writer.known_chunks(),
                    skip_unreadable=self.skip_unreadable,
                )
                self._pool = ProcessPoolExecutor(
                    self._workers,
                    mp_context=multiprocessing.get_context("forkserver"),
                    initializer=putworker.start,
                    initargs=(config,),
                )
            return self._pool

    def _read_in_worker(self, batch: list[SourceEntry]) -> _Read:
        if self._abort.is_set():
            raise asyncio.CancelledError
        try:
            result = self._worker_pool().submit(putworker.put_batch, batch).result()
        except BrokenProcessPool:
            raise CasError("a put worker process died (out of memory or killed)") from None
        self.feed.add(ObjectKind.CHUNK, result.frames)
        self._progress.advance(result.described.counts["bytes_read"])
        return self._take(result.described)

    def _claim(self, chunk_id: ObjectId) -> bool:
        """True for the one batch that packs this chunk in this put."""
        with self._claim_lock:
            if chunk_id in self._claimed or self._writer.has(ObjectKind.CHUNK, chunk_id):
                return False
            self._claimed.add(chunk_id)
            return True

    def _cutter(self) -> FileCutter:
        cutter: FileCutter | None = getattr(self._threads, "cutter", None)
        if cutter is None:
            cutter = self._threads.cutter = FileCutter(
                self.settings, self._chunker_factory(), self._abort, self._progress.advance
            )
        return cutter
