"""Putting trees and getting them in place, with the real store, cache and files cache."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from cas.caches.chunks import ChunkCache
from cas.chunking import ChunkParams, FastCdcChunker
from cas.get.browse import walk
from cas.get.downloader import Downloader, GetOptions, GetStats
from cas.ids import ObjectId, hash_bytes
from cas.objects import FileEntry
from cas.pack import ObjectKind, PackEntry, decode_frame
from cas.put.uploader import PutOptions, Uploader
from cas.repo import Repository
from cas.store.base import Kind
from cas.store.local import LocalStore

SMALL = ChunkParams(min_size=256, avg_size=1024, max_size=4096)


def put(store_dir: Path, src: Path, params: ChunkParams = SMALL) -> ObjectId:
    async def run():
        store = LocalStore(store_dir, fsync=False)
        result = await Uploader(Repository(store), PutOptions(params=params)).put(src)
        return result.manifest_id

    return asyncio.run(run())


def get(
    store_dir: Path,
    manifest_id: ObjectId,
    dest: Path,
    *,
    cache_dir: Path | None = None,
    files_cache_dir: Path | None = None,
    **options,
) -> GetStats:
    async def run():
        store = LocalStore(store_dir, fsync=False)
        cache = ChunkCache(cache_dir, capacity=1 << 30) if cache_dir else None
        try:
            downloader = Downloader(Repository(store, cache), files_cache_dir=files_cache_dir)
            return await downloader.get(manifest_id, dest, GetOptions(**options))
        finally:
            if cache is not None:
                cache.close()

    return asyncio.run(run())


def manifest_chunks(store_dir: Path, manifest_id: ObjectId) -> dict[ObjectId, int]:
    """Every chunk id the manifest's files name, with its length."""

    async def run():
        repo = Repository(LocalStore(store_dir, fsync=False))
        manifest = await repo.get_manifest(manifest_id)
        out: dict[ObjectId, int] = {}
        async for located in walk(repo, manifest):
            if isinstance(located.entry, FileEntry):
                for ref in located.entry.chunks:
                    out[ref.id] = ref.length
        return out

    return asyncio.run(run())


def local_chunk_ids(root: Path, params: ChunkParams = SMALL) -> set[ObjectId]:
    """The ids of every chunk the regular files under `root` hold, cut with `params`."""
    chunker = FastCdcChunker(params)
    ids: set[ObjectId] = set()
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            data = Path(path).read_bytes()
            for chunk in chunker.chunks_of_buffer(data):
                ids.add(hash_bytes(data[chunk.offset : chunk.offset + chunk.length]))
    return ids


def stored_sizes(store_dir: Path, manifest_id: ObjectId) -> dict[ObjectId, int]:
    """The stored (compressed) size of every chunk of a manifest: its frame's length in its
    pack, as the manifest's index locates it, checked against the pack's bytes."""

    async def run():
        store = LocalStore(store_dir, fsync=False)
        try:
            index = await Repository(store).index(manifest_id)
            sizes = {}
            for chunk_id, loc in index.chunks.items():
                frame = await store.get_range(Kind.PACK, loc.pack, loc.offset, loc.stored)
                entry = PackEntry(ObjectKind.CHUNK, chunk_id, loc.offset, loc.stored, loc.raw)
                decode_frame(entry, frame)  # the frame really is that chunk, whole
                sizes[chunk_id] = loc.stored
            return sizes
        finally:
            await store.aclose()

    return asyncio.run(run())
