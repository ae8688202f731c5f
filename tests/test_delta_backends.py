"""In-place get fetches only B's new chunks, whatever the store: local, `cas serve`, GCS."""

from __future__ import annotations

import os

from cas.caches.chunks import ChunkCache
from cas.get.browse import walk
from cas.get.downloader import Downloader, GetOptions
from cas.objects import FileEntry
from cas.pack import ObjectKind, PackEntry, decode_frame
from cas.put.uploader import PutOptions, Uploader
from cas.repo import Repository
from cas.store.base import Kind
from tests.conftest import snapshot
from tests.delta_helpers import SMALL, local_chunk_ids


async def chunk_ids(repo: Repository, manifest_id) -> set:
    manifest = await repo.get_manifest(manifest_id)
    return {
        ref.id
        async for located in walk(repo, manifest)
        if isinstance(located.entry, FileEntry)
        for ref in located.entry.chunks
    }


async def test_in_place_get_fetches_only_new_chunks(backend, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    shared = os.urandom(40_000)
    for root in (a, b):
        (root / "d").mkdir(parents=True)
        (root / "d" / "same").write_bytes(shared)
    (a / "grows").write_bytes(shared[:20_000])
    (b / "grows").write_bytes(shared[:20_000] + os.urandom(6_000))
    (a / "gone").write_bytes(os.urandom(9_000))
    (b / "new").write_bytes(os.urandom(7_000))
    repo = Repository(backend.store)
    id_a = (await Uploader(repo, PutOptions(params=SMALL)).put(a)).manifest_id
    id_b = (await Uploader(repo, PutOptions(params=SMALL)).put(b)).manifest_id
    dest = tmp_path / "dest"
    await Downloader(Repository(backend.store)).get(id_a, dest)
    cache = ChunkCache(tmp_path / "cache", capacity=1 << 30)
    try:
        downloader = Downloader(Repository(backend.store, cache))
        stats = await downloader.get(id_b, dest, GetOptions(delete=True))
    finally:
        cache.close()
    assert snapshot(dest) == snapshot(b)
    lacking = await chunk_ids(repo, id_b) - local_chunk_ids(a)
    assert lacking and stats.chunks_from_store == len(lacking)
    # Stored sizes are the frames' lengths in their packs, as B's index locates them; each
    # frame is checked against what the backend really holds (not through its client).
    located = (await Repository(backend.store).index(id_b)).chunks
    packs = {loc.pack: backend.peek(Kind.PACK, loc.pack) for loc in located.values()}
    for i in lacking:
        loc = located[i]
        frame = packs[loc.pack][loc.offset : loc.offset + loc.stored]
        decode_frame(PackEntry(ObjectKind.CHUNK, i, loc.offset, loc.stored, loc.raw), frame)
    assert stats.bytes_from_store == sum(located[i].stored for i in lacking)
    assert stats.files_untouched == 1 and stats.deleted == 1
