"""Worker processes of put: batches of small files, read, cut, checked and stored.

Threads in one process share one interpreter lock. A tree of thousands of
small files costs put a few Python steps per file and per chunk, and with
several reader threads those steps queued on the lock: profiles showed
the reader threads waiting, not working. A worker process has its own lock,
so each core runs the whole per-file pipeline (read, FastCDC, BLAKE3,
`missing`, zstd, store) for its batch, talks to the store itself, and sends
back only the tree entries. The put process keeps the walk, the trees and
the manifest, so a tree is still written only after the batches it names
have returned, that is after their chunks are stored.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import os
import signal
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cas import codec
from cas.chunking import FastCdcChunker
from cas.filecut import CutSettings, FileCutter, entry_from_cache
from cas.filescache import (
    CachedFile,
    FilesCache,
    chunk_ids,
    reusable_candidates,
    still_stored,
)
from cas.ids import ObjectId
from cas.objects import FileEntry
from cas.store.base import Kind, Store
from cas.walk import SourceEntry


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs, sent once when it starts (it must pickle)."""

    open_store: Callable[[], Store]
    store_url: str
    settings: CutSettings
    level: int
    files_cache_dir: str | None
    started_ns: int


@dataclass
class BatchResult:
    """What one batch did: its entries, in the batch's order, and its counts."""

    entries: list[FileEntry]
    counts: Counter[str] = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)


class _Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.runner = asyncio.Runner()
        self.store = config.open_store()
        self.cutter = FileCutter(config.settings, FastCdcChunker(config.settings.params))
        self.files_cache = (
            FilesCache(Path(config.files_cache_dir), config.store_url, config.settings.params)
            if config.files_cache_dir is not None
            else None
        )

    def close(self) -> None:
        try:
            self.runner.run(self.store.aclose())
        finally:
            self.runner.close()
            if self.files_cache is not None:
                self.files_cache.close()

    def put_batch(self, batch: list[SourceEntry]) -> BatchResult:
        return self.runner.run(self._put_batch(batch))

    async def _put_batch(self, batch: list[SourceEntry]) -> BatchResult:
        settings = self.config.settings
        result = BatchResult(entries=[])
        counts = result.counts
        unchanged = await self._unchanged(batch)
        pending: dict[ObjectId, bytes] = {}
        remember: list[tuple[str, CachedFile]] = []
        for child in batch:
            hit = unchanged.get(child.path)
            if hit is not None:
                entry = entry_from_cache(settings, child, hit)
                counts.update(
                    files=1, files_unchanged=1, bytes_unchanged=entry.size, chunks=len(hit.chunks)
                )
                remember.append((child.path, hit))
            else:
                cut = self.cutter.cut(child, pending.__setitem__)
                entry = cut.entry
                counts.update(files=1, bytes_read=entry.size, chunks=len(entry.chunks))
                warning = cut.warning(child)
                if warning is not None:
                    result.warnings.append(warning)
                record = cut.remembered(child)
                if record is not None:
                    remember.append((child.path, record))
            result.entries.append(entry)
        if pending:
            absent = await self.store.missing(Kind.CHUNK, list(pending))
            blobs = [
                (i, codec.encode(pending[i], self.config.level)) for i in pending if i in absent
            ]
            if blobs:
                created = await self.store.put_many(Kind.CHUNK, blobs)
                for (chunk_id, blob), new in zip(blobs, created, strict=True):
                    if new:
                        counts.update(
                            chunks_new=1,
                            bytes_new_raw=len(pending[chunk_id]),
                            bytes_uploaded=len(blob),
                        )
        if self.files_cache is not None and remember:
            self.files_cache.record_many(remember, self.config.started_ns)
        return result

    async def _unchanged(self, batch: list[SourceEntry]) -> dict[str, CachedFile]:
        """Files whose remembered chunk list can be reused: same stat, chunks still stored."""
        if self.files_cache is None:
            return {}
        cached = reusable_candidates(self.files_cache, batch, self.config.settings.inline_max)
        if not cached:
            return {}
        return still_stored(cached, await self.store.missing(Kind.CHUNK, chunk_ids(cached)))


_PR_SET_PDEATHSIG = 1
_worker: _Worker | None = None


def start(config: WorkerConfig) -> None:
    """Process-pool initializer: open the store and caches once per worker."""
    global _worker
    # Ctrl-C reaches the whole process group; the put process decides what to do.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    _worker = _Worker(config)
    atexit.register(_worker.close)


def _die_with_parent() -> None:
    """If the put is killed, its workers must not go on writing to the store alone."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)


def put_batch(batch: list[SourceEntry]) -> BatchResult:
    """Store one batch of files; runs in a worker process."""
    if _worker is None:
        raise RuntimeError("put worker used before start()")
    return _worker.put_batch(batch)
