"""Where the files of a get come from: already in place, then local chunks, cache, store.

Step 2 and 3 of `cas.get.downloader`: a destination file whose chunk ids
match the manifest is identical and left alone; for the files to write,
the chunks still needed are looked up in the chunk cache, then in the
destination's other files and the `--seed` directories (indexed only for
those chunks), and the rest come from the store, whose ranged reads are
planned to fetch their neighbours too.
"""

from __future__ import annotations

import asyncio
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cas.batching import batched
from cas.caches.files import FilesCache
from cas.get.browse import Located
from cas.get.fswrite import Destination
from cas.get.localchunks import (
    Described,
    Describer,
    LocalChunks,
    LocalFile,
    Origin,
    regular_files,
)
from cas.get.survey import Layout
from cas.ids import ObjectId
from cas.objects import FileEntry, Manifest
from cas.repo import Repository

_DESCRIBE_BATCH: Final = 256
SOURCES: Final = ("cache", "destination", "seed", "store")


@dataclass
class SourceCount:
    """Files that take chunks from one source, and those chunks (uncompressed bytes)."""

    files: int = 0
    chunks: int = 0
    bytes: int = 0


@dataclass
class Sources:
    """What a get found before writing: identical files, and chunks held locally."""

    identical: set[str] = field(default_factory=set)
    """Manifest paths the destination already holds byte for byte."""
    local: LocalChunks = field(default_factory=LocalChunks)
    in_cache: set[ObjectId] = field(default_factory=set)

    def from_store(self, to_write: list[Located]) -> list[ObjectId]:
        """Chunks no local source holds: the store's ranged reads fetch their neighbours too."""
        return [
            ref.id
            for located in to_write
            for ref in _chunks_of(located)
            if ref.id not in self.in_cache and self.local.origin(ref.id) is None
        ]

    def planned(self, to_write: list[Located]) -> dict[str, SourceCount]:
        """Which source each chunk of the files to write is expected to come from."""
        counts = {name: SourceCount() for name in SOURCES}
        seen: set[ObjectId] = set()
        for located in to_write:
            used: set[str] = set()
            for ref in _chunks_of(located):
                if ref.id in self.in_cache:
                    source = "cache"
                else:
                    origin = self.local.origin(ref.id)
                    source = str(origin) if origin is not None else "store"
                used.add(source)
                if ref.id not in seen:
                    seen.add(ref.id)
                    counts[source].chunks += 1
                    counts[source].bytes += ref.length
            for source in used:
                counts[source].files += 1
        return counts

    def pin(self, out: Destination) -> None:
        """Keep the old bytes of files this get replaces readable until it ends."""
        for file in self.local.files():
            if file.doomed and file.rel is not None:
                parts, name = split_rel(file.rel)
                pinned = out.pin(parts, name)
                if pinned is not None:
                    file.path = pinned


async def find_sources(
    repo: Repository,
    files_cache_dir: Path | None,
    manifest: Manifest,
    root: str,
    layout: Layout,
    files: list[Located],
    seeds: tuple[str, ...],
) -> Sources:
    """Identical files among `files`, then local chunk sources for the others."""
    files_cache = None
    if files_cache_dir is not None and (layout.existing or seeds):
        files_cache = FilesCache(files_cache_dir, repo.store.url, manifest.chunker)
    try:
        describer = Describer(manifest.chunker, files_cache)
        described: dict[str, Described] = {}
        found = Sources(identical=await _identical(root, layout, describer, described))
        to_write = [f for f in files if f.path not in found.identical]
        needed = {ref.id: ref.length for located in to_write for ref in _chunks_of(located)}
        cache = repo.cache
        found.in_cache = await asyncio.to_thread(cache.has_many, needed) if cache else set()
        wanted = set(needed) - found.in_cache
        if wanted:
            await _index_local(found.local, wanted, root, layout, describer, described, seeds)
        if repo.store.capabilities.remote:
            repo.plan(found.from_store(to_write))
        await asyncio.to_thread(describer.record)
    finally:
        if files_cache is not None:
            files_cache.close()
    return found


async def _identical(
    root: str, layout: Layout, describer: Describer, described: dict[str, Described]
) -> set[str]:
    """Manifest files the destination already holds byte for byte."""
    same: set[str] = set()
    for batch in batched(
        ((rel, layout.existing[rel]) for rel in layout.candidates), _DESCRIBE_BATCH
    ):
        items = [(os.path.join(root, rel), st) for rel, st in batch]
        got_batch = await describer.describe_many(items)
        described.update(got_batch)
        for rel, _st in batch:
            got = got_batch.get(os.path.join(root, rel))
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


async def _index_local(
    local: LocalChunks,
    wanted: set[ObjectId],
    root: str,
    layout: Layout,
    describer: Describer,
    described: dict[str, Described],
    seeds: tuple[str, ...],
) -> None:
    """Find the `wanted` chunks in the destination's files, then in the seeds."""
    regular = [(rel, st) for rel, st in sorted(layout.existing.items()) if stat.S_ISREG(st.st_mode)]
    for batch in batched(regular, _DESCRIBE_BATCH):
        paths = {rel: os.path.join(root, rel) for rel, _st in batch}
        known = {path: described[path] for path in paths.values() if path in described}
        rest = [(paths[rel], st) for rel, st in batch if paths[rel] not in described]
        known.update(await describer.describe_many(rest))
        for rel, path in paths.items():
            if path in known:
                file = LocalFile(path, Origin.DESTINATION, layout.replaced(rel), rel)
                local.add(file, known[path].chunks, wanted)
    for seed in seeds:
        if len(local) >= len(wanted):
            break
        for batch in batched(regular_files(os.path.abspath(seed)), _DESCRIBE_BATCH):
            got = await describer.describe_many(batch)
            for path, _st in batch:
                if path in got:
                    local.add(LocalFile(path, Origin.SEED), got[path].chunks, wanted)
            if len(local) >= len(wanted):
                break


def _chunks_of(located: Located) -> tuple:
    entry = located.entry
    assert isinstance(entry, FileEntry)
    return entry.chunks


def split_rel(rel: str) -> tuple[tuple[str, ...], str]:
    """A destination-relative path as (directory parts, name)."""
    parts = rel.split("/")
    return tuple(parts[:-1]), parts[-1]
