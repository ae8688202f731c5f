"""gc: what it keeps, what it deletes, and the put protocol that makes it safe."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cas.gc.collector import GcOptions, collect
from cas.gc.records import RunTracker
from cas.gc.retention import ExpireRule, KeepLastRule, Retention
from cas.gc.verify import manifest_complete, verify_manifests
from cas.ids import ObjectId, hash_bytes
from cas.put.uploader import PutOptions, Uploader
from cas.repo import Repository
from cas.store.base import Kind, Store
from cas.store.local import LocalStore
from cas.store.wrapping import WrappingStore

NOW_GRACE = GcOptions(grace=0.0, lease=2.0)


def write_tree(root: Path, blobs: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in blobs.items():
        (root / name).write_bytes(data)
    return root


async def put(store: Store, src: Path, **options) -> ObjectId:
    uploader = Uploader(Repository(store), PutOptions(**options))
    manifest_id = (await uploader.put(src)).manifest_id
    await asyncio.sleep(0.02)  # file-system clocks tick coarsely; be older than a gc started now
    return manifest_id


async def ids_of(store: Store, kind: Kind) -> set[ObjectId]:
    return {i.id async for i in store.list(kind)}


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store", fsync=False)


async def test_refs_keep_their_data_and_unnamed_old_manifests_go(store, tmp_path):
    shared = os.urandom(20_000)
    kept = await put(
        store, write_tree(tmp_path / "a", {"s": shared, "a": os.urandom(9000)}), ref="ci/main/1"
    )
    # b reuses a's pack for the shared chunk (a's ref is the store's newest: b's parent)
    gone = await put(store, write_tree(tmp_path / "b", {"s": shared, "b": os.urandom(9000)}))
    before = await ids_of(store, Kind.PACK)
    assert len(before) == 4  # each put: a pack of chunks and a pack of trees
    report = await collect(Repository(store), NOW_GRACE)
    assert report.deleted[Kind.MANIFEST].objects == 1
    assert report.deleted[Kind.INDEX].objects == 1
    assert report.deleted[Kind.PACK].objects == 2  # only b's own; the shared chunk's stays
    assert await ids_of(store, Kind.MANIFEST) == {kept}
    assert len(await ids_of(store, Kind.PACK)) == len(before) - 2
    assert (await verify_manifests(Repository(store), [kept])).ok
    assert gone not in await ids_of(store, Kind.MANIFEST)


async def test_grace_keeps_young_unnamed_manifests_and_objects(store, tmp_path):
    young = await put(store, write_tree(tmp_path / "a", {"x": os.urandom(9000)}))
    report = await collect(Repository(store), GcOptions(grace=3600, lease=2.0))
    assert report.bytes_reclaimed == 0
    assert report.kept_young[Kind.MANIFEST].objects == 1
    assert (await verify_manifests(Repository(store), [young])).ok


async def test_dry_run_reports_bytes_and_changes_nothing(tmp_path):
    root = tmp_path / "store"
    store = LocalStore(root, fsync=False)
    await put(store, write_tree(tmp_path / "a", {"x": os.urandom(9000)}), ref="old")
    await store.delete_ref("old")
    files_before = sorted(p for p in root.rglob("*"))
    report = await collect(Repository(store), GcOptions(grace=0.0, dry_run=True))
    assert report.deleted[Kind.MANIFEST].objects == 1 and report.bytes_reclaimed > 9000 // 2
    assert sorted(p for p in root.rglob("*")) == files_before  # no records, no deletes


async def test_expired_refs_are_removed_and_their_data_collected(store, tmp_path):
    keep = await put(store, write_tree(tmp_path / "k", {"k": os.urandom(9000)}), ref="ci/main/1")
    await put(store, write_tree(tmp_path / "p", {"p": os.urandom(9000)}), ref="ci/pr/7/build")
    options = GcOptions(
        retention=Retention(expire=(ExpireRule("ci/pr/*", 0.0),)), grace=0.0, lease=2.0
    )
    report = await collect(Repository(store), options)
    assert [r.name for r in report.refs_expired] == ["ci/pr/7/build"]
    assert [r.name async for r in store.list_refs()] == ["ci/main/1"]
    assert await ids_of(store, Kind.MANIFEST) == {keep}


async def test_run_leaves_a_done_record_and_no_heartbeats(store, tmp_path):
    await collect(Repository(store), NOW_GRACE)
    runs = await RunTracker(store).refresh()
    (state,) = runs.values()
    assert state.done and len(state.records) == 2  # start and done; beats removed


async def test_a_root_without_a_readable_index_stops_the_sweep_of_packs(store, tmp_path):
    kept = await put(store, write_tree(tmp_path / "a", {"d": os.urandom(9000)}), ref="r")
    await put(store, write_tree(tmp_path / "b", {"e": os.urandom(9000)}), parent=None)
    (index,) = await Repository(store).indexes_of(kept)
    await store.delete(Kind.INDEX, index.name)
    packs = await ids_of(store, Kind.PACK)
    report = await collect(Repository(store), NOW_GRACE)
    assert [(k, i) for k, i, _ in report.unreadable] == [(Kind.INDEX, kept)]
    assert report.sweep_skipped and report.deleted[Kind.MANIFEST].objects == 1
    assert await ids_of(store, Kind.PACK) == packs  # which packs `kept` needs is unknown


class GcBeforeManifest(WrappingStore):
    """Runs a whole collection at the worst moment: after a put decided what to reuse,
    just before its manifest is written."""

    def __init__(self, inner: Store, options: GcOptions) -> None:
        super().__init__(inner)
        self.options = options
        self.ran = False

    async def put_if_absent(self, kind: Kind, object_id: ObjectId, data: bytes) -> bool:
        if kind is Kind.MANIFEST and not self.ran:
            self.ran = True
            await collect(Repository(self.inner), self.options)
        return await self.inner.put_if_absent(kind, object_id, data)


async def race(store: LocalStore, tmp_path: Path, *, fence: bool) -> tuple[ObjectId, bool]:
    """An old unnamed tree shares a chunk with a new put; gc runs between check and manifest."""
    shared = os.urandom(50_000)
    old = await put(store, write_tree(tmp_path / "old", {"shared": shared}))
    await asyncio.sleep(0.05)
    racing = GcBeforeManifest(store, NOW_GRACE)
    uploader = Uploader(Repository(racing), PutOptions(parent=str(old)))
    uploader.gc_fence = fence
    src = write_tree(tmp_path / "new", {"shared": shared, "own": os.urandom(30_000)})
    result = await uploader.put(src)
    assert racing.ran
    return result.manifest_id, await manifest_complete(Repository(store), result.manifest_id)


async def test_put_repairs_what_a_concurrent_gc_deleted(store, tmp_path):
    manifest_id, complete = await race(store, tmp_path, fence=True)
    assert complete
    assert (await verify_manifests(Repository(store), [manifest_id])).ok


async def test_without_the_protocol_the_same_race_loses_data(store, tmp_path):
    """The protocol step is what prevents the loss: disabled, the manifest is broken."""
    _, complete = await race(store, tmp_path, fence=False)
    assert not complete


async def test_put_waits_for_two_heartbeats_of_a_running_collection_not_its_end(store, tmp_path):
    from cas.gc.collector import Lease

    lease = Lease(store, lease=1.0, grace=0.0)  # a beat every 0.25 s
    await lease.start()
    try:
        src = write_tree(tmp_path / "a", {"x": os.urandom(9000)})
        uploader = Uploader(Repository(store), PutOptions())
        task = asyncio.create_task(uploader.put(src))
        await asyncio.sleep(0.2)
        assert not task.done()  # the run is visible and has not beaten twice yet
        result = await asyncio.wait_for(task, 5)
        assert uploader.stats.gc_waits == 1
        assert not (await RunTracker(store).refresh())[lease.run].done  # still running
    finally:
        await lease.finish({})
    assert await manifest_complete(Repository(store), result.manifest_id)


class SlowDeletes(WrappingStore):
    """Deletes take a while, and listing the packs (a big namespace) lasts until `release`."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.release = asyncio.Event()

    def opener(self):
        return None

    async def delete_many(self, kind: Kind, ids) -> None:
        await asyncio.sleep(0.3)
        await self.inner.delete_many(kind, ids)

    async def list(self, kind: Kind, prefix: str = ""):
        if kind is Kind.PACK:
            await asyncio.wait_for(self.release.wait(), 30)
        async for info in self.inner.list(kind, prefix):
            yield info


async def test_a_put_during_a_long_sweep_finishes_first_and_stays_whole(store, tmp_path):
    """The run re-lists its roots before each beat: the put's ref is marked mid-sweep."""
    files = {f"f{i}": os.urandom(6000) for i in range(30)}
    old = await put(store, write_tree(tmp_path / "old", files))  # unnamed: garbage at grace 0
    (old_index,) = await Repository(store).indexes_of(old)
    chunk_packs = {loc.pack for loc in old_index.chunks.values()}
    slow = SlowDeletes(store)
    collection = asyncio.create_task(collect(Repository(slow), GcOptions(grace=0.0, lease=1.0)))
    await asyncio.sleep(0.3)  # the run is sweeping manifests
    uploader = Uploader(Repository(store), PutOptions(ref="ci/new", parent=str(old)))
    result = await uploader.put(write_tree(tmp_path / "new", files))
    assert not collection.done() and uploader.stats.gc_waits == 1
    assert uploader.stats.chunks_new == 0  # the old pack holds every chunk
    slow.release.set()
    report = await collection
    assert chunk_packs <= await ids_of(store, Kind.PACK)  # reused: marked mid-sweep
    assert report.deleted[Kind.PACK].objects <= 1  # at most the old trees (new mtimes)
    assert (await verify_manifests(Repository(store), [result.manifest_id])).ok


async def test_put_gives_up_waiting_on_a_dead_collection_after_its_lease(store, tmp_path):
    from cas.gc.collector import Lease

    lease = Lease(store, lease=0.5, grace=0.0)
    await lease.start()
    await lease.stop()  # died: no more heartbeats, no done record
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await put(store, write_tree(tmp_path / "a", {"x": os.urandom(9000)}))
    assert 0.4 < loop.time() - t0 < 5


async def test_a_lease_that_cannot_be_renewed_stops_deletes(store):
    from cas.gc.collector import Lease, LeaseLost

    lease = Lease(store, lease=0.2, grace=0.0)
    await lease.start()
    await lease.stop()
    await asyncio.sleep(0.15)
    with pytest.raises(LeaseLost):
        lease.check()


def test_keep_last_and_expire_rules():
    from cas.store.base import RefInfo

    now = datetime(2026, 1, 10, tzinfo=UTC)
    refs = [
        RefInfo(f"ci/main/{i}", ObjectId(bytes([i]) * 32), now - timedelta(days=i))
        for i in range(5)
    ] + [RefInfo("ci/pr/1/x", ObjectId(b"\xff" * 32), now - timedelta(days=8))]
    rules = Retention(
        expire=(ExpireRule("ci/pr/*", 7 * 86400),), keep_last=(KeepLastRule("ci/main/*", 2),)
    )
    assert [r.name for r in rules.expired(refs, now)] == [
        "ci/main/2",
        "ci/main/3",
        "ci/main/4",
        "ci/pr/1/x",
    ]


async def test_foreign_objects_in_the_gc_namespace_are_ignored(store, tmp_path):
    """Anything that is not a well-formed record (garbage, other JSON, huge leases) is skipped."""
    import json

    from cas.codec import encode_object

    hostile = [
        b"not json",
        json.dumps({"format": "cas.gc-record/1", "event": "start", "run": "x"}).encode()[:-1],
        json.dumps({"format": "other", "event": "start", "run": "x"}).encode(),
        json.dumps(
            {"format": "cas.gc-record/1", "event": "start", "run": "x", "lease_seconds": 1e9}
        ).encode(),
        json.dumps({"format": "cas.gc-record/1", "event": "start", "run": 7}).encode(),
        json.dumps({"format": "cas.gc-record/1", "event": "beat", "run": "x", "seq": -1}).encode(),
    ]
    for data in hostile:
        await store.put_if_absent(Kind.GC, *encode_object(data, 3))
    await store.put_if_absent(Kind.GC, ObjectId(bytes(32)), b"\x00not a zstd frame")
    assert await RunTracker(store).refresh() == {}
    manifest_id = await put(store, write_tree(tmp_path / "a", {"x": os.urandom(9000)}), ref="r")
    await collect(Repository(store), NOW_GRACE)
    assert await manifest_complete(Repository(store), manifest_id)


async def test_mostly_dead_packs_are_repacked_and_the_old_ones_go_next_run(store, tmp_path):
    """Space: a pack that only a sliver of a kept manifest needs is copied, then deleted."""
    keep = os.urandom(60_000)
    first = await put(
        store,
        write_tree(tmp_path / "a", {"keep": keep, "drop": os.urandom(400_000)}),
        ref="ci/1",
    )
    second = await put(store, write_tree(tmp_path / "b", {"keep": keep}), ref="ci/2")
    repo = Repository(store)
    (old_index,) = await repo.indexes_of(second)
    old_pack = old_index.chunks[hash_bytes(keep)].pack  # reused from the first put's pack
    await store.delete_ref("ci/1")
    await asyncio.sleep(0.02)
    report = await collect(Repository(store), NOW_GRACE)
    assert report.deleted[Kind.MANIFEST].objects == 1 and report.repacked.objects == 1
    assert report.indexes_rewritten == 1 and report.repack_written.objects == 1
    (new_index,) = await Repository(store).indexes_of(second)
    assert old_pack not in new_index.packs() and new_index.name != old_index.name
    assert old_pack in await ids_of(store, Kind.PACK)  # kept for readers of the old index
    assert (await verify_manifests(Repository(store), [second])).ok
    await asyncio.sleep(0.02)
    report = await collect(Repository(store), NOW_GRACE)
    assert report.deleted[Kind.PACK].objects == 1 and report.repacked.objects == 0
    assert await ids_of(store, Kind.PACK) == new_index.packs()
    stored = sum([i.size async for i in store.list(Kind.PACK)])
    assert stored < 80_000  # the 400 KB dead file is gone
    assert (await verify_manifests(Repository(store), [second])).ok
    assert first not in await ids_of(store, Kind.MANIFEST)


async def test_repacking_can_be_turned_off_and_dry_run_only_counts(store, tmp_path):
    keep = os.urandom(60_000)
    await put(store, write_tree(tmp_path / "a", {"keep": keep, "x": os.urandom(400_000)}), ref="1")
    await put(store, write_tree(tmp_path / "b", {"keep": keep}), ref="2", parent="1")
    await store.delete_ref("1")
    await asyncio.sleep(0.02)
    packs = await ids_of(store, Kind.PACK)
    dry = await collect(Repository(store), GcOptions(grace=0.0, dry_run=True))
    assert dry.repacked.objects == 1 and dry.repack_written.objects == 0
    assert await ids_of(store, Kind.PACK) == packs
    off = await collect(Repository(store), GcOptions(grace=0.0, lease=2.0, repack_below=0))
    assert off.repacked.objects == 0 and off.repack_written.objects == 0
    assert len(await ids_of(store, Kind.PACK)) == len(packs) - off.deleted[Kind.PACK].objects


async def test_one_object_in_two_sparse_packs_is_copied_once(store, tmp_path):
    """Two puts stored the same chunk in their own packs; repacking both keeps one copy."""
    shared = os.urandom(60_000)
    a = await put(store, write_tree(tmp_path / "a", {"s": shared, "x": os.urandom(400_000)}))
    b = await put(store, write_tree(tmp_path / "b", {"s": shared, "y": os.urandom(400_000)}))
    c = await put(store, write_tree(tmp_path / "c", {"s": shared}), ref="c", parent=str(a))
    d = await put(
        store, write_tree(tmp_path / "d", {"s": shared, "t": b"t"}), ref="d", parent=str(b)
    )
    await asyncio.sleep(0.02)
    report = await collect(Repository(store), NOW_GRACE)
    assert report.repacked.objects == 2 and report.repack_written.objects == 1
    (ci,) = await Repository(store).indexes_of(c)
    (di,) = await Repository(store).indexes_of(d)
    assert ci.chunks[hash_bytes(shared)] == di.chunks[hash_bytes(shared)]
    assert (await verify_manifests(Repository(store), [c, d])).ok
