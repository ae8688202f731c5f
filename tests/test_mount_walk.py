"""Reading ahead across files: a walk of the tree is recognised and served before it asks.

No FUSE here: the mount's `WalkAhead`, `TreeSource` and `ChunkReader` over a
real local store, with a layer counting the ranged reads of packs, fed the
opens a reader makes.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from cas.caches.chunks import ChunkCache
from cas.mount.reader import ChunkReader, OpenFile
from cas.mount.relocation import Relocation
from cas.mount.trees import TreeSource
from cas.mount.walkahead import CACHED_BUDGET, Step, WalkAhead
from cas.objects import DirEntry, FileEntry
from cas.repo import Repository
from cas.store.local import LocalStore
from tests.test_mount_trees import CountingReads, put

LAYOUT = {
    "a": [f"f{i}.bin" for i in range(6)],
    "a/sub": ["s0.bin", "s1.bin"],
    "b": ["g0.bin", "g1.bin", "g2.bin"],
}


def build(root: Path) -> None:
    rng = random.Random(3)
    for directory, names in LAYOUT.items():
        (root / directory).mkdir(parents=True, exist_ok=True)
        for name in names:
            (root / directory / name).write_bytes(rng.randbytes(100_000))
    (root / "a" / "inline.txt").write_text("small enough to live in its tree\n")


class Mounted:
    """The pieces a mount wires together, and the steps of a path as the mount makes them."""

    def __init__(self, store, repo, manifest, trees, reader, walk):
        self.store, self.repo, self.manifest = store, repo, manifest
        self.trees, self.reader, self.walk = trees, reader, walk

    async def open(self, path: str) -> OpenFile:
        parts = path.split("/")
        steps, tree = [], self.manifest.root
        for depth, name in enumerate(parts):
            where = "/".join(parts[:depth]) or "."
            steps.append(Step(tree, name, where))
            listing = await self.trees.listing(tree, where)
            entry = listing.find(name)
            if isinstance(entry, DirEntry):
                tree = entry.tree
        assert isinstance(entry, FileEntry)
        self.walk.opened(listing, list(reversed(steps)))
        return OpenFile(entry, path)

    async def read_all(self, handle: OpenFile) -> bytes:
        return await self.reader.read(handle, 0, handle.entry.size)

    async def settle(self, rounds: int = 50) -> None:
        for _ in range(rounds):  # the walk's task and the fetches it starts
            await asyncio.sleep(0.02)


async def mounted(tmp_path: Path, cache: ChunkCache | None = None) -> Mounted:
    manifest_id = await put(tmp_path / "store", tmp_path / "src")
    store = CountingReads(LocalStore(tmp_path / "store"))
    repo = Repository(store, cache)
    manifest = await repo.get_manifest(manifest_id)
    relocation = Relocation(repo, manifest_id, timeout=30)
    max_chunk = manifest.chunker.max_size
    trees = TreeSource(repo, max_chunk, relocation=relocation)
    reader = ChunkReader(repo, max_chunk, relocation=relocation)
    if cache is None:
        walk = WalkAhead(trees, reader.fetch_ahead)
    else:  # as a mount with a chunk cache: into the cache, further ahead
        walk = WalkAhead(trees, reader.fetch_into_cache, CACHED_BUDGET, per_file=CACHED_BUDGET)
    return Mounted(store, repo, manifest, trees, reader, walk)


def chunk_reads(store) -> int:
    return sum(1 for _, length in store.ranges if length > 20_000)  # trees are smaller


@pytest.mark.parametrize("into", ["memory", "cache"])
def test_a_walk_is_served_ahead_in_os_walk_order(tmp_path, into):
    build(tmp_path / "src")
    cache = ChunkCache(tmp_path / "cache", capacity=1 << 30) if into == "cache" else None

    async def run():
        m = await mounted(tmp_path, cache)
        try:
            for path in ("a/f0.bin", "a/f1.bin", "a/f2.bin"):  # neighbours in a row: a walk
                await m.read_all(await m.open(path))
            assert m.walk.walks == 1
            rest = [*(f"a/f{i}.bin" for i in range(3, 6)), "a/sub/s0.bin", "a/sub/s1.bin"]
            rest += ["b/g0.bin", "b/g1.bin", "b/g2.bin"]
            for path in rest:  # os.walk: a's files, a/sub, then b
                await m.settle(10)  # the reader works on each file a while
                before = chunk_reads(m.store)
                data = await m.read_all(await m.open(path))
                assert data == (tmp_path / "src" / path).read_bytes()
                assert chunk_reads(m.store) == before, path  # it was already here
        finally:
            await m.walk.close()
            await m.reader.close()
            await m.store.aclose()
            if cache is not None:
                cache.close()

    asyncio.run(run())


def test_opening_files_here_and_there_reads_nothing_ahead(tmp_path):
    build(tmp_path / "src")

    async def run():
        m = await mounted(tmp_path)
        try:
            for path in ("a/f1.bin", "a/f2.bin", "b/g2.bin", "a/sub/s0.bin"):
                await m.read_all(await m.open(path))
            await m.settle()
            assert m.walk.walks == 0
            read = sum(length for _, length in m.store.ranges if length > 20_000)
            assert read < 4 * 110_000  # only the four files (compressed random bytes)
        finally:
            await m.walk.close()
            await m.reader.close()
            await m.store.aclose()

    asyncio.run(run())


def test_a_walk_ends_when_the_reader_goes_elsewhere(tmp_path):
    build(tmp_path / "src")

    async def run():
        m = await mounted(tmp_path)
        try:
            for path in ("a/f0.bin", "a/f1.bin", "a/f2.bin", "b/g2.bin", "b/g0.bin"):
                await m.open(path)
            await m.settle()
            # Two opens off the predicted path ended the walk and its plan: the
            # predicted a/f3 is no longer "on the way"; a/f3, f4, f5 start a new walk.
            await m.open("a/f3.bin")
            await m.open("a/f4.bin")
            assert m.walk.walks == 1
            await m.open("a/f5.bin")
            assert m.walk.walks == 2
        finally:
            await m.walk.close()
            await m.reader.close()
            await m.store.aclose()

    asyncio.run(run())
