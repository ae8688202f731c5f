"""Store faults under the retry layer: transient ones survived, permanent ones one typed error.

The bounded campaign (a few seeds, local store) asserts the invariants of
`tests/campaigns/fault_campaign.py`; the targeted tests put one fault at one
chosen call and check what the user sees.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from cas.errors import IntegrityError, PermissionDenied, StoreUnavailable
from cas.gc.collector import GcOptions, collect
from cas.gc.verify import verify_manifests
from cas.get.downloader import Downloader
from cas.put.uploader import PutOptions, Uploader
from cas.repo import Repository
from cas.store.base import Kind
from cas.store.local import LocalStore
from cas.store.retrying import RetryingStore, RetryPolicy
from tests.campaigns.fault_campaign import (
    PARAMS,
    run_campaign,
    snapshot,
    temporaries,
    write_tree,
)
from tests.campaigns.faults import Fault, FaultPlan, FaultStore

FAST = RetryPolicy(attempts=4, initial=0.001, maximum=0.01, deadline=5)


@pytest.mark.parametrize("seed", [3, 11])
async def test_campaign_keeps_every_invariant(tmp_path: Path, seed: int) -> None:
    # Rounds alternate transient and permanent mode (gc in the permanent ones), started
    # for 2.5 s; a higher rate than the long runs' makes each round count.
    figures = await run_campaign(
        seed, 2.5, workdir=tmp_path, max_rounds=4, rate=0.08, files=14, permanent_every=2
    )
    assert figures.rounds >= 1, figures.report()
    assert figures.unexpected == [], figures.report()
    assert figures.violations == [], figures.report()
    assert figures.bytes_lost == 0
    assert sum(figures.injected.values()) > 5, figures.report()
    assert figures.succeeded["put"] > 0 and figures.succeeded["get-empty"] > 0


# ---------------------------------------------------------------- targeted faults


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store", fsync=False)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    write_tree(random.Random(5), root, 20)
    (root / "big.bin").write_bytes(random.Random(6).randbytes(600_000))  # several chunks
    return root


def _layers(store: LocalStore, *at: tuple[str, int, Fault]) -> tuple[Repository, FaultStore]:
    layer = FaultStore(store, FaultPlan(at=at))
    return Repository(RetryingStore(layer, FAST), level=1), layer


async def _put(repo: Repository, source: Path, ref: str | None = "ci/1"):
    options = PutOptions(params=PARAMS, level=1, ref=ref, pack_size=64 << 10, processes=False)
    return await Uploader(repo, options).put(source)


async def _reads_back(store: LocalStore, manifest, source: Path, dest: Path) -> None:
    await Downloader(Repository(store)).get(manifest, dest)
    assert snapshot(dest) == snapshot(source)
    assert (await verify_manifests(Repository(store), [manifest])).ok


async def test_lost_ack_on_create_ref_is_our_own_success(store, source, tmp_path):
    repo, layer = _layers(store, ("create_ref", 1, Fault.LOST_ACK))
    result = await _put(repo, source)
    assert layer.injected == {Fault.LOST_ACK: 1}
    assert await store.read_ref("ci/1") == result.manifest_id
    await _reads_back(store, result.manifest_id, source, tmp_path / "out")


async def test_duplicated_create_ref_is_our_own_success(store, source, tmp_path):
    # The store ran the create twice: the answer seen is "already exists", but the
    # ref names this put's manifest, so the put did what was asked.
    repo, layer = _layers(store, ("create_ref", 1, Fault.DUPLICATE))
    result = await _put(repo, source)
    assert layer.injected == {Fault.DUPLICATE: 1}
    assert await store.read_ref("ci/1") == result.manifest_id


async def test_duplicated_and_lost_pack_uploads_store_each_pack_once(store, source, tmp_path):
    repo, layer = _layers(
        store,
        ("put_if_absent", 1, Fault.DUPLICATE),
        ("put_if_absent", 2, Fault.LOST_ACK),
        ("put_if_absent", 3, Fault.TIMEOUT),
    )
    result = await _put(repo, source)
    assert layer.injected == {Fault.DUPLICATE: 1, Fault.LOST_ACK: 1, Fault.TIMEOUT: 1}
    assert result.stats.packs > 3
    await _reads_back(store, result.manifest_id, source, tmp_path / "out")


@pytest.mark.parametrize("fault", [Fault.TRUNCATE, Fault.FLIP])
async def test_damaged_range_reads_fail_the_get_with_integrity_error(
    store, source, tmp_path, fault
):
    result = await _put(Repository(store, level=1), source)
    layer = FaultStore(store, FaultPlan(rate=1.0, kinds=(fault,), methods=frozenset({"get_range"})))
    dest = tmp_path / "out"
    with pytest.raises(IntegrityError) as caught:
        await Downloader(Repository(RetryingStore(layer, FAST))).get(result.manifest_id, dest)
    assert layer.injected[fault] >= 1
    assert "corrupt" in str(caught.value)
    assert temporaries(dest) == []
    assert [e for e in snapshot(dest).values() if e[0] != "dir"] == []  # no file written


@pytest.mark.parametrize("fault", [Fault.TRUNCATE, Fault.FLIP])
@pytest.mark.parametrize("call", [1, 2, 3])
async def test_one_damaged_range_read_never_reaches_the_destination(
    store, source, tmp_path, fault, call
):
    # A merged read that comes back damaged is read again without its neighbours;
    # either the get ends exact, or it fails with IntegrityError having written
    # only real content.
    result = await _put(Repository(store, level=1), source)
    repo, layer = _layers(store, ("get_range", call, fault))
    dest = tmp_path / "out"
    try:
        await Downloader(repo).get(result.manifest_id, dest)
    except IntegrityError:
        want = snapshot(source)
        for rel, entry in snapshot(dest).items():
            assert entry[0] == "dir" or entry[:3] == want[rel][:3], rel
    else:
        assert snapshot(dest) == snapshot(source)
    assert layer.injected == {fault: 1}
    assert temporaries(dest) == []


async def test_one_flipped_manifest_read_is_read_again(store, source, tmp_path):
    # A damaged answer is not a damaged object: the read is made once more.
    result = await _put(Repository(store, level=1), source)
    repo, layer = _layers(store, ("get", 1, Fault.FLIP))
    await Downloader(repo).get(result.manifest_id, tmp_path / "out")
    assert layer.injected == {Fault.FLIP: 1}
    assert snapshot(tmp_path / "out") == snapshot(source)


async def test_flipped_manifest_read_twice_names_the_manifest(store, source, tmp_path):
    result = await _put(Repository(store, level=1), source)
    repo, _ = _layers(store, ("get", 1, Fault.FLIP), ("get", 2, Fault.FLIP))
    with pytest.raises(IntegrityError) as caught:
        await Downloader(repo).get(result.manifest_id, tmp_path / "out")
    assert caught.value.object_id == str(result.manifest_id)
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


async def test_permanent_error_on_create_ref_is_one_typed_error_with_the_manifest_whole(
    store, source, tmp_path
):
    repo, layer = _layers(store, ("create_ref", 1, Fault.PERMANENT))
    with pytest.raises(PermissionDenied):
        await _put(repo, source)
    assert layer.calls["create_ref"] == 1  # not retried
    assert [r async for r in store.list_refs()] == []
    manifests = [info.id async for info in store.list(Kind.MANIFEST)]
    assert len(manifests) == 1  # written before the ref: complete, and named by nothing
    await _reads_back(store, manifests[0], source, tmp_path / "out")


async def test_transient_errors_past_the_retry_budget_give_store_unavailable(store, source):
    at = tuple(("read_ref", n, Fault.ERROR) for n in range(1, FAST.attempts + 1))
    repo, layer = _layers(store, *at)
    with pytest.raises(StoreUnavailable, match=f"gave up after {FAST.attempts} tries"):
        await _put(repo, source)
    assert layer.calls["read_ref"] == FAST.attempts
    assert [info async for info in store.list(Kind.MANIFEST)] == []


async def test_slow_answers_and_broken_listings_are_survived(store, source, tmp_path):
    await _put(Repository(store, level=1), source, ref="ci/0")
    repo, layer = _layers(
        store,
        ("list_refs", 1, Fault.ERROR),  # the parent lookup's listing breaks off
        ("get", 1, Fault.SLOW),
        ("missing", 1, Fault.TIMEOUT),
    )
    result = await _put(repo, source, ref="ci/1")
    assert layer.injected[Fault.SLOW] == 1 and layer.injected[Fault.TIMEOUT] == 1
    assert layer.injected[Fault.ERROR] == 1
    assert result.stats.parents  # the parent was found after the listing restarted
    await _reads_back(store, result.manifest_id, source, tmp_path / "out")


@pytest.mark.parametrize(("call", "kind"), [(1, Kind.MANIFEST), (2, Kind.INDEX)])
@pytest.mark.parametrize("fault", [Fault.TRUNCATE, Fault.FLIP])
async def test_gc_that_reads_a_damaged_root_deletes_nothing_it_reaches(
    store, source, tmp_path, call, kind, fault
):
    # A damaged read of a kept root's manifest or index is reported, never taken as
    # "this root reaches nothing": its index and packs must survive the sweep.
    result = await _put(Repository(store, level=1), source)
    # A manifest is read twice before it is called damaged; gc reads indexes once.
    twice = (("get", call + 1, fault),) if kind is Kind.MANIFEST else ()
    repo, layer = _layers(store, ("get", call, fault), *twice)
    report = await collect(repo, GcOptions(grace=0.0, lease=2.0))
    assert layer.injected == {fault: 1 + len(twice)}
    assert [(k, i) for k, i, _ in report.unreadable] == [(kind, result.manifest_id)]
    assert report.deleted[Kind.INDEX].objects == 0 and report.deleted[Kind.PACK].objects == 0
    await _reads_back(store, result.manifest_id, source, tmp_path / "out")


async def test_failed_pack_upload_is_one_error_and_no_unretrieved_task(store, source):
    # A pack upload that fails is raised by the put; asyncio must not also print
    # "Task exception was never retrieved" with a traceback on the user's terminal.
    import asyncio
    import gc

    loop = asyncio.get_running_loop()
    logged: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: logged.append(context))
    try:
        repo, layer = _layers(store, ("put_if_absent", 2, Fault.PERMANENT))
        with pytest.raises(PermissionDenied):
            await _put(repo, source)
        assert layer.injected == {Fault.PERMANENT: 1}
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert [c.get("message") for c in logged] == []


@pytest.mark.parametrize(("call", "kind"), [(1, Kind.MANIFEST), (2, Kind.INDEX)])
async def test_repair_deletes_nothing_verify_only_read_damaged(store, source, tmp_path, call, kind):
    # verify through a flaky store reports the manifest (or index) corrupt; the object
    # itself is intact, so `verify --repair` must read it again and keep it.
    from cas.gc.repair import repair

    result = await _put(Repository(store, level=1), source)
    repo, _ = _layers(store, ("get", call, Fault.FLIP), ("get", call + 1, Fault.FLIP))
    found = await verify_manifests(repo, [result.manifest_id])
    flagged = found.corrupt_manifests if kind is Kind.MANIFEST else found.corrupt_indexes
    assert len(flagged) == 1
    done = await repair(Repository(store), found, lease_seconds=2.0)
    assert done.manifests_deleted == [] and done.indexes_deleted == []
    assert await store.read_ref("ci/1") == result.manifest_id
    await _reads_back(store, result.manifest_id, source, tmp_path / "out")


async def test_repair_keeps_every_frame_of_a_pack_verify_only_read_damaged(store, source, tmp_path):
    # A flipped range read makes verify flag a pack; read again, all its frames verify.
    # Repair copies them into a pack of another name (the store cannot tell it the
    # flagged one is intact), the index names the copy, and only then does the flagged
    # pack go. Before that, repair left its entries out of the index and deleted it.
    from cas.gc.repair import repair

    result = await _put(Repository(store, level=1), source)
    # The root tree's read and its read again both come back damaged.
    repo, layer = _layers(store, ("get_range", 1, Fault.FLIP), ("get_range", 2, Fault.FLIP))
    found = await verify_manifests(repo, [result.manifest_id])
    assert layer.injected == {Fault.FLIP: 2} and found.damaged_packs
    done = await repair(repo, found, lease_seconds=2.0)
    assert done.packs_replaced == sorted(found.damaged_packs) and done.frames_dropped == 0
    await _reads_back(store, result.manifest_id, source, tmp_path / "out")


async def test_repair_reads_a_damaged_frame_again_before_dropping_it(store, source, tmp_path):
    # verify's read and then repair's read of the same pack both come back damaged
    # once: the frame is read again by itself, verifies, and nothing is dropped.
    from cas.gc.repair import repair

    result = await _put(Repository(store, level=1), source)
    found = await verify_manifests(
        _layers(store, ("get_range", 1, Fault.FLIP), ("get_range", 2, Fault.FLIP))[0],
        [result.manifest_id],
    )
    assert found.damaged_packs
    repo, layer = _layers(store, ("get_range", 1, Fault.FLIP))
    done = await repair(repo, found, lease_seconds=2.0)
    assert layer.injected == {Fault.FLIP: 1}
    assert done.frames_dropped == 0
    await _reads_back(store, result.manifest_id, source, tmp_path / "out")


async def test_repair_reads_a_damaged_index_again_before_deleting_packs(store, source):
    # A pack really holds one corrupt chunk; repair's first read of the index that
    # names the pack comes back damaged. Taken as "names nothing", the index was not
    # rewritten and lost every intact frame of the replaced pack.
    from cas.gc.repair import repair
    from cas.pack import ObjectKind

    result = await _put(Repository(store, level=1), source)
    index = await Repository(store).index(result.manifest_id)
    chunk, loc = next(iter(sorted(index.table(ObjectKind.CHUNK).items())))
    path = store.root / "pack" / str(loc.pack)[:2] / str(loc.pack)
    data = bytearray(path.read_bytes())
    data[loc.offset + loc.stored // 2] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    found = await verify_manifests(Repository(store), [result.manifest_id])
    assert found.damaged_packs == {loc.pack}
    repo, layer = _layers(store, ("get", 1, Fault.FLIP))
    done = await repair(repo, found, lease_seconds=2.0)
    assert layer.injected == {Fault.FLIP: 1}
    assert done.frames_dropped == 1 and done.indexes_rewritten == 1
    after = await verify_manifests(Repository(store), [result.manifest_id])
    assert [p.id for p in after.broken] == [chunk]  # only the corrupt chunk is missing


@pytest.mark.parametrize("call", [2, 3])
async def test_gc_keeps_every_index_of_a_root_when_one_reads_damaged(store, source, tmp_path, call):
    # A root with two indexes (a repaired put leaves two): the read of either comes
    # back damaged once. Before, gc marked only the one that read well, and deleted
    # the other with the packs only it names.
    from cas.pack import ObjectKind
    from cas.packindex import PackIndex, encode_index

    result = await _put(Repository(store, level=1), source)
    full = (await Repository(store).indexes_of(result.manifest_id))[0]
    trees = PackIndex(result.manifest_id)
    trees.table(ObjectKind.TREE).update(full.table(ObjectKind.TREE))
    name, blob = encode_index(trees)
    await store.put_if_absent(Kind.INDEX, name, blob)
    os.utime(store.root / "index" / str(name)[:2] / str(name), (1, 1))  # the older one
    repo, layer = _layers(store, ("get", call, Fault.FLIP))  # get 1 reads the manifest
    report = await collect(repo, GcOptions(grace=0.0, lease=2.0))
    assert layer.injected == {Fault.FLIP: 1}
    assert [(k, i) for k, i, _ in report.unreadable] == [(Kind.INDEX, result.manifest_id)]
    assert report.deleted[Kind.INDEX].objects == 0 and report.deleted[Kind.PACK].objects == 0
    assert len([i async for i in store.list(Kind.INDEX)]) == 2
    await _reads_back(store, result.manifest_id, source, tmp_path / "out")
