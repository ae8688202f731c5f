"""Put's tree stage: walk the source once, in one thread, and build its trees.

The walk lists directories depth first and queues their files, in batches
that may span directories, to the file stage (`cas.put.files`); a
directory's tree is built once its subdirectories' trees and its own
files' entries are known. Work is a queue, not a coroutine per
directory: a window of batches in flight keeps every core busy while the
walk goes on, and results are taken in the order they were queued, so a
directory always finishes after its subdirectories (post order).

A directory whose listing the directories cache remembers unchanged is put
without reading its files, if its subtrees came out the same and the
store still holds what it names; otherwise its files are described then.
"""

from __future__ import annotations

import asyncio
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Final

from cas.batching import batch_by_size
from cas.caches.dirs import CachedDir, DirsCache, recordable
from cas.errors import SourceError
from cas.ids import ObjectId, hash_bytes
from cas.objects import DirEntry, Entry, FileEntry, SymlinkEntry, Totals, Tree
from cas.pack import ObjectKind
from cas.progress import Progress
from cas.put.filecut import CutSettings
from cas.put.files import CountStats, FileStage
from cas.put.listing import Excludes, SourceEntry, list_directory

BATCH_BYTES: Final = 8 << 20
BATCH_FILES: Final = 128
_TOTAL_EVERY_S: Final = 0.5
_TREE_BATCH: Final = 256
_TREE_BATCH_BYTES: Final = 4 << 20


@dataclass(eq=False)
class _Dir:
    """One directory of the source between being listed and having its tree."""

    source: SourceEntry | None
    """Its own listing entry (None for the root)."""
    parent: _Dir | None
    children: list[SourceEntry]
    key: bytes | None = None
    cached: CachedDir | None = None
    skipped: bool = False
    results: list[tuple[Entry, Totals]] = field(default_factory=list)
    deferred: list[SourceEntry] = field(default_factory=list)
    """Own files not described yet (a directories-cache hit may make them unnecessary)."""
    waits_for: int = -1
    """The last batch holding one of its own files."""
    done: tuple[ObjectId, Totals] | None = None

    def add_file(self, entry: FileEntry | None) -> None:
        """File a described entry (None: left out as unreadable, so not remembered)."""
        if entry is None:
            self.skipped = True
        else:
            self.results.append(
                (entry, Totals(files=1, bytes=entry.size, chunks=len(entry.chunks)))
            )


@dataclass(eq=False)
class _Batch:
    seq: int
    files: list[tuple[_Dir, SourceEntry]] = field(default_factory=list)
    size: int = 0
    future: Future[list[FileEntry | None]] | None = None


class TreeWalk:
    """One walk of one source; `run` returns the root tree id and the totals."""

    def __init__(
        self,
        files: FileStage,
        settings: CutSettings,
        excludes: Excludes,
        *,
        dirs_cache: DirsCache | None,
        skip: Callable[[SourceEntry], bool] | None,
        started_ns: int,
        in_flight: int,
        abort: threading.Event,
        progress: Progress,
        count: CountStats,
    ) -> None:
        self.files = files
        self.settings = settings
        self.excludes = excludes
        self.dirs_cache = dirs_cache
        self._skip = skip
        self._started_ns = started_ns
        self._in_flight = in_flight
        self._abort = abort
        self._progress = progress
        self._count = count
        self._writer = files.feed.writer
        self.used_chunks: set[ObjectId] = set()
        self.used_trees: set[ObjectId] = set()
        """Every chunk and tree the walked source reaches: exactly what its index lists."""
        self.dir_records: list[tuple[bytes, CachedDir]] = []
        self.skipped: list[tuple[str, str]] = []
        self._batches: deque[_Batch] = deque()
        self._open = _Batch(0)
        self._next_seq = 1
        self._finished = 0
        """Batches finished so far; they finish in the order they were queued."""
        self._dirs: deque[_Dir] = deque()
        self._trees: list[tuple[ObjectId, bytes]] = []
        self._tree_sends: list[Future[None]] = []
        self._trees_bytes = 0
        self._trees_queued: set[ObjectId] = set()
        self._seen_bytes = 0
        self._seen_files = 0
        self._total_told = time.monotonic()

    def run(self, root: str) -> tuple[ObjectId, Totals]:
        """Walk `root` depth first; runs in one thread, waiting on the file stage as needed."""
        top = self._enter(root, "", None, None)
        stack = [(top, iter([c for c in top.children if c.is_dir]))]
        while stack:
            if self._abort.is_set():
                raise asyncio.CancelledError
            node, subdirs = stack[-1]
            child = next(subdirs, None)
            if child is not None:
                try:
                    sub = self._enter(child.path, child.rel, child, node)
                except SourceError as exc:
                    if not self.files.skip_unreadable:
                        raise
                    self.files.leave_out(child.rel + "/", str(exc))
                    node.skipped = True  # not remembered by the directories cache
                    continue
                stack.append((sub, iter([c for c in sub.children if c.is_dir])))
                continue
            stack.pop()
            self._queue_files(node)
            self._dirs.append(node)
            self._drain(self._in_flight)
        # the walk is complete: the true totals
        self._progress.set_total(self._seen_bytes, self._seen_files)
        self._send_open_batch()
        self._drain(0)
        self._send_trees()
        for sent in self._tree_sends:
            sent.result()
        assert top.done is not None
        return top.done

    # ------------------------------------------------------------ walking

    def _enter(self, path: str, rel: str, source: SourceEntry | None, parent: _Dir | None) -> _Dir:
        skipped: list[tuple[str, str]] = []
        children = list_directory(path, rel, self.excludes, skipped)
        for child_rel, reason in skipped:
            self._progress.warn(f"skipped {child_rel}: {reason}")
        self.skipped.extend(skipped)
        if self._skip is not None:
            children = [c for c in children if not self._skip(c)]
        node = _Dir(source, parent, children, skipped=bool(skipped))
        if self.dirs_cache is not None:
            node.key = self.dirs_cache.fingerprint(children)
            node.cached = self.dirs_cache.lookup(node.key)
        return node

    def _queue_files(self, node: _Dir) -> None:
        files = [c for c in node.children if c.is_file]
        self._seen_bytes += sum(c.st.st_size for c in files)
        self._seen_files += len(files)
        now = time.monotonic()
        if now - self._total_told >= _TOTAL_EVERY_S:  # a growing total, told now and then
            self._total_told = now
            self._progress.set_total(self._seen_bytes, self._seen_files)
        if node.cached is not None:
            node.deferred = files
            return
        alone_from = self.settings.params.max_size
        for child in files:
            size = child.st.st_size
            if size >= alone_from:
                self._send_open_batch()
                alone = self._open
                alone.files.append((node, child))
                self._send_open_batch()
                node.waits_for = alone.seq
                continue
            batch = self._open
            if batch.files and (batch.size + size > BATCH_BYTES or len(batch.files) >= BATCH_FILES):
                self._send_open_batch()
                batch = self._open
            batch.files.append((node, child))
            batch.size += size
            node.waits_for = batch.seq

    def _send_open_batch(self) -> None:
        batch = self._open
        if not batch.files:
            return
        batch.future = self.files.submit([child for _, child in batch.files])
        self._batches.append(batch)
        self._open = _Batch(self._next_seq)
        self._next_seq += 1

    def _drain(self, limit: int) -> None:
        """Finish directories whose batches are done; wait while more than `limit` batches fly."""
        while True:
            if self._dirs and self._dirs[0].waits_for < self._finished:
                self._finish_dir(self._dirs.popleft())
            elif len(self._batches) > limit:
                self._finish_batch(self._batches.popleft())
            else:
                return

    def _finish_batch(self, batch: _Batch) -> None:
        assert batch.future is not None
        entries = batch.future.result()
        for (owner, _), entry in zip(batch.files, entries, strict=True):
            owner.add_file(entry)
        self._finished = batch.seq + 1

    # ------------------------------------------------------------ trees

    def _finish_dir(self, node: _Dir) -> None:
        if node.cached is not None:
            if self._reusable(node.cached, node.results):
                self._reuse(node, node.cached)
                return
            for batch in batch_by_size(
                node.deferred,
                lambda child: child.st.st_size,
                max_bytes=BATCH_BYTES,
                max_items=BATCH_FILES,
                alone_from=self.settings.params.max_size,
            ):
                for entry in self.files.run(batch):
                    node.add_file(entry)
        links = [_symlink(child, self._mtime(child)) for child in node.children if child.is_symlink]
        node.results.extend((link, Totals(symlinks=1)) for link in links)
        results = node.results
        tree = Tree.build(entry for entry, _ in results)
        data = tree.to_bytes()
        tree_id = hash_bytes(data)
        self._add_tree(tree_id, data)
        self.used_trees.add(tree_id)
        own = [r.id for entry, _ in results if isinstance(entry, FileEntry) for r in entry.chunks]
        self.used_chunks.update(own)
        self._count(dirs=1, symlinks=len(links))
        totals = _summed(t for _, t in results)
        if (
            node.key is not None
            and not node.skipped
            and recordable(node.children, self._started_ns)
        ):
            subtrees = tuple(e.tree for e, _ in results if isinstance(e, DirEntry))
            record = CachedDir(tree_id, totals, subtrees, tuple(dict.fromkeys(own)))
            self.dir_records.append((node.key, record))
        self._deliver(node, tree_id, totals)

    def _reusable(self, cached: CachedDir, results: list[tuple[Entry, Totals]]) -> bool:
        """The same subtrees, and the store still holds the tree and its own chunks."""
        if tuple(e.tree for e, _ in results if isinstance(e, DirEntry)) != cached.subtrees:
            return False
        writer = self._writer
        return (
            writer.has(ObjectKind.TREE, cached.tree_id) or cached.tree_id in self._trees_queued
        ) and not writer.missing(ObjectKind.CHUNK, cached.chunks)

    def _reuse(self, node: _Dir, cached: CachedDir) -> None:
        """Count a reused directory's own files; its subdirectories counted theirs."""
        subdirs = node.results
        own_files = cached.totals.files - sum(t.files for _, t in subdirs)
        own_bytes = cached.totals.bytes - sum(t.bytes for _, t in subdirs)
        own_chunks = cached.totals.chunks - sum(t.chunks for _, t in subdirs)
        links = sum(1 for c in node.children if c.is_symlink)
        self._count(
            files=own_files,
            files_unchanged=own_files,
            bytes_unchanged=own_bytes,
            chunks=own_chunks,
            symlinks=links,
            dirs=1,
        )
        self._progress.advance(own_bytes)
        self.used_trees.add(cached.tree_id)
        self.used_chunks.update(cached.chunks)
        assert self.dirs_cache is not None and node.key is not None
        if self.dirs_cache.needs_refresh(cached):
            self.dir_records.append((node.key, cached))
        self._deliver(node, cached.tree_id, cached.totals)

    def _deliver(self, node: _Dir, tree_id: ObjectId, totals: Totals) -> None:
        if node.parent is None or node.source is None:
            node.done = (tree_id, totals)
            return
        source = node.source
        entry = DirEntry(source.name, stat.S_IMODE(source.st.st_mode), self._mtime(source), tree_id)
        node.parent.results.append((entry, replace(totals, dirs=totals.dirs + 1)))

    def _add_tree(self, tree_id: ObjectId, data: bytes) -> None:
        """Queue a new tree for packing; trees are compressed and packed in batches, aside."""
        if tree_id in self._trees_queued or self._writer.has(ObjectKind.TREE, tree_id):
            return
        self._trees_queued.add(tree_id)
        self._trees.append((tree_id, data))
        self._trees_bytes += len(data)
        if len(self._trees) >= _TREE_BATCH or self._trees_bytes >= _TREE_BATCH_BYTES:
            self._send_trees()

    def _send_trees(self) -> None:
        if self._trees:
            self._tree_sends.append(self.files.pack_aside(ObjectKind.TREE, self._trees))
            self._trees, self._trees_bytes = [], 0

    def _mtime(self, child: SourceEntry) -> int | None:
        return child.st.st_mtime_ns if self.settings.mtimes else None


def _summed(parts: Iterable[Totals]) -> Totals:
    """The totals of a directory: the sum of its entries' totals."""
    total = Totals()
    for t in parts:
        total = Totals(
            files=total.files + t.files,
            dirs=total.dirs + t.dirs,
            symlinks=total.symlinks + t.symlinks,
            bytes=total.bytes + t.bytes,
            chunks=total.chunks + t.chunks,
        )
    return total


def _symlink(child: SourceEntry, mtime_ns: int | None) -> SymlinkEntry:
    assert child.link_target is not None
    return SymlinkEntry(child.name, child.link_target, mtime_ns)
