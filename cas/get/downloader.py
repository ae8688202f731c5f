"""The downward transfer engine: a manifest id in, a directory out.

1. Read the manifest and walk its trees (`cas.get.browse.walk`), verifying and
   validating every tree before anything is written: names, chunk sizes,
   depth. Only the trees on the way to selected paths (`cas.get.selection`) are
   read. A hostile manifest fails here, with the destination untouched.
2. Survey the destination (`cas.get.survey`): a file already there with the
   same size whose chunk ids (files cache, or cut again with the manifest's
   parameters) match the manifest is identical and left untouched (only
   its mode and mtime are set if they differ).
3. Sources for the chunks of the files to write, in order: the LMDB cache,
   files in the destination, `--seed` directories (both indexed by
   `cas.get.localchunks`, only for chunks still needed), the store. Every local
   chunk is verified against its id before use; a mismatch costs a fetch.
4. Pin destination files whose old bytes will be copied but which this get
   replaces (hard links to temporary names), move files out of the way of
   directories, and create the directories (owner-writable for now).
5. Write files concurrently, each to a temporary name, its whole-content
   digest checked before it is renamed into place (`cas.get.fswrite`): every
   path holds the old file or the new one, never a mix.
6. Create symlinks, only now that no more file content will be written;
   with `--delete`, remove what the manifest lacks; drop pins and whatever
   was set aside; set directory modes and mtimes, deepest first.
"""

from __future__ import annotations

import asyncio
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cas.aiotools import gather_or_cancel
from cas.batching import batch_by_size, batched
from cas.caches.files import CachedFile, FileIdentity, FilesCache
from cas.errors import DestinationError, ObjectNotFound, UsageError
from cas.get.browse import Located, check_digest, checked_length, lookup, split_path, walk
from cas.get.fswrite import Destination, PendingFile
from cas.get.localchunks import (
    Described,
    Describer,
    LocalChunks,
    LocalFile,
    Origin,
    regular_files,
)
from cas.get.selection import Selection
from cas.get.survey import Layout, survey
from cas.ids import ObjectId, new_hasher
from cas.objects import ChunkRef, DirEntry, FileEntry, Manifest, SymlinkEntry
from cas.progress import NullProgress, Progress
from cas.repo import Repository

_UNIT_CONCURRENCY: Final = 4
_BATCH_BYTES: Final = 8 << 20
_BATCH_FILES: Final = 256
_DESCRIBE_BATCH: Final = 256
_SEGMENT_WINDOW: Final = 4
_MODE_MASK: Final = 0o1777
SOURCES: Final = ("cache", "destination", "seed", "store")


@dataclass(frozen=True)
class GetOptions:
    """What to take from the manifest, where else to look, and whether to act."""

    selection: Selection = field(default_factory=Selection)
    subpath: str = ""
    """Get only this directory of the manifest (`ID:PATH`)."""
    seeds: tuple[str, ...] = ()
    delete: bool = False
    """Remove selected destination paths the manifest lacks."""
    dry_run: bool = False


@dataclass
class SourceCount:
    """Files that take chunks from one source, and those chunks (uncompressed bytes)."""

    files: int = 0
    chunks: int = 0
    bytes: int = 0


@dataclass
class GetStats:
    """What a get did (or, with `dry_run`, would do), for its summary line and `--json`."""

    files: int = 0
    """Files written."""
    files_untouched: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes_written: int = 0
    bytes_untouched: int = 0
    chunks_from_cache: int = 0
    chunks_from_store: int = 0
    chunks_from_destination: int = 0
    chunks_from_seeds: int = 0
    bytes_from_cache: int = 0
    """Stored (compressed) bytes read from the cache."""
    bytes_from_store: int = 0
    """Stored (compressed) bytes fetched from the store."""
    bytes_from_destination: int = 0
    bytes_from_seeds: int = 0
    extra_files: int = 0
    """Regular files in the destination the manifest lacks (at or under `extra_paths`)."""
    extra_bytes: int = 0
    extra_paths: list[str] = field(default_factory=list)
    deleted: int = 0
    leftovers_removed: int = 0
    """Temporaries an interrupted get had left in the destination, removed by this one."""
    """Extra paths removed (`--delete`)."""
    planned: dict[str, SourceCount] = field(default_factory=dict)
    dry_run: bool = False
    seconds: float = 0.0


@dataclass
class _Plan:
    dirs: list[Located] = field(default_factory=list)
    files: list[Located] = field(default_factory=list)
    symlinks: list[Located] = field(default_factory=list)

    def entries(self) -> list[Located]:
        return [*self.dirs, *self.files, *self.symlinks]


async def plan(
    repo: Repository,
    manifest: Manifest,
    root: ObjectId | None = None,
    selection: Selection | None = None,
) -> _Plan:
    """Read and validate every tree on the way first, so a bad manifest writes nothing.

    With a selection, only selected files and symlinks are kept, with the
    directories on the way to them and directories selected themselves.
    """
    selection = selection or Selection()
    every = selection.everything
    result = _Plan()
    dirs: list[Located] = []
    async for located in walk(repo, manifest, root, enter=None if every else selection.enters):
        entry = located.entry
        if isinstance(entry, DirEntry):
            dirs.append(located)
        elif every or selection.selects(located.path):
            if isinstance(entry, FileEntry):
                result.files.append(located)
            elif isinstance(entry, SymlinkEntry):
                result.symlinks.append(located)
    if every:
        result.dirs = dirs
        return result
    keep: set[tuple[str, ...]] = set()
    for located in (*result.files, *result.symlinks):
        for depth in range(1, len(located.parts) + 1):
            keep.add(located.parts[:depth])
    result.dirs = [
        d
        for d in dirs
        if (*d.parts, d.entry.name) in keep or selection.selects(d.path, is_dir=True)
    ]
    return result


def _split(rel: str) -> tuple[tuple[str, ...], str]:
    parts = rel.split("/")
    return tuple(parts[:-1]), parts[-1]


class Downloader:
    """One get into one destination."""

    def __init__(
        self,
        repo: Repository,
        progress: Progress | None = None,
        *,
        files_cache_dir: Path | None = None,
    ) -> None:
        self.repo = repo
        self.progress: Progress = progress or NullProgress()
        self.files_cache_dir = files_cache_dir
        self.stats = GetStats()
        self._lock = threading.Lock()
        self._local: LocalChunks | None = None
        self._in_cache: set[ObjectId] = set()
        self._described: dict[str, Described] = {}
        self._written: list[tuple[str, os.stat_result, FileEntry]] = []

    async def get(
        self,
        manifest_id: ObjectId,
        dest: str | os.PathLike[str],
        options: GetOptions | None = None,
    ) -> GetStats:
        """Make `dest` (created if missing) hold the manifest's selected entries."""
        options = options or GetOptions()
        if not os.fspath(dest):
            raise UsageError("destination path is empty")
        for seed in options.seeds:
            if not os.path.isdir(seed):
                raise UsageError(f"--seed {seed}: not a directory")
        started = time.monotonic()
        manifest = await self.repo.get_manifest(manifest_id)
        root = await self._subtree(manifest, options.subpath)
        todo = await plan(self.repo, manifest, root, options.selection)
        unmatched = options.selection.unmatched()
        if unmatched:
            raise ObjectNotFound(
                "nothing in the manifest matches --include " + ", ".join(map(repr, unmatched))
            )
        dest_root = os.path.abspath(os.fspath(dest))
        if os.path.lexists(dest_root) and not os.path.isdir(dest_root):
            raise DestinationError(f"destination {dest_root} exists and is not a directory")
        existing = await asyncio.to_thread(survey, dest_root, options.selection)
        layout = Layout.build(existing, todo.entries(), options.selection, options.delete)
        identical = await self._find_sources(manifest, dest_root, layout, todo, options)
        to_write = [f for f in todo.files if f.path not in identical]
        self._planned_stats(todo, to_write, identical, layout)
        if not options.dry_run:
            await self._apply(dest, manifest, todo, layout, identical, to_write, options)
            await asyncio.to_thread(self._remember_written, dest_root, manifest)
        self.stats.seconds = time.monotonic() - started
        return self.stats

    async def _find_sources(
        self,
        manifest: Manifest,
        root: str,
        layout: Layout,
        todo: _Plan,
        options: GetOptions,
    ) -> set[str]:
        """Identical files (returned), then local chunk sources for the rest (indexed)."""
        files_cache = None
        if self.files_cache_dir is not None and (layout.existing or options.seeds):
            files_cache = FilesCache(self.files_cache_dir, self.repo.store.url, manifest.chunker)
        try:
            describer = Describer(manifest.chunker, files_cache)
            identical = await self._identical(root, layout, describer)
            to_write = [f for f in todo.files if f.path not in identical]
            await self._index_sources(root, layout, describer, to_write, options)
            if self.repo.store.capabilities.remote:
                self.repo.plan(self._from_store(to_write))
            await asyncio.to_thread(describer.record)
        finally:
            self._described.clear()
            if files_cache is not None:
                files_cache.close()
        return identical

    def _planned_stats(
        self, todo: _Plan, to_write: list[Located], identical: set[str], layout: Layout
    ) -> None:
        s = self.stats
        s.planned = self.planned_sources(to_write)
        s.extra_files, s.extra_bytes = layout.extra_files()
        s.extra_paths = list(layout.extras)
        s.files_untouched = len(identical)
        s.bytes_untouched = sum(_file_size(f) for f in todo.files if f.path in identical)
        s.dry_run = True  # until `_apply` has written
        s.files = len(to_write)
        s.bytes_written = sum(_file_size(f) for f in to_write)
        s.dirs = len(todo.dirs)
        s.symlinks = len(todo.symlinks)

    async def _apply(
        self,
        dest: str | os.PathLike[str],
        manifest: Manifest,
        todo: _Plan,
        layout: Layout,
        identical: set[str],
        to_write: list[Located],
        options: GetOptions,
    ) -> None:
        """Steps 4-6 of the module docstring: the only part that changes the destination."""
        s = self.stats
        s.dry_run = False
        s.files = s.bytes_written = s.dirs = s.symlinks = 0
        self.progress.set_total(sum(_file_size(f) for f in to_write), len(to_write))
        before_cache = (self.repo.chunks_from_cache, self.repo.bytes_from_cache)
        before_store = (self.repo.chunks_from_store, self.repo.bytes_from_store)
        with Destination(dest) as out:
            try:
                await asyncio.to_thread(self._pin_sources, out)
                await asyncio.to_thread(self._make_dirs, out, todo.dirs, layout)
                await self._write_files(out, manifest, to_write)
                await asyncio.to_thread(self._touch_identical, out, todo.files, identical, layout)
                await asyncio.to_thread(self._make_links, out, todo.symlinks)
                if options.delete:
                    await asyncio.to_thread(self._delete_extras, out, layout)
            finally:
                await asyncio.to_thread(self._cleanup, out)
            await asyncio.to_thread(self._finish_dirs, out, todo.dirs)
            s.leftovers_removed = out.leftovers_removed
        s.chunks_from_cache = self.repo.chunks_from_cache - before_cache[0]
        s.bytes_from_cache = self.repo.bytes_from_cache - before_cache[1]
        s.chunks_from_store = self.repo.chunks_from_store - before_store[0]
        s.bytes_from_store = self.repo.bytes_from_store - before_store[1]
        if self._local is not None:
            s.chunks_from_destination = self._local.chunks_read[Origin.DESTINATION]
            s.bytes_from_destination = self._local.bytes_read[Origin.DESTINATION]
            s.chunks_from_seeds = self._local.chunks_read[Origin.SEED]
            s.bytes_from_seeds = self._local.bytes_read[Origin.SEED]

    async def _subtree(self, manifest: Manifest, subpath: str) -> ObjectId:
        if not split_path(subpath):
            return manifest.root
        found = await lookup(self.repo, manifest, subpath)
        if found is None:
            return manifest.root
        if not isinstance(found.entry, DirEntry):
            raise UsageError(f"{found.path!r} is not a directory of the manifest (use cas cat)")
        return found.entry.tree

    # ------------------------------------------------------------ planning

    async def _identical(self, root: str, layout: Layout, describer: Describer) -> set[str]:
        """Manifest files the destination already holds byte for byte."""
        same: set[str] = set()
        for batch in batched(
            ((rel, layout.existing[rel]) for rel in layout.candidates), _DESCRIBE_BATCH
        ):
            items = [(os.path.join(root, rel), st) for rel, st in batch]
            described = await describer.describe_many(items)
            self._described.update(described)
            for rel, _st in batch:
                got = described.get(os.path.join(root, rel))
                entry = layout.candidates[rel].entry
                assert isinstance(entry, FileEntry)
                if (
                    got is not None
                    and got.digest == entry.digest
                    and (entry.inline is not None or got.chunks == entry.chunks)
                ):
                    same.add(rel)
                else:
                    layout.doomed.add(rel)
        return same

    async def _index_sources(
        self,
        root: str,
        layout: Layout,
        describer: Describer,
        to_write: list[Located],
        options: GetOptions,
    ) -> None:
        """Find the still-needed chunks in the destination, then in the seeds."""
        needed: dict[ObjectId, int] = {}
        for located in to_write:
            for ref in located.entry.chunks:  # type: ignore[union-attr]
                needed[ref.id] = ref.length
        cache = self.repo.cache
        self._in_cache = await asyncio.to_thread(cache.has_many, needed) if cache else set()
        wanted = set(needed) - self._in_cache
        local = LocalChunks()
        self._local = local
        if not wanted:
            return
        regular = [
            (rel, st) for rel, st in sorted(layout.existing.items()) if stat.S_ISREG(st.st_mode)
        ]
        for batch in batched(regular, _DESCRIBE_BATCH):
            described = {
                path: self._described[path]
                for rel, _st in batch
                if (path := os.path.join(root, rel)) in self._described
            }
            rest = [
                (path, st)
                for rel, st in batch
                if (path := os.path.join(root, rel)) not in self._described
            ]
            described.update(await describer.describe_many(rest))
            for rel, _st in batch:
                path = os.path.join(root, rel)
                if path in described:
                    file = LocalFile(path, Origin.DESTINATION, layout.replaced(rel), rel)
                    local.add(file, described[path].chunks, wanted)
        for seed in options.seeds:
            if len(local) >= len(wanted):
                break
            for batch in batched(regular_files(os.path.abspath(seed)), _DESCRIBE_BATCH):
                described = await describer.describe_many(batch)
                for path, _st in batch:
                    if path in described:
                        local.add(LocalFile(path, Origin.SEED), described[path].chunks, wanted)
                if len(local) >= len(wanted):
                    break

    def _from_store(self, to_write: list[Located]) -> list[ObjectId]:
        """Chunks no local source holds: the store's ranged reads fetch their neighbours too."""
        local = self._local
        return [
            ref.id
            for located in to_write
            for ref in located.entry.chunks  # type: ignore[union-attr]
            if ref.id not in self._in_cache and (local is None or local.origin(ref.id) is None)
        ]

    def planned_sources(self, to_write: list[Located]) -> dict[str, SourceCount]:
        """Which source each chunk of the files to write is expected to come from."""
        counts = {name: SourceCount() for name in SOURCES}
        local = self._local
        seen: set[ObjectId] = set()
        for located in to_write:
            entry = located.entry
            assert isinstance(entry, FileEntry)
            used: set[str] = set()
            for ref in entry.chunks:
                if ref.id in self._in_cache:
                    source = "cache"
                else:
                    origin = local.origin(ref.id) if local is not None else None
                    source = str(origin) if origin is not None else "store"
                used.add(source)
                if ref.id not in seen:
                    seen.add(ref.id)
                    counts[source].chunks += 1
                    counts[source].bytes += ref.length
            for source in used:
                counts[source].files += 1
        return counts

    # ------------------------------------------------------------ writing

    def _pin_sources(self, out: Destination) -> None:
        """Keep the old bytes of files this get replaces readable until it ends."""
        if self._local is None:
            return
        for file in self._local.files():
            if file.doomed and file.rel is not None:
                parts, name = _split(file.rel)
                pinned = out.pin(parts, name)
                if pinned is not None:
                    file.path = pinned

    def _make_dirs(self, out: Destination, dirs: list[Located], layout: Layout) -> None:
        for located in dirs:
            if located.path in layout.dirs_over_files:
                out.move_aside(located.parts, located.entry.name)
            out.make_dir(located.parts, located.entry.name)
            self.stats.dirs += 1

    def _touch_identical(
        self, out: Destination, files: list[Located], identical: set[str], layout: Layout
    ) -> None:
        """Untouched files keep their bytes; only a differing mode or mtime is set."""
        for located in files:
            if located.path not in identical:
                continue
            entry = located.entry
            assert isinstance(entry, FileEntry)
            st = layout.existing[located.path]
            same_mode = stat.S_IMODE(st.st_mode) & _MODE_MASK == entry.mode & _MODE_MASK
            same_mtime = entry.mtime_ns is None or st.st_mtime_ns == entry.mtime_ns
            if not (same_mode and same_mtime):
                out.set_metadata(located.parts, entry.name, entry.mode, entry.mtime_ns)

    def _delete_extras(self, out: Destination, layout: Layout) -> None:
        for rel in layout.extras:
            parts, name = _split(rel)
            out.remove(parts, name)
            self.stats.deleted += 1

    @staticmethod
    def _cleanup(out: Destination) -> None:
        out.remove_pins()
        out.remove_asides()

    def _note_written(self, located: Located, final_stat: os.stat_result | None) -> None:
        entry = located.entry
        if final_stat is not None and isinstance(entry, FileEntry) and entry.chunks:
            self._written.append((located.path, final_stat, entry))

    def _remember_written(self, dest_root: str, manifest: Manifest) -> None:
        """Remember the files just written, so the next get or put need not read them.

        A file is recorded only if its `lstat` is still what it was right after its
        rename (a change since moved its ctime) and its ctime lies outside the files
        cache's racy window before this moment. A change within the same clock tick
        as the rename itself would go unseen: the bound every stat-based cache has.
        """
        written, self._written = self._written, []
        if self.files_cache_dir is None or not written:
            return
        remember = []
        for rel, final_stat, entry in written:
            path = os.path.join(dest_root, rel)
            try:
                now = os.lstat(path)
            except OSError:
                continue
            identity = FileIdentity.of(final_stat)
            if FileIdentity.of(now) == identity:
                remember.append((path, CachedFile(identity, entry.digest, entry.chunks)))
        if not remember:
            return
        files_cache = FilesCache(self.files_cache_dir, self.repo.store.url, manifest.chunker)
        try:
            files_cache.record_many(remember, time.time_ns())
        finally:
            files_cache.close()

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
        local = self._local
        reader = local.read_many if local is not None and len(local) else None
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
            self.stats.files += 1
            self.stats.bytes_written += entry.size
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
            self.stats.files += 1
            self.stats.bytes_written += size
        self.progress.advance(size, files=1)

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


async def restore_manifest(
    repo: Repository,
    manifest_id: ObjectId,
    dest: str | os.PathLike[str],
    progress: Progress | None = None,
) -> GetStats:
    """Convenience wrapper: one `Downloader`, one get."""
    return await Downloader(repo, progress).get(manifest_id, dest)


def _file_size(located: Located) -> int:
    """The size of a planned file (plans hold files only where sizes are asked)."""
    entry = located.entry
    assert isinstance(entry, FileEntry)
    return entry.size
