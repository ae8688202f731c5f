"""The mount's tree source: a lookup reads its own directory only; the rest is read ahead.

No FUSE here: `TreeSource` over a real local store, with a layer counting
the ranged reads of packs that reach the store.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from cas.chunking import ChunkParams
from cas.ids import ObjectId
from cas.mount.relocation import Relocation
from cas.mount.trees import TreeSource
from cas.objects import DirEntry
from cas.put.uploader import PutOptions, Uploader
from cas.repo import Repository
from cas.store.base import Kind
from cas.store.local import LocalStore
from cas.store.wrapping import WrappingStore

PARAMS = ChunkParams(min_size=16 << 10, avg_size=64 << 10, max_size=256 << 10)


class CountingReads(WrappingStore):
    """Records every ranged read of a pack (id, length; and where), optionally slowed down."""

    def __init__(self, inner):
        super().__init__(inner)
        self.ranges: list[tuple[ObjectId, int]] = []
        self.spans: list[tuple[ObjectId, int, int]] = []
        self.delay = 0.0

    async def get_range(self, kind, object_id, offset, length):
        if kind is Kind.PACK:
            self.ranges.append((object_id, length))
            self.spans.append((object_id, offset, length))
        if self.delay:
            await asyncio.sleep(self.delay)
        return await super().get_range(kind, object_id, offset, length)


def build(root: Path, dirs: int = 60) -> None:
    """Many directories, each with a few files listed by name (trees of ~1-3 KB)."""
    for d in range(dirs):
        sub = root / f"pkg{d:03d}" / "mod"
        sub.mkdir(parents=True)
        for f in range(25):
            (sub / f"file_{f:02d}_with_a_longish_name.py").write_text(f"# {d} {f}\n")


async def put(store_dir: Path, src: Path) -> ObjectId:
    async with LocalStore(store_dir, fsync=False) as local:
        options = PutOptions(params=PARAMS, processes=False)
        return (await Uploader(Repository(local), options).put(src)).manifest_id


@contextlib.asynccontextmanager
async def open_trees(store_dir: Path, manifest_id: ObjectId, capacity: int = 32 << 20):
    """A counting store, the manifest, its index and a TreeSource; closed on the way out."""
    store = CountingReads(LocalStore(store_dir))
    try:
        repo = Repository(store)
        manifest = await repo.get_manifest(manifest_id)
        index = await repo.index(manifest_id)
        relocation = Relocation(repo, manifest_id, timeout=30)
        trees = TreeSource(
            repo, manifest.chunker.max_size, capacity=capacity, relocation=relocation
        )
        try:
            yield store, manifest, index, trees
        finally:
            await trees.close()
    finally:
        await store.aclose()


def test_a_lookup_reads_only_its_own_tree(tmp_path):
    build(tmp_path / "src")

    async def run():
        manifest_id = await put(tmp_path / "store", tmp_path / "src")
        async with open_trees(tmp_path / "store", manifest_id) as (store, manifest, index, trees):
            root = await trees.listing(manifest.root, ".")
            pkg = root.find("pkg007")
            assert isinstance(pkg, DirEntry)
            listing = await trees.listing(pkg.tree, "pkg007")
            assert listing.find("mod") is not None
            # Two directories looked up: two reads, each exactly that tree's frame
            # (not the 61 trees of the manifest a `cas get` would take along).
            expected = [index.trees[manifest.root].stored, index.trees[pkg.tree].stored]
            assert [length for _, length in store.ranges] == expected

    asyncio.run(run())


def test_warm_reads_every_tree_ahead_so_lookups_need_no_read(tmp_path):
    build(tmp_path / "src")

    async def run():
        manifest_id = await put(tmp_path / "store", tmp_path / "src")
        async with open_trees(tmp_path / "store", manifest_id) as (store, manifest, index, trees):
            warmed = await trees.warm(index.trees)
            assert warmed == len(index.trees) == 1 + 60 * 2
            total = sum(loc.stored for loc in index.trees.values())
            assert sum(length for _, length in store.ranges) == total  # each tree read once
            store.ranges.clear()
            root = await trees.listing(manifest.root, ".")
            for entry in root.entries:
                assert isinstance(entry, DirEntry)
                await trees.listing(entry.tree, entry.name)
            assert store.ranges == []

    asyncio.run(run())


def test_warm_stops_before_evicting_what_was_looked_up(tmp_path):
    build(tmp_path / "src")

    async def run():
        manifest_id = await put(tmp_path / "store", tmp_path / "src")
        # Room for about a third of the trees.
        small = open_trees(tmp_path / "store", manifest_id, capacity=64 << 10)
        async with small as (store, manifest, index, trees):
            await trees.listing(manifest.root, ".")
            warmed = await trees.warm(index.trees)
            assert 0 < warmed < len(index.trees)
            store.ranges.clear()
            await trees.listing(manifest.root, ".")  # still held: warming left it alone
            assert store.ranges == []

    asyncio.run(run())


def test_a_trace_is_resolved_a_level_at_a_time_not_a_directory_at_a_time(tmp_path):
    from cas.mount.prefetch import listed_files

    build(tmp_path / "src")
    paths = [f"pkg{d:03d}/mod/file_{d % 25:02d}_with_a_longish_name.py" for d in range(59, -1, -2)]
    paths.insert(3, "pkg001/missing.py")  # not in the tree: skipped

    async def run():
        manifest_id = await put(tmp_path / "store", tmp_path / "src")
        async with open_trees(tmp_path / "store", manifest_id) as (store, manifest, _index, trees):
            found = [path async for path, _ in listed_files(trees, manifest.root, paths)]
            assert found == [p for p in paths if "missing" not in p]  # in the trace's order
            # 61 directories on the way, 3 levels: one merged read per level.
            assert len(store.ranges) == 3

    asyncio.run(run())


def test_a_lookup_survives_the_cancelling_of_another_caller_of_the_same_read(tmp_path):
    """A walk read ahead that stops (cancelled) must not fail a lookup waiting on its tree."""
    build(tmp_path / "src", dirs=3)

    async def run():
        manifest_id = await put(tmp_path / "store", tmp_path / "src")
        async with open_trees(tmp_path / "store", manifest_id) as (store, manifest, _index, trees):
            store.delay = 0.3
            first = asyncio.ensure_future(trees.listing(manifest.root, "."))
            await asyncio.sleep(0.05)  # its read is under way
            second = asyncio.ensure_future(trees.listing(manifest.root, "."))
            await asyncio.sleep(0.05)
            first.cancel()
            listing = await asyncio.wait_for(second, 5)
            assert listing.find("pkg000") is not None
            assert first.cancelled()
            assert len(store.ranges) == 1  # one read served both

    asyncio.run(run())
