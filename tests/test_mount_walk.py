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
from cas.mount.reader import ChunkReader, OpenFile, ReadFailed
from cas.mount.relocation import Relocation
from cas.mount.trees import TreeSource
from cas.mount.walkahead import CACHED_BUDGET, Step, WalkAhead
from cas.objects import DirEntry, FileEntry
from cas.pack import ObjectKind
from cas.repo import Repository
from cas.store.base import Kind
from cas.store.local import LocalStore
from tests.helpers_hostile import (
    chunked_file,
    digest,
    dir_entry,
    inline_file,
    plant_bytes,
    plant_manifest,
    plant_tree,
)
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

    async def open(self, path: str, reader: int = 0) -> OpenFile:
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
        self.walk.opened(listing, list(reversed(steps)), reader)
        return OpenFile(entry, path)

    async def read_all(self, handle: OpenFile) -> bytes:
        return await self.reader.read(handle, 0, handle.entry.size)

    async def reads_of(self, handle: OpenFile, since: int) -> int:
        """Ranged reads after the `since`-th that covered a chunk of this file."""
        found = await self.repo.locate(ObjectKind.CHUNK, [c.id for c in handle.entry.chunks])
        return sum(
            1
            for pack, offset, length in self.store.spans[since:]
            for loc in found.values()
            if loc.pack == pack and offset <= loc.offset < offset + length
        )

    async def close(self) -> None:
        await self.walk.close()
        await self.reader.close()
        await self.trees.close()
        await self.store.aclose()

    async def settle(self, rounds: int = 50) -> None:
        for _ in range(rounds):  # the walk's task and the fetches it starts
            await asyncio.sleep(0.02)


async def mounted(tmp_path: Path, cache: ChunkCache | None = None) -> Mounted:
    manifest_id = await put(tmp_path / "store", tmp_path / "src")
    return await assemble(tmp_path / "store", manifest_id, cache)


async def assemble(store_dir: Path, manifest_id, cache: ChunkCache | None = None) -> Mounted:
    store = CountingReads(LocalStore(store_dir))
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
                before = len(m.store.spans)
                handle = await m.open(path)
                data = await m.read_all(handle)
                assert data == (tmp_path / "src" / path).read_bytes()
                assert await m.reads_of(handle, before) == 0, path  # it was already here
        finally:
            await m.close()
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
            await m.close()

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
            await m.close()

    asyncio.run(run())


@pytest.mark.parametrize("into", ["memory", "cache"])
def test_a_corrupt_neighbour_in_a_fetch_ahead_does_not_fail_a_healthy_file(tmp_path, into):
    """A read that waits on a fetch ahead gets its own answer, not the batch's error."""
    build(tmp_path / "src")
    cache = ChunkCache(tmp_path / "cache", capacity=1 << 30) if into == "cache" else None

    async def run():
        m = await mounted(tmp_path, cache)
        try:
            f4, f5 = await m.open("a/f4.bin"), await m.open("a/f5.bin")
            found = await m.repo.locate(ObjectKind.CHUNK, [f5.entry.chunks[-1].id])
            loc = next(iter(found.values()))
            with open(m.store.inner.path_of(Kind.PACK, loc.pack), "r+b") as pack:
                pack.seek(loc.offset + loc.stored // 2)
                byte = pack.read(1)
                pack.seek(-1, 1)
                pack.write(bytes([byte[0] ^ 0xFF]))
            m.store.delay = 0.3  # the fetch is still in flight when f4 is read
            fetch = m.reader.fetch_into_cache if into == "cache" else m.reader.fetch_ahead
            fetch([*f4.entry.chunks, *f5.entry.chunks], "a/f4.bin and a/f5.bin")  # one batch
            await asyncio.sleep(0.05)
            assert await m.read_all(f4) == (tmp_path / "src/a/f4.bin").read_bytes()
            with pytest.raises(ReadFailed, match=r"f5\.bin"):
                await m.read_all(f5)
        finally:
            await m.close()
            if cache is not None:
                cache.close()

    asyncio.run(run())


def test_a_walk_into_a_tree_dag_enters_each_tree_once_and_keeps_the_loop_turning(tmp_path):
    """40 levels, each naming the next twice (2**40 paths from 41 trees) beside the walked files."""

    async def run():
        store = LocalStore(tmp_path / "store", fsync=False)
        files = []
        for i in range(3):
            data = bytes([i]) * 3000  # within the planted manifest's 4 KiB chunk maximum
            chunk = await plant_bytes(store, ObjectKind.CHUNK, data)
            files.append(chunked_file(f"f{i}", [(str(chunk), len(data))], file_digest=digest(data)))
        dag = await plant_tree(store, [inline_file("leaf", b"x")])
        for _ in range(40):
            dag = await plant_tree(store, [dir_entry("a", dag), dir_entry("b", dag)])
        src = await plant_tree(store, files)
        root = await plant_tree(store, [dir_entry("src", src), dir_entry("zdag", dag)])
        manifest_id = await plant_manifest(store, root)
        await store.aclose()
        m = await assemble(tmp_path / "store", manifest_id)
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        beating = asyncio.ensure_future(ticker())
        try:
            for i in range(3):
                await m.open(f"src/f{i}")
            assert m.walk.walks == 1
            await m.settle(25)  # 0.5 s
            assert ticks >= 20  # the loop kept answering
            assert m.trees.fetched <= 2 + 41  # root, src, and each DAG tree once
        finally:
            beating.cancel()
            await m.close()

    asyncio.run(run())


def test_unmounting_ends_a_prefetch_still_waiting_for_the_trees(tmp_path):
    from cas.mount.prefetch import listed_files

    build(tmp_path / "src")

    async def run():
        m = await mounted(tmp_path)
        never = asyncio.get_running_loop().create_future()  # trees still being read ahead
        resolved = []

        async def consume():
            async for path, _ in listed_files(m.trees, m.manifest.root, ["a/f0.bin"], never):
                resolved.append(path)

        task = asyncio.ensure_future(consume())
        try:
            await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 2)
            assert task.cancelled() and resolved == []
        finally:
            never.cancel()
            await m.close()

    asyncio.run(run())


def test_two_readers_walking_at_once_are_each_recognised(tmp_path):
    """Parallel test workers (one process each) interleave their opens; each walk is seen."""
    build(tmp_path / "src")

    async def run():
        m = await mounted(tmp_path)
        try:
            for i in range(3):  # worker 101 walks a/, worker 202 walks b/, interleaved
                await m.open(f"a/f{i}.bin", reader=101)
                await m.open(f"b/g{i}.bin", reader=202)
            assert m.walk.walks == 2
            await m.settle(10)
            before = len(m.store.spans)
            handle = await m.open("a/f3.bin", reader=101)  # worker 101's next file
            assert await m.read_all(handle) == (tmp_path / "src/a/f3.bin").read_bytes()
            assert await m.reads_of(handle, before) == 0  # it was read ahead
        finally:
            await m.close()

    asyncio.run(run())
