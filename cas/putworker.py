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
import os
import select
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from cas import codec
from cas.allocator import return_large_blocks
from cas.chunking import FastCdcChunker
from cas.filecut import CutSettings, FileCutter, OpenedAhead
from cas.filescache import CachedFile
from cas.ids import ObjectId
from cas.objects import FileEntry
from cas.store.base import Kind, Store
from cas.walk import SourceEntry


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs, sent once when it starts (it must pickle)."""

    open_store: Callable[[], Store]
    settings: CutSettings
    level: int
    put_pid: int = field(default_factory=os.getpid)
    """The put process: workers exit when it is gone."""


@dataclass
class BatchResult:
    """What one batch did: entries in the batch's order, files-cache records, counts."""

    entries: list[FileEntry] = field(default_factory=list)
    remember: list[tuple[str, CachedFile]] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)


class _Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.runner = asyncio.Runner()
        self.store = config.open_store()
        self.cutter = FileCutter(config.settings, FastCdcChunker(config.settings.params))

    def close(self) -> None:
        try:
            self.runner.run(self.store.aclose())
        finally:
            self.runner.close()

    def put_batch(self, batch: list[SourceEntry]) -> BatchResult:
        return self.runner.run(self._put_batch(batch))

    async def _put_batch(self, batch: list[SourceEntry]) -> BatchResult:
        result = BatchResult()
        counts = result.counts
        pending: dict[ObjectId, bytes] = {}
        with OpenedAhead(batch) as opened:
            cuts = [self.cutter.cut(c, pending.__setitem__, opened.take(c)) for c in batch]
        for child, cut in zip(batch, cuts, strict=True):
            counts.update(files=1, bytes_read=cut.entry.size, chunks=len(cut.entry.chunks))
            warning = cut.warning(child)
            if warning is not None:
                result.warnings.append(warning)
            record = cut.remembered(child)
            if record is not None:
                result.remember.append((child.path, record))
            result.entries.append(cut.entry)
        if pending:
            absent = await self.store.missing(Kind.CHUNK, list(pending))
            level = self.config.level
            blobs = [(i, codec.encode(pending[i], level)) for i in pending if i in absent]
            if blobs:
                created = await self.store.put_many(Kind.CHUNK, blobs)
                for (chunk_id, blob), new in zip(blobs, created, strict=True):
                    if new:
                        counts.update(
                            chunks_new=1,
                            bytes_new_raw=len(pending[chunk_id]),
                            bytes_uploaded=len(blob),
                        )
        return result


_worker: _Worker | None = None


def start(config: WorkerConfig) -> None:
    """Process-pool initializer: open the store once per worker."""
    global _worker
    # Ctrl-C reaches the whole process group; the put process decides what to do.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with(config.put_pid)
    return_large_blocks()
    _worker = _Worker(config)
    atexit.register(_worker.close)


def _die_with(put_pid: int) -> None:
    """If the put is killed, its workers must not go on writing to the store alone.

    A worker's parent is the forkserver, not the put, and the forkserver lives
    as long as any worker holds its pipe, so a parent-death signal never
    comes: a thread waits on the put process itself (a pidfd) instead.
    """
    try:
        pidfd: int | None = os.pidfd_open(put_pid)
    except ProcessLookupError:
        os._exit(1)
    except (OSError, AttributeError):  # no pidfd here: poll for the process instead
        pidfd = None

    def watch() -> None:
        if pidfd is not None:
            select.select([pidfd], [], [])
        else:
            while _alive(put_pid):
                time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="cas-put-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def put_batch(batch: list[SourceEntry]) -> BatchResult:
    """Store one batch of files; runs in a worker process."""
    if _worker is None:
        raise RuntimeError("put worker used before start()")
    return _worker.put_batch(batch)
