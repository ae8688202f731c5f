"""The upward transfer engine: a directory in, a manifest id out.

1. One thread walks the source depth first, in a deterministic order
   (`cas.put.listing`), skipping excluded paths, and builds each directory's tree
   once its subdirectories' trees and files' entries are known
   (`cas.put.treewalk`).
2. Files travel in batches to reader threads (`cas.put.files`): unchanged
   ones come from the files cache without a read; the others are cut by
   FastCDC and named by BLAKE3, tiny ones kept inline in their tree; only
   chunks no parent and no other batch holds are compressed and packed.
3. The one pack writer of the put (`cas.put.packwriter`) appends frames to the
   open pack and uploads sealed ones, at most two at a time, on the event
   loop; a window of batches in flight bounds memory whatever the tree size.
4. The index (where every object of the manifest lives) is written after
   every pack it names, the manifest after its index, the ref after the
   manifest. An interrupted put therefore never leaves a manifest that
   names missing data, and re-running it uploads only the rest.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final

from cas import __version__, codec
from cas.caches.dirs import DirsCache
from cas.caches.files import FilesCache, PutJournal
from cas.chunking import ChunkParams, FastCdcChunker
from cas.errors import ConcurrentGcError, ObjectNotFound, SourceError, UsageError
from cas.gc.fence import GcFence
from cas.gc.verify import manifest_complete
from cas.ids import ObjectId, hash_bytes
from cas.objects import Manifest, Totals, now_rfc3339
from cas.pack import MAX_PACK_BYTES, TARGET_PACK_BYTES, trailer_bytes
from cas.packindex import PackIndex
from cas.progress import NullProgress, Progress
from cas.put.filecut import CutSettings
from cas.put.files import FileStage, WriterFeed
from cas.put.listing import Excludes, SourceEntry
from cas.put.naming import PutNaming
from cas.put.packwriter import PackWriter
from cas.put.treewalk import TreeWalk
from cas.repo import Repository
from cas.store.base import validate_ref_name

DEFAULT_INLINE_MAX: Final = 4096
log = logging.getLogger("cas.put.uploader")


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
    """Reader threads or worker processes (and compression threads for large files)."""
    processes: bool | None = None
    """Worker processes for small files: None decides by tree size, False never, True always."""
    parent: str | None = None
    """A ref or manifest id whose stored objects this put reuses instead of uploading.

    None: the newest ref beside `ref` (same prefix; without `ref`, the newest
    ref of the store), plus the manifest this source was last put as from
    this machine (files cache)."""
    pack_size: int = TARGET_PACK_BYTES
    """Seal packs at this many stored bytes."""
    skip_unreadable: bool = False
    """Leave out files and directories that cannot be read (listed in the stats), not fail."""

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


def check_source(root: str) -> None:
    """A put's source must be a readable directory (checked before a store is opened)."""
    try:
        st = os.stat(root)
    except FileNotFoundError:
        raise SourceError(f"no such directory: {root}") from None
    except OSError as exc:
        raise SourceError(f"cannot read {root}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SourceError(f"not a directory: {root}")


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
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    """Left out with `skip_unreadable`: (relative path, reason)."""


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
        # Directories never stored even when inside the source: the store and caches themselves.
        # The store itself, when it lies inside the source, is never put into itself.
        self._skip_dirs = list(skip_dirs)
        if repo.store.local_root is not None:
            self._skip_dirs.append(repo.store.local_root)
        self._skip_ids = _identities(self._skip_dirs)
        self._started_ns = time.time_ns()
        self.progress: Progress = progress or NullProgress()
        self.stats = PutStats()
        self._chunker_factory = chunker_factory or FastCdcChunker
        self._abort = threading.Event()
        self._stats_lock = threading.Lock()
        self._writer = PackWriter(
            repo.store,
            target=self.options.pack_size,
            spool_dir=None if files_cache is None else str(files_cache.directory),
        )
        self._used_chunks: set[ObjectId] = set()
        self._used_trees: set[ObjectId] = set()
        """Every chunk and tree the manifest reaches: exactly what its index lists."""
        self.gc_fence = True
        """Settle the manifest against concurrent collections (docs/gc.md); off only in tests."""

    # ------------------------------------------------------------ entry point

    async def put(self, source: str | os.PathLike[str]) -> PutResult:
        """Store the directory `source`; return the manifest id."""
        root = os.fspath(source)
        check_source(root)

        naming = PutNaming(self.repo, root, self.options.ref, self.options.parent, self.files_cache)
        await naming.check_ref()
        fence = GcFence(self.repo.store, enabled=self.gc_fence)
        await fence.begin()  # before any parent's index is read
        for parent in await naming.parents():
            try:
                index = await self.repo.index(parent)
            except ObjectNotFound:
                self.progress.warn(f"parent {parent} is no longer stored; uploading everything")
                continue
            if await self._writer.adopt(index):
                self.stats.parents.append(str(parent))
                log.info(
                    "parent %s: %d chunks, %d trees", parent, len(index.chunks), len(index.trees)
                )
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
            result = await self._put(root, fence, naming)
        except BaseException:
            await self._writer.abort()
            raise
        await naming.finished(result.manifest_id)
        if journal is not None:
            await asyncio.to_thread(journal.clear)
        return result

    async def _put(self, root: str, fence: GcFence, naming: PutNaming) -> PutResult:
        started = time.monotonic()
        root_tree, totals = await self._upload(root)
        walked = time.monotonic()
        await self._writer.close()
        self.stats.packs += self._writer.stats.packs
        log.info(
            "walked and read %d files in %.2f s; last packs stored %.2f s later (%d packs)",
            totals.files,
            walked - started,
            time.monotonic() - walked,
            self._writer.stats.packs,
        )

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
        named = await naming.completed(manifest)
        if named is not None:
            # The re-run of a put killed after naming its manifest: complete that one.
            manifest_id, manifest = named
            index = self._writer.index(manifest_id, self._used_chunks, self._used_trees)
            await self.repo.put_index(index)
        else:
            index = self._writer.index(manifest_id, self._used_chunks, self._used_trees)
            await self.repo.put_manifest(manifest, index)
        taken = await naming.name(manifest_id)
        # The ref (a root) comes before settling so that the manifest stays a root
        # however long settling takes, even with a short grace period.
        try:
            await fence.settle(
                lambda: manifest_complete(self.repo, manifest_id),
                lambda: self._repair(root, root_tree, index),
            )
        except ConcurrentGcError as exc:
            if opts.ref is not None and taken is None and not await naming.ref_exists():
                raise ConcurrentGcError(
                    f"ref {opts.ref!r} was removed while the put was settling (expired by "
                    f"gc's retention rules?), and gc then collected part of {manifest_id}"
                ) from None
            raise exc
        self.stats.gc_waits = fence.rounds
        log.info("manifest %s stored and settled (%d gc waits)", manifest_id, fence.rounds)
        if taken is not None:
            raise taken
        return PutResult(manifest_id, manifest, self.stats)

    async def _upload(self, root: str) -> tuple[ObjectId, Totals]:
        """Store everything below `root`; return the root tree and the totals.

        The walk runs in a thread of its own and the file stage in reader
        threads; the event loop meanwhile runs the pack writer's uploads.
        """
        self._started_ns = time.time_ns()
        loop = asyncio.get_running_loop()
        opts = self.options
        if self.dirs_cache is not None:
            await asyncio.to_thread(self.dirs_cache.prune)  # at most once a day
        files = FileStage(
            self._settings,
            opts.level,
            WriterFeed(self._writer, loop, self._count),
            lambda: self._chunker_factory(opts.params),
            workers=opts.workers,
            in_flight=2 * opts.workers + 1,
            processes=opts.processes,
            skip_unreadable=opts.skip_unreadable,
            files_cache=self.files_cache,
            started_ns=self._started_ns,
            abort=self._abort,
            progress=self.progress,
            count=self._count,
        )
        walk = TreeWalk(
            files,
            self._settings,
            opts.excludes,
            dirs_cache=self.dirs_cache,
            skip=self._is_skipped if self._skip_ids else None,
            started_ns=self._started_ns,
            in_flight=2 * opts.workers + 1,
            abort=self._abort,
            progress=self.progress,
            count=self._count,
        )
        walker = ThreadPoolExecutor(1, thread_name_prefix="cas-walk")
        running = loop.run_in_executor(walker, walk.run, root)
        try:
            done = await asyncio.shield(running)
        except BaseException:
            self._abort.set()  # the walk and the readers stop at their next step
            await asyncio.wait([running])
            raise
        finally:
            await asyncio.to_thread(files.close)
            walker.shutdown(wait=False)
            self.stats.skipped.extend(walk.skipped)
            self.stats.unreadable.extend(files.unreadable)
        self._used_chunks.update(walk.used_chunks)
        self._used_trees.update(walk.used_trees)
        if self.dirs_cache is not None and walk.dir_records:
            await asyncio.to_thread(self.dirs_cache.record_many, walk.dir_records)
        return done

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
        await self.repo.put_index(
            again._writer.index(written.manifest, again._used_chunks, again._used_trees)
        )

    def _is_skipped(self, child: SourceEntry) -> bool:
        if child.is_dir and (child.st.st_dev, child.st.st_ino) in self._skip_ids:
            self.progress.warn(f"skipped {child.rel}: it holds the store or a cache")
            self.stats.skipped.append((child.rel, "store or cache"))
            return True
        return False

    def _count(self, **deltas: int) -> None:
        with self._stats_lock:
            for key, value in deltas.items():
                setattr(self.stats, key, getattr(self.stats, key) + value)
        if deltas.get("files"):
            self.progress.advance(0, files=deltas["files"])


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


async def put_directory(
    repo: Repository,
    source: str | os.PathLike[str],
    options: PutOptions | None = None,
    progress: Progress | None = None,
) -> PutResult:
    """Convenience wrapper: one `Uploader`, one put."""
    return await Uploader(repo, options, progress).put(source)


__all__ = ["PutOptions", "PutResult", "PutStats", "Uploader", "put_directory"]
