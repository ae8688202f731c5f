"""`cas verify --repair`: corrupt objects go, intact neighbours stay, a re-put restores the rest."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from cas.gc.repair import repair
from cas.gc.verify import Checker
from cas.get.downloader import restore_manifest
from cas.ids import ObjectId, hash_bytes
from cas.pack import PackBuilder, read_entries
from cas.packindex import PackIndex, encode_index
from cas.repo import Repository
from cas.store.base import Kind
from tests.conftest import snapshot
from tests.gc.test_gc import put, write_tree
from tests.gc.test_gc_cli import corrupt_one_chunk
from tests.gc.test_gc_cli import put as cli_put
from tests.test_cli import cas

REPAIR_BACKENDS = ["local_backend", "serve_backend", "gcs_backend"]


@pytest.fixture(params=REPAIR_BACKENDS)
def repair_backend(request: pytest.FixtureRequest):
    return request.getfixturevalue(request.param)


async def check(repo: Repository, manifests: list[ObjectId]):
    checker = Checker(repo)
    try:
        for manifest_id in manifests:
            await checker.check_manifest(manifest_id)
        return checker.report
    finally:
        checker.close()


async def packs_holding(store, kind: str) -> dict[ObjectId, list]:
    """Pack id -> entries of `kind`, read through the store."""
    out = {}
    async for info in store.list(Kind.PACK):
        data = await store.get(Kind.PACK, info.id, max_size=1 << 30)
        entries = [e for e in read_entries(info.id, data, max_chunk=16 << 20) if e.kind == kind]
        if entries:
            out[info.id] = entries
    return out


async def test_repair_drops_the_corrupt_chunk_keeps_its_neighbours_and_a_reput_restores_it(
    repair_backend, tmp_path
):
    backend = repair_backend
    store = backend.store
    # One put, so one pack holds both files' chunks: the damaged one and an intact neighbour.
    src = write_tree(tmp_path / "src", {"bad": os.urandom(40_000), "good": os.urandom(40_000)})
    whole = await put(store, src, ref="whole", reproducible=True)
    good_only = await put(store, write_tree(tmp_path / "g", {"good": (src / "good").read_bytes()}))
    [(pack, entries)] = (await packs_holding(store, "chunk")).items()
    assert len(entries) == 2
    data = bytearray(backend.peek(Kind.PACK, pack))
    # The chunk of "bad" is the one good_only does not reach.
    good_index = await Repository(store).index(good_only)
    bad = next(e for e in entries if e.id not in good_index.chunks)
    data[bad.offset : bad.offset + bad.stored] = b"\xa5" * bad.stored
    backend.plant(Kind.PACK, pack, bytes(data))

    found = await check(Repository(store), [whole, good_only])
    assert found.damaged_packs == {pack}
    done = await repair(Repository(store), found)
    assert done.packs_replaced == [pack] and done.frames_dropped == 1
    assert done.frames_copied == 1 and done.packs_written == 1

    assert pack not in {i.id async for i in store.list(Kind.PACK)}
    after = await check(Repository(store), [whole, good_only])
    assert [m for ms in after.broken.values() for m in ms] == [whole]  # missing, not corrupt
    assert all(p.detail.startswith("missing") for p in after.broken)
    out = tmp_path / "out-good"
    await restore_manifest(Repository(store), good_only, out)
    assert (out / "good").read_bytes() == (src / "good").read_bytes()

    # The same source again, reproducibly: the dropped chunk is stored anew under a new
    # index of the same manifest, which reads whole again.
    assert await put(store, src, reproducible=True) == whole
    assert (await check(Repository(store), [whole, good_only])).ok
    out = tmp_path / "out-whole"
    await restore_manifest(Repository(store), whole, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {
        p.name: p.read_bytes() for p in src.iterdir()
    }


async def test_repair_with_nothing_corrupt_changes_nothing(local_backend, tmp_path):
    store = local_backend.store
    manifest = await put(store, write_tree(tmp_path / "a", {"x": os.urandom(9000)}), ref="a")
    before = local_backend.snapshot()
    found = await check(Repository(store), [manifest])
    assert found.ok
    done = await repair(Repository(store), found)
    assert not done.changed and local_backend.snapshot() == before


def test_cli_repair_then_reput_makes_verify_clean(tmp_path):
    store = str(tmp_path / "store")
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(3):  # under the minimum chunk size: one chunk each
        (src / "d" / f"f{i}").write_bytes(os.urandom(100_000))
    manifest = cli_put(store, src, "--ref", "ci/main/1")
    chunk, pack = corrupt_one_chunk(store)

    proc = cas("verify", "--store", store, "--all", "--repair", "--json", check=False)
    assert proc.returncode == 4  # the exit code says what was found
    report = json.loads(proc.stdout)
    assert report["repair"]["packs_replaced"] == [pack]
    assert report["repair"]["frames_dropped"] == 1 and report["repair"]["frames_copied"] == 2

    again = cas("verify", "--store", store, "--all", check=False)
    assert again.returncode == 3  # only missing now: nothing corrupt is left to be adopted
    assert chunk.encode() in again.stdout and b"missing" in again.stdout

    text = cas("verify", "--store", store, "--all", "--repair", check=False)
    assert b"nothing to remove or heal" in text.stderr

    # A new put of the source stores the lost chunk again (a new manifest: its label differs;
    # its creation time alone may not, within one second); the next repair heals the old
    # manifest, which its ref still names, from that copy.
    assert cli_put(store, src, "--label", "run=2") != manifest
    healed = cas("verify", "--store", store, "--all", "--repair", "--json", check=False)
    assert healed.returncode == 3 and json.loads(healed.stdout)["repair"]["healed"] == [manifest]
    assert cas("verify", "--store", store, "--all").returncode == 0
    out = tmp_path / "out"
    cas("get", "--store", store, "ci/main/1", str(out))
    assert snapshot(out) == snapshot(src)


def test_cli_repair_deletes_a_corrupt_manifest_so_a_reput_writes_it_again(tmp_path):
    store = Path(tmp_path / "store")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(20_000))
    manifest = cli_put(str(store), src, "--ref", "r", "--reproducible")
    [path] = [p for p in (store / "manifest").rglob("*") if p.is_file()]
    path.chmod(0o644)
    path.write_bytes(b"\x28\xb5\x2f\xfd" + b"junk" * 10)

    proc = cas("verify", "--store", str(store), "r", "--repair", "--json", check=False)
    assert proc.returncode == 4
    assert json.loads(proc.stdout)["repair"]["manifests_deleted"] == [manifest]
    assert not path.exists()
    # Only a reproducible put can write the same manifest again (others carry their time).
    assert cli_put(str(store), src, "--reproducible") == manifest
    assert cas("verify", "--store", str(store), "r").returncode == 0


def test_repair_over_cas_serve_needs_the_admin_scope(serve_process, tmp_path, monkeypatch):
    from tests.serve_process import TOKENS

    serve_process.reset()
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(300_000))
    monkeypatch.setenv("CAS_TOKEN", TOKENS["write"])
    cli_put(serve_process.url, src, "--ref", "r")
    pack_dir = serve_process.root / "pack"
    corrupt_one_chunk(str(serve_process.root))
    assert pack_dir.exists()
    before = sorted(p.name for p in serve_process.root.rglob("*") if p.is_file())
    proc = cas("verify", "--store", serve_process.url, "r", "--repair", check=False)
    assert proc.returncode != 0 and b"admin" in proc.stderr
    # Refused before anything was written: no half-done repair.
    assert sorted(p.name for p in serve_process.root.rglob("*") if p.is_file()) == before
    monkeypatch.setenv("CAS_TOKEN", TOKENS["admin"])
    proc = cas("verify", "--store", serve_process.url, "r", "--repair", "--json", check=False)
    assert proc.returncode == 4 and json.loads(proc.stdout)["repair"]["frames_dropped"] == 1


async def test_a_tree_shared_by_two_manifests_is_checked_against_each_ones_index(
    local_backend, tmp_path
):
    """One index lacking a chunk breaks its manifest only, whichever is checked first."""
    store = local_backend.store
    src = write_tree(tmp_path / "src", {"a": os.urandom(30_000), "b": os.urandom(30_000)})
    first = await put(store, src)
    second = await put(store, src, labels={"run": "2"})  # another manifest, the same tree
    assert first != second
    repo = Repository(store)
    [index] = await repo.indexes_of(second)
    lacking = PackIndex(second)
    for kind, object_id, loc in index.items():
        lacking.table(kind)[object_id] = loc
    dropped = next(iter(lacking.chunks))
    del lacking.chunks[dropped]
    name, blob = encode_index(lacking)
    await store.put_if_absent(Kind.INDEX, name, blob)
    await store.delete(Kind.INDEX, index.name)
    for order in ([first, second], [second, first]):
        report = await check(Repository(store), order)
        assert {m for ms in report.broken.values() for m in ms} == {second}, order
        [problem] = report.broken
        assert problem.id == dropped and problem.detail.startswith("missing")


async def test_repair_heals_a_manifest_from_a_copy_it_salvaged_from_another_damaged_pack(
    local_backend, tmp_path
):
    """One repair: both damaged packs salvaged, and a lost chunk found at its new place."""
    store = local_backend.store
    shared, mine, extra, theirs = (os.urandom(40_000) for _ in range(4))
    # No refs, so no parents: each put stores its chunks in a pack of its own.
    first = await put(store, write_tree(tmp_path / "a", {"m": mine, "s": shared, "x": extra}))
    second = await put(store, write_tree(tmp_path / "b", {"s": shared, "t": theirs}))
    third = await put(store, write_tree(tmp_path / "c", {"x": extra}))
    packs = await packs_holding(store, "chunk")
    assert len(packs) == 3
    # First's pack loses the shared chunk and the extra one, second's pack loses theirs:
    # first heals from second's shared chunk (moved to a new pack by this same repair)
    # and from third's extra one; second has no other copy of what it lost.
    lost = {hash_bytes(b) for b in (shared, extra, theirs)}
    by_pack = {pack: {e.id for e in entries} for pack, entries in packs.items()}
    first_pack = next(p for p, ids in by_pack.items() if hash_bytes(mine) in ids)
    second_pack = next(p for p, ids in by_pack.items() if hash_bytes(theirs) in ids)
    for pack in (first_pack, second_pack):
        data = bytearray(local_backend.peek(Kind.PACK, pack))
        for entry in packs[pack]:
            if entry.id in lost and (pack == first_pack or entry.id == hash_bytes(theirs)):
                data[entry.offset : entry.offset + entry.stored] = b"\xa5" * entry.stored
        local_backend.plant(Kind.PACK, pack, bytes(data))

    found = await check(Repository(store), [first, second, third])
    assert found.damaged_packs == {first_pack, second_pack}
    done = await repair(Repository(store), found)
    assert done.frames_dropped == 3 and done.frames_copied == 2 and done.packs_written == 1
    assert done.healed == [first]
    after = await check(Repository(store), [first, second, third])
    assert [(p.id, ms) for p, ms in after.broken.items()] == [(hash_bytes(theirs), [second])]
    out = tmp_path / "out"
    await restore_manifest(Repository(store), first, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {
        "m": mine,
        "s": shared,
        "x": extra,
    }


async def test_repair_deletes_a_damaged_pack_even_when_the_salvage_rebuilds_its_bytes(
    repair_backend, tmp_path
):
    """Two damaged packs whose salvage lays out the first one's bytes again.

    The first pack (by id, the order repair salvages in) holds [Y, X] with X
    corrupt, the second [W, X] with W corrupt. The salvage copies Y, then X
    from the second pack: exactly the first pack's bytes before the damage,
    and so its name. Before, the store refused that name (create-only),
    repair took the pack as intact and kept the damaged file, the indexes
    named its corrupt X, and the second pack, the only good copy of X, was
    deleted.
    """
    backend = repair_backend
    store = backend.store
    x = os.urandom(40_000)
    trees = {"a": {"a": os.urandom(40_000), "b": x}, "b": {"a": os.urandom(40_000), "b": x}}
    # No refs, so no parents: each put packs its chunks apart, file "a" before file "b".
    made = {await put(store, write_tree(tmp_path / n, blobs)): blobs for n, blobs in trees.items()}
    pairs = sorted((await packs_holding(store, "chunk")).items())
    [(low, low_entries), (high, high_entries)] = pairs
    assert low_entries[1].id == high_entries[1].id == hash_bytes(x)
    original = {pack: backend.peek(Kind.PACK, pack) for pack in (low, high)}
    # What the salvage builds: the lower pack's intact frame, then X from the higher one.
    rebuilt = PackBuilder()
    for pack, e in ((low, low_entries[0]), (high, high_entries[1])):
        rebuilt.add(e.kind, e.id, e.raw, original[pack][e.offset : e.offset + e.stored])
    assert rebuilt.seal().id == low
    # The higher pack loses its own chunk: another put holds a copy of it.
    [lost_too] = [b["a"] for b in trees.values() if hash_bytes(b["a"]) == high_entries[0].id]
    made[await put(store, write_tree(tmp_path / "c", {"a": lost_too}))] = {"a": lost_too}
    for pack, e in ((low, low_entries[1]), (high, high_entries[0])):
        data = bytearray(original[pack])
        data[e.offset : e.offset + e.stored] = b"\xa5" * e.stored
        backend.plant(Kind.PACK, pack, bytes(data))

    manifests = list(made)
    found = await check(Repository(store), manifests)
    assert found.damaged_packs == {low, high}
    done = await repair(Repository(store), found)
    assert sorted(done.packs_replaced) == [low, high] and done.frames_dropped == 2
    assert len(done.healed) == 2  # each damaged pack's manifest, from the other copies
    assert not {low, high} & {i.id async for i in store.list(Kind.PACK)}
    assert (await check(Repository(store), manifests)).ok
    checker = Checker(Repository(store))
    try:
        await checker.check_orphans(16 << 20)  # every pack read whole, as `verify --all` does
    finally:
        checker.close()
    assert checker.report.ok and not checker.report.damaged_packs
    for manifest_id, blobs in made.items():
        out = tmp_path / f"out-{manifest_id}"
        await restore_manifest(Repository(store), manifest_id, out)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == blobs


@pytest.mark.parametrize(
    ("where", "kind"), [("local", "chunk"), ("local", "tree"), ("serve", "chunk")]
)
def test_cli_repair_replaces_a_pack_damaged_only_in_its_trailer(
    where, kind, tmp_path, request, monkeypatch
):
    """Every frame of the pack verifies; its trailer does not, so the whole pack fails.

    The salvage copies every frame in order: the pack's own bytes before the
    damage, its own name. Before, repair kept the damaged pack, said "nothing to
    remove or heal", and `verify --all` found it corrupt again every time.
    """
    if where == "serve":
        from tests.serve_process import TOKENS

        server = request.getfixturevalue("serve_process")
        server.reset()
        monkeypatch.setenv("CAS_TOKEN", TOKENS["admin"])
        store, root = server.url, server.root
    else:
        root = tmp_path / "store"
        store = str(root)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):  # one chunk each: a pack of three chunks, a pack of one tree
        (src / f"f{i}").write_bytes(os.urandom(100_000))
    cli_put(store, src, "--ref", "r")
    [(path, entries)] = [
        (p, es)
        for p in (root / "pack").rglob("*")
        if p.is_file()
        for es in [read_entries(bytes.fromhex(p.name), p.read_bytes(), max_chunk=16 << 20)]
        if es[0].kind == kind
    ]
    data = bytearray(path.read_bytes())
    data[entries[-1].offset + entries[-1].stored + 5] ^= 0xFF  # in the trailer's first id
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    assert cas("verify", "--store", store, "r").returncode == 0  # every frame reads intact

    proc = cas("verify", "--store", store, "--all", "--repair", "--json", check=False)
    assert proc.returncode == 4
    repaired = json.loads(proc.stdout)["repair"]
    assert repaired["packs_replaced"] == [path.name]
    assert repaired["frames_dropped"] == 0 and repaired["frames_copied"] == len(entries)
    assert cas("verify", "--store", store, "--all").returncode == 0
    out = tmp_path / "out"
    cas("get", "--store", store, "r", str(out))
    assert snapshot(out) == snapshot(src)


async def test_a_healed_manifest_reads_whole_whichever_of_its_indexes_looks_newest(
    local_backend, tmp_path
):
    """The heal replaces the index it extends: left beside it, a reader could take that one.

    A reader takes a manifest's newest index, and store times are coarse (a
    file system's clock tick, another machine's clock): the index relocated
    just before the heal can look as new as the heal, or newer.
    """
    store = local_backend.store
    shared, mine = os.urandom(40_000), os.urandom(40_000)
    # No refs, so no parents: the second put stores its own copy of the shared chunk.
    first = await put(store, write_tree(tmp_path / "a", {"m": mine, "s": shared}))
    second = await put(store, write_tree(tmp_path / "b", {"s": shared}))
    loc = (await Repository(store).index(first)).chunks[hash_bytes(shared)]
    data = bytearray(local_backend.peek(Kind.PACK, loc.pack))
    data[loc.offset : loc.offset + loc.stored] = b"\xa5" * loc.stored
    local_backend.plant(Kind.PACK, loc.pack, bytes(data))
    found = await check(Repository(store), [first, second])
    assert found.damaged_packs == {loc.pack}
    done = await repair(Repository(store), found)
    assert done.healed == [first]

    later = time.time() + 60
    for index in await Repository(store).indexes_of(first):
        if hash_bytes(shared) not in index.chunks:  # an index the heal extended
            os.utime(local_backend.path(Kind.INDEX, index.name), (later, later))
    assert (await check(Repository(store), [first, second])).ok
    out = tmp_path / "out"
    await restore_manifest(Repository(store), first, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {"m": mine, "s": shared}
