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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cas.caches.files import CachedFile, FileIdentity, FilesCache
from cas.errors import DestinationError, ObjectNotFound, UsageError
from cas.get.browse import Located, lookup, split_path, walk
from cas.get.filewriter import FileWriter, Written
from cas.get.fswrite import Destination
from cas.get.localchunks import (
    Origin,
)
from cas.get.selection import Selection
from cas.get.sources import SourceCount, Sources, find_sources, split_rel
from cas.get.survey import Layout, survey
from cas.ids import ObjectId
from cas.objects import DirEntry, FileEntry, Manifest, SymlinkEntry
from cas.progress import NullProgress, Progress
from cas.repo import Repository

_MODE_MASK: Final = 0o1777


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
        sources = await find_sources(
            self.repo, self.files_cache_dir, manifest, dest_root, layout, todo.files, options.seeds
        )
        to_write = [f for f in todo.files if f.path not in sources.identical]
        self._planned_stats(todo, to_write, sources, layout)
        if not options.dry_run:
            written = await self._apply(dest, manifest, todo, layout, sources, to_write, options)
            await asyncio.to_thread(self._remember_written, dest_root, manifest, written)
        self.stats.seconds = time.monotonic() - started
        return self.stats

    def _planned_stats(
        self, todo: _Plan, to_write: list[Located], sources: Sources, layout: Layout
    ) -> None:
        identical = sources.identical
        s = self.stats
        s.planned = sources.planned(to_write)
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
        sources: Sources,
        to_write: list[Located],
        options: GetOptions,
    ) -> Written:
        """Steps 4-6 of the module docstring: the only part that changes the destination."""
        s = self.stats
        s.dry_run = False
        s.files = s.bytes_written = s.dirs = s.symlinks = 0
        self.progress.set_total(sum(_file_size(f) for f in to_write), len(to_write))
        before_cache = (self.repo.counts.chunks_from_cache, self.repo.counts.bytes_from_cache)
        before_store = (self.repo.counts.chunks_from_store, self.repo.counts.bytes_from_store)
        with Destination(dest) as out:
            writer = FileWriter(self.repo, self.progress, sources.local, out)
            try:
                await asyncio.to_thread(sources.pin, out)
                await asyncio.to_thread(self._make_dirs, out, todo.dirs, layout)
                await writer.write(manifest, to_write)
                await asyncio.to_thread(
                    self._touch_identical, out, todo.files, sources.identical, layout
                )
                await asyncio.to_thread(self._make_links, out, todo.symlinks)
                if options.delete:
                    await asyncio.to_thread(self._delete_extras, out, layout)
            finally:
                s.files, s.bytes_written = writer.done.files, writer.done.bytes
                await asyncio.to_thread(self._cleanup, out)
            await asyncio.to_thread(self._finish_dirs, out, todo.dirs)
            s.leftovers_removed = out.leftovers_removed
        s.chunks_from_cache = self.repo.counts.chunks_from_cache - before_cache[0]
        s.bytes_from_cache = self.repo.counts.bytes_from_cache - before_cache[1]
        s.chunks_from_store = self.repo.counts.chunks_from_store - before_store[0]
        s.bytes_from_store = self.repo.counts.bytes_from_store - before_store[1]
        local = sources.local
        s.chunks_from_destination = local.chunks_read[Origin.DESTINATION]
        s.bytes_from_destination = local.bytes_read[Origin.DESTINATION]
        s.chunks_from_seeds = local.chunks_read[Origin.SEED]
        s.bytes_from_seeds = local.bytes_read[Origin.SEED]
        return writer.done

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

    # ------------------------------------------------------------ writing

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
            parts, name = split_rel(rel)
            out.remove(parts, name)
            self.stats.deleted += 1

    @staticmethod
    def _cleanup(out: Destination) -> None:
        out.remove_pins()
        out.remove_asides()

    def _remember_written(self, dest_root: str, manifest: Manifest, done: Written) -> None:
        """Remember the files just written, so the next get or put need not read them.

        A file is recorded only if its `lstat` is still what it was right after its
        rename (a change since moved its ctime) and its ctime lies outside the files
        cache's racy window before this moment. A change within the same clock tick
        as the rename itself would go unseen: the bound every stat-based cache has.
        """
        written = done.stats
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
