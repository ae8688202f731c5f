"""Worker processes of put: batches of small files, read, cut, checked and stored.

Threads in one process share one interpreter lock. A tree of thousands of
small files costs put a few Python steps per file and per chunk, and with
several reader threads those steps queued on the lock: profiles showed
the reader threads waiting, not working. A worker process has its own lock,
so each core runs the whole per-file pipeline (read, FastCDC, BLAKE3, zstd)
for its batch and sends back the tree entries and the compressed frames of
chunks the put does not hold yet. The put process packs those frames (the
one writer of a put, `cas.put.packwriter`), keeps the walk, the trees and the
manifest. Workers never talk to the store.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from dataclasses import dataclass, field

from cas.allocator import return_large_blocks
from cas.chunking import FastCdcChunker
from cas.ids import ObjectId
from cas.pack import encode_frames
from cas.put.filecut import CutSettings, Described, FileCutter, OpenedAhead, cut_all
from cas.put.listing import SourceEntry


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs, sent once when it starts (it must pickle)."""

    settings: CutSettings
    level: int
    known: frozenset[ObjectId] = frozenset()
    """Chunks the put already holds (its parents'): not compressed again."""
    skip_unreadable: bool = False
    put_pid: int = field(default_factory=os.getpid)
    """The put process: workers exit when it is gone."""


@dataclass
class BatchResult:
    """A batch described, and the compressed frames of the chunks it met first."""

    described: Described
    frames: list[tuple[ObjectId, int, bytes]] = field(default_factory=list)
    """New chunks, compressed: (id, raw length, zstd frame)."""


class _Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.cutter = FileCutter(config.settings, FastCdcChunker(config.settings.params))
        self.sent: set[ObjectId] = set()
        """Chunks this worker compressed and sent already (the put packs each once)."""

    def put_batch(self, batch: list[SourceEntry]) -> BatchResult:
        pending: dict[ObjectId, bytes] = {}
        with OpenedAhead(batch) as opened:
            described = cut_all(
                self.cutter,
                batch,
                pending.__setitem__,
                skip_unreadable=self.config.skip_unreadable,
                opened=opened,
            )
        new = [
            (chunk_id, data)
            for chunk_id, data in pending.items()
            if chunk_id not in self.config.known and chunk_id not in self.sent
        ]
        self.sent.update(chunk_id for chunk_id, _ in new)
        return BatchResult(described, encode_frames(new, self.config.level))


_worker: _Worker | None = None


def start(config: WorkerConfig) -> None:
    """Process-pool initializer."""
    global _worker
    # Ctrl-C reaches the whole process group; the put process decides what to do.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with(config.put_pid)
    return_large_blocks()
    _worker = _Worker(config)


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
