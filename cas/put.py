"""The upward transfer engine: a directory in, a manifest id out.

1. Walk the source in a deterministic order (`cas.walk`), one directory at
   a time, skipping excluded paths.
2. Each regular file is read by a worker thread: FastCDC cuts it while it
   streams through a fixed buffer, BLAKE3 names each chunk and hashes the
   whole file. Tiny files are kept inline in their tree instead.
3. Chunks go to the event loop in groups. Existence checks from all files
   are merged into batched `missing` calls; only missing chunks are
   compressed (in a CPU pool) and uploaded. A byte budget bounds the data in
   flight, so memory does not grow with file or tree size.
4. A directory's tree is written only after every chunk and subtree it
   names has been stored; the manifest is written after the root tree, and
   the ref after the manifest. An interrupted put therefore never leaves a
   manifest that names missing data, and re-running it uploads only the rest.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import stat
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Final

from cas import __version__, codec, putworker
from cas.aiotools import gather_or_cancel
from cas.batching import batch_by_size
from cas.chunking import ChunkParams, FastCdcChunker
from cas.coalesce import Coalescer
from cas.dirscache import CachedDir, DirsCache, recordable
from cas.errors import AlreadyExists, CasError, ObjectNotFound, SourceError, UsageError
from cas.filecut import CutSettings, FileCutter, OpenedAhead, entry_from_cache
from cas.filescache import (
    CachedFile,
    FilesCache,
    LastPuts,
    PutJournal,
    chunk_ids,
    reusable_candidates,
    still_stored,
)
from cas.gcfence import ConcurrentGcError, GcFence
from cas.ids import ObjectId, hash_bytes
from cas.objects import (
    DirEntry,
    Entry,
    FileEntry,
    Manifest,
    SymlinkEntry,
    Totals,
    Tree,
    now_rfc3339,
)
from cas.pack import MAX_PACK_BYTES, TARGET_PACK_BYTES, ObjectKind, trailer_bytes
from cas.packindex import PackIndex, encode_index
from cas.packwriter import PackWriter
from cas.progress import NullProgress, Progress
from cas.repo import Repository
from cas.store.base import Kind, validate_ref_name
from cas.verify import manifest_complete
from cas.walk import Excludes, SourceEntry, list_directory

DEFAULT_INLINE_MAX: Final = 4096
_GROUP_BYTES: Final = 8 << 20
_GROUP_CHUNKS: Final = 64
_BATCH_FILES: Final = 128
_COMPRESS_IN_POOL_FROM: Final = 32 << 20
_BATCH_WAIT: Final = 0.002
_TREE_BATCH: Final = 200
_INLINE_ENCODE_MAX: Final = 64 << 10
"""Trees per batch: their canonical bytes are held until the batch is stored."""
_PROCESSES_FROM: Final = 64 << 20
_LIST_INLINE_MAX: Final = 4096
"""Directories whose own size (one file system block on ext4: ~100 names) is listed inline."""


@dataclass(frozen=True)
class PutOptions:
    """How to cut, compress and describe a put."""

    params: ChunkParams = field(default_factory=ChunkParams)
    level: int = codec.DEFAULT_LEVEL
    excludes: Excludes = field(default_factory=Excludes)
    labels: dict[str, str] = field(default_factory=dict)
    mtimes: bool = True
    reproducible: bool = False
    ref: str | None = None
    inline_max: int = DEFAULT_INLINE_MAX
    workers: int = max(1, os.cpu_count() or 1)
    processes: bool | None = None
    """Worker processes for small files: None decides by tree size, False never, True always."""
    parent: str | None = None
    """A ref or manifest id whose stored objects this put reuses instead of uploading.

    None: the newest ref beside `ref` (same prefix; without `ref`, the newest
    ref of the store), plus the manifest this source was last put as from
    this machine (files cache)."""
    pack_size: int = TARGET_PACK_BYTES
    """Seal packs at this many stored bytes."""

    def __post_init__(self) -> None:
        if self.reproducible:  # reproducible ids cannot depend on when files were touched
            object.__setattr__(self, "mtimes", False)
        if not codec.MIN_LEVEL <= self.level <= codec.MAX_LEVEL:
            raise UsageError(f"--level must be {codec.MIN_LEVEL}..{codec.MAX_LEVEL}")
        if self.ref is not None:
            validate_ref_name(self.ref)
        if not 0 <= self.inline_max <= 64 << 10:
            raise UsageError("inline_max must be 0..65536 bytes")
        if not 64 << 10 <= self.pack_size <= MAX_PACK_BYTES // 2:
            raise UsageError(f"pack size must be 64 KiB..{MAX_PACK_BYTES // 2 >> 20} MiB")


@dataclass
class PutStats:
    """What a put did, for its summary line and `--json`."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes_read: int = 0
    files_unchanged: int = 0
    bytes_unchanged: int = 0
    chunks: int = 0
    chunks_new: int = 0
    bytes_new_raw: int = 0
    bytes_uploaded: int = 0
    gc_waits: int = 0
    packs: int = 0
    """Packs uploaded."""
    parents: list[str] = field(default_factory=list)
    """Manifests whose stored objects this put reused (its parents)."""
    resumed: int = 0
    """Objects reused from packs an interrupted put of this source had stored."""
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class PutResult:
    """The manifest id, the manifest, and what it took."""

    manifest_id: ObjectId
    manifest: Manifest
    stats: PutStats


class Uploader:
    """One put: create per call of `put` (it holds per-run state).

    Large puts start worker processes with the `forkserver` method, which
    re-imports the caller's main module: a script that puts must guard its
    entry point with `if __name__ == "__main__":` (the `cas` command does).
    """

    def __init__(
        self,
        repo: Repository,
        options: PutOptions | None = None,
        progress: Progress | None = None,
        chunker_factory: type[FastCdcChunker] | None = None,
        files_cache: FilesCache | None = None,
        skip_dirs: Iterable[str | os.PathLike[str]] = (),
    ) -> None:
        self.repo = repo
        self.files_cache = files_cache
        self.options = options or PutOptions()
        opts = self.options
        self._settings = CutSettings(opts.params, opts.inline_max, opts.mtimes)
        self.dirs_cache = None if files_cache is None else DirsCache(files_cache, self._settings)
        self._dir_records: list[tuple[bytes, CachedDir]] = []
        # Directories never stored even when inside the source: the store and caches themselves.
        self._skip_dirs = list(skip_dirs)
        self._skip_ids = _identities(self._skip_dirs)
        self._started_ns = time.time_ns()
        self.progress: Progress = progress or NullProgress()
        self.stats = PutStats()
        self._chunker_factory = chunker_factory or FastCdcChunker
        self._local = threading.local()
        self._abort = threading.Event()
        self._stats_lock = threading.Lock()
        self._budget = threading.Semaphore(max(2, 3 * self.options.workers))
        self._stored: dict[ObjectId, asyncio.Future[None]] = {}
        self._writer = PackWriter(
            repo.store,
            target=self.options.pack_size,
            spool_dir=None if files_cache is None else str(files_cache.directory),
        )
        self._used_chunks: set[ObjectId] = set()
        self._used_trees: set[ObjectId] = set()
        """Every chunk and tree the manifest reaches: exactly what its index lists."""
        self._pool: ProcessPoolExecutor | None = None
        self._small_bytes = 0
        self.gc_fence = True
        """Settle the manifest against concurrent collections (docs/gc.md); off only in tests."""

    # ------------------------------------------------------------ entry point

    async def put(self, source: str | os.PathLike[str]) -> PutResult:
        """Store the directory `source`; return the manifest id."""
        root = os.fspath(source)
        try:
            st = os.stat(root)
        except FileNotFoundError:
            raise SourceError(f"no such directory: {root}") from None
        except OSError as exc:
            raise SourceError(f"cannot read {root}: {exc.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise SourceError(f"not a directory: {root}")

        fence = GcFence(self.repo.store, enabled=self.gc_fence)
        await fence.begin()  # before any parent's index is read
        for parent in await self._parents(root):
            try:
                index = await self.repo.index(parent)
            except ObjectNotFound:
                self.progress.warn(f"parent {parent} is no longer stored; uploading everything")
                continue
            if await self._writer.adopt(index):
                self.stats.parents.append(str(parent))
        journal = None
        if self.files_cache is not None:
            journal = PutJournal(self.files_cache, root)
            self.stats.resumed = await self._writer.adopt_packs(
                await asyncio.to_thread(journal.packs)
            )
            self._writer.on_stored = lambda pack_id, entries: journal.note(
                pack_id, trailer_bytes(entries)
            )
        try:
            result = await self._put(root, fence)
        except BaseException:
            await self._writer.abort()
            raise
        if self.files_cache is not None and journal is not None:
            await asyncio.to_thread(LastPuts(self.files_cache).remember, root, result.manifest_id)
            await asyncio.to_thread(journal.clear)
        return result

    async def _parents(self, root: str) -> list[ObjectId]:
        """Manifests to reuse: `--parent`, else the newest ref nearby and the last put."""
        opts = self.options
        if opts.parent is not None:
            try:
                return [await self.repo.resolve(opts.parent)]
            except ObjectNotFound as exc:
                raise ObjectNotFound(f"parent: {exc}") from None
        found: list[ObjectId] = []
        prefix = opts.ref.rsplit("/", 1)[0] + "/" if opts.ref and "/" in opts.ref else ""
        refs = [r async for r in self.repo.store.list_refs(prefix)]
        if refs:
            found.append(max(refs, key=lambda r: (r.mtime, r.name)).target)
        if self.files_cache is not None:
            last = await asyncio.to_thread(LastPuts(self.files_cache).get, root)
            if last is not None and last not in found:
                found.append(last)
        return found

    async def _put(self, root: str, fence: GcFence) -> PutResult:
        root_tree, totals = await self._upload(root)
        await self._writer.close()
        self.stats.packs += self._writer.stats.packs

        opts = self.options
        manifest = Manifest(
            root=root_tree,
            chunker=opts.params,
            totals=totals,
            excludes=opts.excludes.patterns,
            labels=dict(sorted(opts.labels.items())),
            mtimes=opts.mtimes,
            created=None if opts.reproducible else now_rfc3339(),
            tool=None if opts.reproducible else f"cas {__version__}",
        )
        manifest_id = hash_bytes(manifest.to_bytes())
        index = self._writer.index(manifest_id, self._used_chunks, self._used_trees)
        await self.repo.put_manifest(manifest, index)
        taken = None
        if opts.ref is not None:
            try:
                await self.repo.store.create_ref(opts.ref, manifest_id)
            except AlreadyExists:
                taken = AlreadyExists(
                    f"ref {opts.ref!r} already exists; manifest {manifest_id} was stored "
                    "but not named"
                )
        # The ref (a root) comes before settling so that the manifest stays a root
        # however long settling takes, even with a short grace period.
        try:
            await fence.settle(
                lambda: manifest_complete(self.repo, manifest_id),
                lambda: self._repair(root, root_tree, index),
            )
        except ConcurrentGcError as exc:
            if opts.ref is not None and taken is None and not await self._ref_exists(opts.ref):
                raise ConcurrentGcError(
                    f"ref {opts.ref!r} was removed while the put was settling (expired by "
                    f"gc's retention rules?), and gc then collected part of {manifest_id}"
                ) from None
            raise exc
        self.stats.gc_waits = fence.rounds
        if taken is not None:
            raise taken
        return PutResult(manifest_id, manifest, self.stats)

    async def _upload(self, root: str) -> tuple[ObjectId, Totals]:
        """Store everything below `root` in write order; return the root tree."""
        self._started_ns = time.time_ns()
        self._loop = asyncio.get_running_loop()
        self._trees = Coalescer(self._put_trees, max_items=_TREE_BATCH, wait=_BATCH_WAIT)
        self._dir_records = []
        workers = self.options.workers
        self._file_pool = ThreadPoolExecutor(workers, thread_name_prefix="cas-read")
        self._cpu_pool = ThreadPoolExecutor(workers, thread_name_prefix="cas-zstd")
        self._worker_slots = asyncio.Semaphore(2 * workers)
        if self.dirs_cache is not None:
            await asyncio.to_thread(self.dirs_cache.prune)  # at most once a day
        try:
            done = await self._put_dir(root, "")
            if self.dirs_cache is not None and self._dir_records:
                await asyncio.to_thread(self.dirs_cache.record_many, self._dir_records)
            return done
        except BaseException:
            self._abort.set()
            raise
        finally:
            await asyncio.to_thread(self._file_pool.shutdown, True, cancel_futures=True)
            await asyncio.to_thread(self._cpu_pool.shutdown, True, cancel_futures=True)
            if self._pool is not None:
                await asyncio.to_thread(self._pool.shutdown, True, cancel_futures=True)

    async def _ref_exists(self, name: str) -> bool:
        try:
            await self.repo.store.read_ref(name)
        except ObjectNotFound:
            return False
        return True

    async def _repair(self, root: str, root_tree: ObjectId, written: PackIndex) -> None:
        """Upload again what a concurrent collection removed from under the manifest.

        Ids are content hashes, so storing the unchanged source again recreates
        exactly the missing objects (the packs still held are reused through
        the index just written); a changed source cannot repair the manifest.
        The repaired locations go into a second index of the same manifest.
        """
        again = Uploader(
            self.repo,
            self.options,
            self.progress,
            self._chunker_factory,
            self.files_cache,
            self._skip_dirs,
        )
        await again._writer.adopt(written)
        try:
            tree_id, _ = await again._upload(root)
            await again._writer.close()
        except BaseException:
            await again._writer.abort()
            raise
        self._count(chunks_new=again.stats.chunks_new, bytes_uploaded=again.stats.bytes_uploaded)
        self.stats.packs += again._writer.stats.packs
        if tree_id != root_tree:
            raise ConcurrentGcError(
                "garbage collection removed objects this put relied on, and the source "
                "changed before they could be uploaded again; run the put again"
            )
        index = again._writer.index(written.manifest, again._used_chunks, again._used_trees)
        name, blob = await asyncio.to_thread(encode_index, index, self.options.level)
        await self.repo.store.put_if_absent(Kind.INDEX, name, blob)

    async def _put_trees(self, trees: dict[ObjectId, bytes]) -> dict[ObjectId, bool]:
        """Compress new trees and pack them (after the chunks they name, in write order)."""
        raw = [(i, data) for i, data in trees.items() if not self._writer.has(ObjectKind.TREE, i)]
        if sum(len(data) for _, data in raw) < _INLINE_ENCODE_MAX:  # cheaper than a thread hop
            blobs = _encode_all(raw, self.options.level)
        else:
            blobs = await asyncio.to_thread(_encode_all, raw, self.options.level)
        added = await self._writer.add(
            ObjectKind.TREE,
            [(i, len(data), blob) for (i, data), (_, blob) in zip(raw, blobs, strict=True)],
        )
        answers = dict.fromkeys(trees, False)
        answers.update((i, made) for (i, _), made in zip(raw, added, strict=True))
        return answers

    async def _missing(self, ids: Iterable[ObjectId]) -> set[ObjectId]:
        """The chunks neither a parent's index nor this put has stored."""
        return self._writer.missing(ObjectKind.CHUNK, ids)

    # ------------------------------------------------------------ directories

    async def _put_dir(
        self, path: str, rel: str, listing_bytes: int | None = None
    ) -> tuple[ObjectId, Totals]:
        skipped: list[tuple[str, str]] = []
        excludes = self.options.excludes
        if listing_bytes is not None and listing_bytes <= _LIST_INLINE_MAX:
            # A small directory lists faster than a hop to a thread and back.
            children = list_directory(path, rel, excludes, skipped)
        else:
            children = await asyncio.to_thread(list_directory, path, rel, excludes, skipped)
        for child_rel, reason in skipped:
            self.progress.warn(f"skipped {child_rel}: {reason}")
        self.stats.skipped.extend(skipped)
        if self._skip_ids:
            children = [c for c in children if not self._is_skipped(c)]

        async def subdir(child: SourceEntry) -> list[tuple[Entry, Totals]]:
            tree_id, sub = await self._put_dir(child.path, child.rel, child.st.st_size)
            mode = stat.S_IMODE(child.st.st_mode)
            entry = DirEntry(child.name, mode, self._mtime(child), tree_id)
            return [(entry, Totals(sub.files, sub.dirs + 1, sub.symlinks, sub.bytes, sub.chunks))]

        async def files(batch: list[SourceEntry]) -> list[tuple[Entry, Totals]]:
            entries = await self._put_files(batch)
            return [(e, Totals(files=1, bytes=e.size, chunks=len(e.chunks))) for e in entries]

        links: list[tuple[Entry, Totals]] = []
        for child in children:
            if child.is_symlink:
                assert child.link_target is not None
                links.append(
                    (
                        SymlinkEntry(child.name, child.link_target, self._mtime(child)),
                        Totals(symlinks=1),
                    )
                )
        subdir_jobs = [subdir(c) for c in children if c.is_dir]
        file_batches = self._file_batches([c for c in children if c.is_file])
        key = cached = None
        if self.dirs_cache is not None:
            key = self.dirs_cache.fingerprint(children)
            cached = self.dirs_cache.lookup(key)
        if cached is None:
            jobs = subdir_jobs + [files(batch) for batch in file_batches]
            results = [item for group in await gather_or_cancel(jobs) for item in group]
        else:
            # Unchanged listing: the subtrees decide whether the whole tree can be reused.
            results = [item for group in await gather_or_cancel(subdir_jobs) for item in group]
            if await self._reusable(cached, [e for e, _ in results]):
                self._count_reused(key, cached, results, len(links))
                self._used_trees.add(cached.tree_id)
                self._used_chunks.update(cached.chunks)
                return cached.tree_id, cached.totals
            jobs = [files(batch) for batch in file_batches]
            results += [item for group in await gather_or_cancel(jobs) for item in group]
        self.stats.symlinks += len(links)
        results += links
        tree = Tree.build(entry for entry, _ in results)
        data = tree.to_bytes()
        tree_id = hash_bytes(data)
        await self._trees.submit(tree_id, data)  # batched with sibling directories' trees
        self._used_trees.add(tree_id)
        self._used_chunks.update(
            ref.id for entry, _ in results if isinstance(entry, FileEntry) for ref in entry.chunks
        )
        self.stats.dirs += 1
        totals = Totals(
            files=sum(t.files for _, t in results),
            dirs=sum(t.dirs for _, t in results),
            symlinks=sum(t.symlinks for _, t in results),
            bytes=sum(t.bytes for _, t in results),
            chunks=sum(t.chunks for _, t in results),
        )
        if key is not None and not skipped and recordable(children, self._started_ns):
            self._dir_records.append((key, _remembered(tree_id, totals, results)))
        return tree_id, totals

    async def _reusable(self, cached: CachedDir, subdirs: list[Entry]) -> bool:
        """The same subtrees, and the store still holds the tree and its own chunks."""
        if tuple(e.tree for e in subdirs if isinstance(e, DirEntry)) != cached.subtrees:
            return False
        writer = self._writer
        return writer.has(ObjectKind.TREE, cached.tree_id) and not writer.missing(
            ObjectKind.CHUNK, cached.chunks
        )

    def _count_reused(
        self, key: bytes, cached: CachedDir, subdirs: list[tuple[Entry, Totals]], links: int
    ) -> None:
        """Count a reused directory's own files; its subdirectories counted theirs."""
        own_files = cached.totals.files - sum(t.files for _, t in subdirs)
        own_bytes = cached.totals.bytes - sum(t.bytes for _, t in subdirs)
        own_chunks = cached.totals.chunks - sum(t.chunks for _, t in subdirs)
        self._count(
            files=own_files,
            files_unchanged=own_files,
            bytes_unchanged=own_bytes,
            chunks=own_chunks,
            symlinks=links,
            dirs=1,
        )
        self.progress.advance(own_bytes)
        assert self.dirs_cache is not None
        if self.dirs_cache.needs_refresh(cached):
            self._dir_records.append((key, cached))

    def _is_skipped(self, child: SourceEntry) -> bool:
        if child.is_dir and (child.st.st_dev, child.st.st_ino) in self._skip_ids:
            self.progress.warn(f"skipped {child.rel}: it holds the store or a cache")
            self.stats.skipped.append((child.rel, "store or cache"))
            return True
        return False

    def _file_batches(self, files: list[SourceEntry]) -> list[list[SourceEntry]]:
        """Small files travel together: one thread hop and one chunk group per batch."""
        return batch_by_size(
            files,
            lambda child: child.st.st_size,
            max_bytes=_GROUP_BYTES,
            max_items=_BATCH_FILES,
            alone_from=self.options.params.max_size,
        )

    def _mtime(self, child: SourceEntry) -> int | None:
        return child.st.st_mtime_ns if self.options.mtimes else None

    # ------------------------------------------------------------ files

    async def _put_files(self, batch: list[SourceEntry]) -> list[FileEntry]:
        """Entries of `batch`, in order: unchanged files from the files cache, the rest read."""
        reused, remember = await self._reuse_unchanged(batch)
        fresh = [child for child in batch if child.path not in reused]
        read: dict[str, FileEntry] = {}
        if fresh:
            # A large file's chunks are compressed by the CPU pool, so it uses every core.
            large = len(fresh) == 1 and fresh[0].st.st_size >= _COMPRESS_IN_POOL_FROM
            if not large and self._in_worker_process(fresh):
                entries, records = await self._read_in_worker(fresh)
            else:
                entries, records = await self._read_in_thread(fresh, compress_here=not large)
            read = {child.path: entry for child, entry in zip(fresh, entries, strict=True)}
            remember.extend(records)
        if self.files_cache is not None and remember:
            await asyncio.to_thread(self.files_cache.record_many, remember, self._started_ns)
        return [reused.get(child.path) or read[child.path] for child in batch]

    async def _reuse_unchanged(
        self, batch: list[SourceEntry]
    ) -> tuple[dict[str, FileEntry], list[tuple[str, CachedFile]]]:
        """Files the cache remembers with the same stat and whose chunks are all still stored.

        Decided before any file is read, so a warm put of an unchanged tree
        reads no content and starts no worker process.
        """
        if self.files_cache is None:
            return {}, []
        cached = reusable_candidates(self.files_cache, batch, self.options.inline_max)
        if not cached:
            return {}, []
        hits = still_stored(cached, await self._missing(chunk_ids(cached)))
        reused: dict[str, FileEntry] = {}
        for child in batch:
            hit = hits.get(child.path)
            if hit is not None:
                entry = reused[child.path] = entry_from_cache(self._settings, child, hit)
                self._count(
                    files=1, files_unchanged=1, bytes_unchanged=entry.size, chunks=len(hit.chunks)
                )
                self.progress.advance(entry.size)
        return reused, list(hits.items())

    async def _read_in_thread(
        self, batch: list[SourceEntry], compress_here: bool
    ) -> tuple[list[FileEntry], list[tuple[str, CachedFile]]]:
        groups = _GroupSender(self, compress_here=compress_here)
        done = await self._loop.run_in_executor(self._file_pool, self._read_files, batch, groups)
        for future in groups.waits:
            await asyncio.wrap_future(future)
        return done

    def _in_worker_process(self, batch: list[SourceEntry]) -> bool:
        """Hand small files to worker processes once the tree proves big enough to pay for them.

        Starting the workers costs about a tenth of a second, so a small put
        stays in threads.
        """
        choice = self.options.processes
        if choice is False or self.options.workers < 2:
            return False
        if choice is None and self._pool is None:
            self._small_bytes += sum(child.st.st_size for child in batch)
            return self._small_bytes > _PROCESSES_FROM
        return True

    def _worker_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            config = putworker.WorkerConfig(
                settings=self._settings,
                level=self.options.level,
                known=self._writer.known_chunks(),
            )
            self._pool = ProcessPoolExecutor(
                self.options.workers,
                mp_context=multiprocessing.get_context("forkserver"),
                initializer=putworker.start,
                initargs=(config,),
            )
        return self._pool

    async def _read_in_worker(
        self, batch: list[SourceEntry]
    ) -> tuple[list[FileEntry], list[tuple[str, CachedFile]]]:
        async with self._worker_slots:
            if self._abort.is_set():
                raise asyncio.CancelledError
            try:
                result = await self._loop.run_in_executor(
                    self._worker_pool(), putworker.put_batch, batch
                )
            except BrokenProcessPool:
                raise CasError("a put worker process died (out of memory or killed)") from None
        for warning in result.warnings:
            self.progress.warn(warning)
        if result.frames:
            added = await self._writer.add(ObjectKind.CHUNK, result.frames)
            for (_, raw, frame), new in zip(result.frames, added, strict=True):
                if new:
                    self._count(chunks_new=1, bytes_new_raw=raw, bytes_uploaded=len(frame))
        self._count(**result.counts)
        self.progress.advance(result.counts["bytes_read"])
        return result.entries, result.remember

    def _read_files(
        self, batch: list[SourceEntry], groups: _GroupSender
    ) -> tuple[list[FileEntry], list[tuple[str, CachedFile]]]:
        """Runs in a reader thread: read, cut and hash files, send their chunks on."""
        entries = []
        remember: list[tuple[str, CachedFile]] = []
        cutter = self._cutter()
        with OpenedAhead(batch if len(batch) > 1 else []) as opened:
            cuts = [cutter.cut(child, groups.add, opened.take(child)) for child in batch]
        for child, cut in zip(batch, cuts, strict=True):
            self._count(files=1, bytes_read=cut.entry.size, chunks=len(cut.entry.chunks))
            warning = cut.warning(child)
            if warning is not None:
                self.progress.warn(warning)
            record = cut.remembered(child)
            if record is not None:
                remember.append((child.path, record))
            entries.append(cut.entry)
        groups.flush()
        return entries, remember

    def _cutter(self) -> FileCutter:
        cutter = getattr(self._local, "cutter", None)
        if cutter is None:
            chunker = self._chunker_factory(self.options.params)
            cutter = self._local.cutter = FileCutter(
                self._settings, chunker, self._abort, self.progress.advance
            )
        return cutter

    def _submit_group(
        self, group: list[tuple[ObjectId, bytes]], compress_here: bool
    ) -> Future[None]:
        """Runs in a reader thread: claim the group's new chunks, compress, hand over the upload.

        Small files are compressed right here, in the thread that read them:
        fewer threads contending for the GIL made many-small-file puts
        faster. Groups of large files are compressed in the CPU pool so one
        big file still uses every core.
        """
        while not self._budget.acquire(timeout=0.1):
            if self._abort.is_set():
                raise asyncio.CancelledError
        try:
            claim = asyncio.run_coroutine_threadsafe(self._claim(group), self._loop).result()
        except BaseException:
            self._budget.release()
            raise
        blobs = None
        if compress_here and claim.todo:
            try:
                blobs = _encode_all(claim.todo, self.options.level)
            except BaseException as exc:
                asyncio.run_coroutine_threadsafe(self._settle(claim, exc), self._loop).result()
                self._budget.release()
                raise
        return asyncio.run_coroutine_threadsafe(self._finish(claim, blobs), self._loop)

    # ------------------------------------------------------------ chunks (event loop)

    async def _claim(self, group: list[tuple[ObjectId, bytes]]) -> _Claim:
        """Register the group's chunks for this put and find which the store lacks."""
        claim = _Claim()
        for chunk_id, data in group:
            known = self._stored.get(chunk_id)
            if known is not None:
                claim.earlier.append(known)  # the same chunk, met earlier in this put
            else:
                self._stored[chunk_id] = self._loop.create_future()
                claim.fresh.append(chunk_id)
                claim.data[chunk_id] = data
        if claim.fresh:
            try:
                absent = await self._missing(claim.fresh)
            except BaseException as exc:
                await self._settle(claim, exc)
                raise
            claim.todo = [(i, claim.data[i]) for i in claim.fresh if i in absent]
        return claim

    async def _finish(self, claim: _Claim, blobs: list[tuple[ObjectId, bytes]] | None) -> None:
        """Compress (unless the reader did) and upload; then the chunks count as stored."""
        try:
            try:
                if claim.todo:
                    if blobs is None:
                        blobs = await self._loop.run_in_executor(
                            self._cpu_pool, _encode_all, claim.todo, self.options.level
                        )
                    created = await self._writer.add(
                        ObjectKind.CHUNK,
                        [(i, len(d), b) for (i, d), (_, b) in zip(claim.todo, blobs, strict=True)],
                    )
                    for (_, data), (_, blob), new in zip(claim.todo, blobs, created, strict=True):
                        if new:
                            self._count(
                                chunks_new=1, bytes_new_raw=len(data), bytes_uploaded=len(blob)
                            )
            except BaseException as exc:
                await self._settle(claim, exc)
                raise
            await self._settle(claim, None)
            if claim.earlier:
                await asyncio.gather(*(asyncio.shield(f) for f in claim.earlier))
        finally:
            self._budget.release()

    async def _settle(self, claim: _Claim, exc: BaseException | None) -> None:
        """Resolve the futures other groups wait on for this group's chunks."""
        for chunk_id in claim.fresh:
            future = self._stored.get(chunk_id)
            if future is None or future.done():
                continue
            if exc is None:
                future.set_result(None)
            else:
                del self._stored[chunk_id]  # a retry may store it later
                future.set_exception(exc)
                future.exception()  # reported by whoever raised it
        claim.fresh = [] if exc is not None else claim.fresh

    def _count(self, **deltas: int) -> None:
        with self._stats_lock:
            for key, value in deltas.items():
                setattr(self.stats, key, getattr(self.stats, key) + value)


def _identities(paths: Iterable[str | os.PathLike[str]]) -> set[tuple[int, int]]:
    """(device, inode) of each existing directory: compared without resolving every path."""
    found = set()
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        found.add((st.st_dev, st.st_ino))
    return found


def _remembered(
    tree_id: ObjectId, totals: Totals, results: list[tuple[Entry, Totals]]
) -> CachedDir:
    """The directories-cache record of a tree just built from `results`."""
    subtrees = tuple(e.tree for e, _ in results if isinstance(e, DirEntry))
    own = (r.id for e, _ in results if isinstance(e, FileEntry) for r in e.chunks)
    return CachedDir(tree_id, totals, subtrees, tuple(dict.fromkeys(own)))


def _encode_all(items: list[tuple[ObjectId, bytes]], level: int) -> list[tuple[ObjectId, bytes]]:
    return [(chunk_id, codec.encode(data, level)) for chunk_id, data in items]


@dataclass
class _Claim:
    """The chunks of one group that this group is responsible for storing."""

    fresh: list[ObjectId] = field(default_factory=list)
    data: dict[ObjectId, bytes] = field(default_factory=dict)
    earlier: list[asyncio.Future[None]] = field(default_factory=list)
    todo: list[tuple[ObjectId, bytes]] = field(default_factory=list)


class _GroupSender:
    """Collects chunks in a reader thread and sends them to the loop in groups."""

    def __init__(self, uploader: Uploader, compress_here: bool = True) -> None:
        self._uploader = uploader
        self.compress_here = compress_here
        self._group: list[tuple[ObjectId, bytes]] = []
        self._bytes = 0
        self.waits: list[Future[None]] = []

    def add(self, chunk_id: ObjectId, data: bytes) -> None:
        self._group.append((chunk_id, data))
        self._bytes += len(data)
        if self._bytes >= _GROUP_BYTES or len(self._group) >= _GROUP_CHUNKS:
            self.flush()

    def flush(self) -> None:
        if self._group:
            group, self._group, self._bytes = self._group, [], 0
            self.waits.append(self._uploader._submit_group(group, self.compress_here))


async def put_directory(
    repo: Repository,
    source: str | os.PathLike[str],
    options: PutOptions | None = None,
    progress: Progress | None = None,
) -> PutResult:
    """Convenience wrapper: one `Uploader`, one put."""
    return await Uploader(repo, options, progress).put(source)


__all__ = ["PutOptions", "PutResult", "PutStats", "Uploader", "put_directory"]
