"""The store conformance suite: every backend must pass all of it.

Each test takes the parametrised `backend` fixture (see tests/conftest.py),
so adding a backend to `STORE_BACKENDS` runs the whole suite against it.
Objects are real ones of their namespace (packs, pack indexes, zstd frames
named by their BLAKE3; tests/store/stored.py), because a backend may check
what it is given: `cas serve` refuses anything else.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from datetime import UTC, datetime, timedelta

import pytest

from cas.errors import AlreadyExists, CasError, IntegrityError, ObjectNotFound, UsageError
from cas.ids import ObjectId, hash_bytes
from cas.pack import MAX_PACK_BYTES, SealedPack, decode_frame
from cas.store.base import Kind
from tests.store.stored import pack_of, stored, two_encodings


def oid(data: bytes) -> ObjectId:
    return hash_bytes(data)


def obj(content: bytes, kind: Kind = Kind.PACK, level: int = 3) -> tuple[ObjectId, bytes]:
    """A well-formed object of `kind`: its id and its stored bytes."""
    return stored(kind, content, level)


async def test_put_if_absent_true_then_false_and_bytes_unchanged(backend):
    store = backend.store
    object_id, first, second = two_encodings(b"one, two, three. " * 500)
    assert await store.put_if_absent(Kind.MANIFEST, object_id, first) is True
    assert await store.put_if_absent(Kind.MANIFEST, object_id, second) is False
    assert await store.get(Kind.MANIFEST, object_id, max_size=10_000) == first
    assert backend.peek(Kind.MANIFEST, object_id) == first


async def test_concurrent_creators_of_one_id_exactly_one_wins(store):
    object_id, blob = obj(b"race" * 1000)
    results = await asyncio.gather(
        *(store.put_if_absent(Kind.PACK, object_id, blob) for _ in range(32))
    )
    assert results.count(True) == 1
    assert await store.get(Kind.PACK, object_id, max_size=10_000) == blob


async def test_kinds_are_separate_namespaces(store):
    object_id, blob = obj(b"shared")
    await store.put_if_absent(Kind.PACK, object_id, blob)
    assert await store.missing(Kind.INDEX, [object_id]) == {object_id}
    with pytest.raises(ObjectNotFound):
        await store.get(Kind.MANIFEST, object_id, max_size=10)


async def test_get_missing_raises_object_not_found(store):
    absent = oid(b"absent")
    with pytest.raises(ObjectNotFound) as raised:
        await store.get(Kind.PACK, absent, max_size=10)
    # Which object is gone, without parsing the message (gc, verify and repair use it).
    assert (str(raised.value.kind), raised.value.object_id) == (str(Kind.PACK), str(absent))
    with pytest.raises(ObjectNotFound) as ranged:
        await store.get_range(Kind.PACK, absent, 0, 1)
    assert ranged.value.object_id == str(absent)
    with pytest.raises(FileNotFoundError):  # the dual base lets plain callers catch it
        await store.stat(Kind.PACK, oid(b"absent"))


async def test_stat_of_a_missing_object_names_it(store):
    absent = oid(b"absent, asked for its size")
    with pytest.raises(ObjectNotFound) as raised:
        await store.stat(Kind.INDEX, absent)
    assert (str(raised.value.kind), raised.value.object_id) == (str(Kind.INDEX), str(absent))


async def test_get_refuses_objects_larger_than_max_size(store):
    object_id, blob = obj(os.urandom(2000))
    assert len(blob) > 1000
    await store.put_if_absent(Kind.PACK, object_id, blob)
    with pytest.raises(CasError):
        await store.get(Kind.PACK, object_id, max_size=1000)


async def test_missing_empty_mixed_and_large(store):
    assert await store.missing(Kind.PACK, []) == set()
    present = []
    for i in range(5):
        object_id, blob = obj(b"p%d" % i)
        await store.put_if_absent(Kind.PACK, object_id, blob)
        present.append(object_id)
    absent = [oid(b"a%d" % i) for i in range(5)]
    assert await store.missing(Kind.PACK, present + absent) == set(absent)
    many = [oid(b"m%d" % i) for i in range(10_000)]
    assert await store.missing(Kind.PACK, many + present) == set(many)


async def test_list_shows_complete_objects_only(backend):
    store = backend.store
    ids = set()
    for i in range(20):
        object_id, blob = obj(b"l%d" % i, Kind.INDEX)
        await store.put_if_absent(Kind.INDEX, object_id, blob)
        ids.add(object_id)
    backend.plant_partial(str(oid(b"partial")) + ".deadbeef", b"half")
    listed = {info.id async for info in store.list(Kind.INDEX)}
    assert listed == ids
    assert {info.id async for info in store.list(Kind.PACK)} == set()


async def test_list_prefix(store):
    ids = []
    for i in range(64):
        object_id, blob = obj(b"x%d" % i)
        await store.put_if_absent(Kind.PACK, object_id, blob)
        ids.append(object_id)
    prefix = str(ids[0])[:1]
    listed = {info.id async for info in store.list(Kind.PACK, prefix)}
    assert listed == {i for i in ids if str(i).startswith(prefix)}
    prefix3 = str(ids[0])[:3]
    assert {info.id async for info in store.list(Kind.PACK, prefix3)} == {
        i for i in ids if str(i).startswith(prefix3)
    }


@pytest.mark.parametrize("prefix", ["AB", "../", "0g"])
async def test_list_refuses_a_prefix_that_is_not_lower_case_hex(store, prefix):
    with pytest.raises(UsageError, match="list prefix must be lower-case hex"):
        async for _ in store.list(Kind.PACK, prefix):
            pass


async def test_stat_size_and_mtime(store):
    object_id, blob = obj(os.urandom(1234))
    before = datetime.now(UTC) - timedelta(seconds=2)
    await store.put_if_absent(Kind.PACK, object_id, blob)
    info = await store.stat(Kind.PACK, object_id)
    after = datetime.now(UTC) + timedelta(seconds=2)
    assert info.size == len(blob)
    assert info.kind == Kind.PACK and info.id == object_id
    assert before <= info.mtime <= after


async def test_delete_is_idempotent(store):
    object_id, blob = obj(b"del")
    await store.put_if_absent(Kind.PACK, object_id, blob)
    await store.delete(Kind.PACK, object_id)
    await store.delete(Kind.PACK, object_id)
    assert await store.missing(Kind.PACK, [object_id]) == {object_id}
    # Deleted names can be created again (gc then re-put).
    assert await store.put_if_absent(Kind.PACK, object_id, blob) is True


async def test_refs_are_create_only(store):
    a, b = oid(b"ma"), oid(b"mb")
    await store.create_ref("ci/main/1", a)
    with pytest.raises(AlreadyExists):
        await store.create_ref("ci/main/1", b)
    assert await store.read_ref("ci/main/1") == a
    results = await asyncio.gather(
        *(store.create_ref("ci/race", a) for _ in range(16)), return_exceptions=True
    )
    assert sum(r is None for r in results) == 1
    assert all(isinstance(r, AlreadyExists) for r in results if r is not None)


async def test_refs_list_read_delete(store):
    target = oid(b"m")
    for name in ("ci/main/2", "ci/main/1", "ci/pr/7", "release"):
        await store.create_ref(name, target)
    names = [r.name async for r in store.list_refs("ci/main/")]
    assert names == ["ci/main/1", "ci/main/2"]
    assert len([r async for r in store.list_refs()]) == 4
    await store.delete_ref("ci/pr/7")
    await store.delete_ref("ci/pr/7")
    with pytest.raises(ObjectNotFound):
        await store.read_ref("ci/pr/7")


@pytest.mark.parametrize(
    "name", ["", "..", "a/../b", "/abs", "a//b", "a/", ".hidden", "-opt", "sp ace", "nul\0", "é"]
)
async def test_invalid_ref_names_rejected_before_io(store, name):
    with pytest.raises(UsageError):
        await store.create_ref(name, oid(b"m"))
    with pytest.raises(UsageError):
        await store.read_ref(name)


@pytest.mark.parametrize("bad", [b"short", "a" * 64, "../" + "0" * 61, None])
async def test_invalid_ids_rejected_before_io(backend, bad):
    store = backend.store
    before = backend.snapshot()
    with pytest.raises(UsageError):
        await store.put_if_absent(Kind.PACK, bad, b"x")
    with pytest.raises(UsageError):
        await store.get(Kind.PACK, bad, max_size=10)
    with pytest.raises(UsageError):
        await store.missing(Kind.PACK, [bad])
    with pytest.raises(UsageError):
        await store.get_range(Kind.PACK, bad, 0, 1)
    assert backend.snapshot() == before


@pytest.fixture(scope="module")
def big_pack() -> SealedPack:
    """A pack near the largest a server accepts: 7 incompressible chunks of 16 MiB."""
    pack = pack_of(*(os.urandom(16 << 20) for _ in range(7)), level=1)
    assert MAX_PACK_BYTES - (16 << 20) < len(pack.data) <= MAX_PACK_BYTES
    return pack


async def test_smallest_and_largest_objects(store, big_pack):
    """A pack without frames, a frame of empty content, and a pack of almost 128 MiB."""
    empty = pack_of()
    assert await store.put_if_absent(Kind.PACK, empty.id, empty.data) is True
    assert await store.get(Kind.PACK, empty.id, max_size=len(empty.data)) == empty.data
    assert (await store.stat(Kind.PACK, empty.id)).size == len(empty.data)
    nothing, frame = obj(b"", Kind.MANIFEST)
    assert await store.put_if_absent(Kind.MANIFEST, nothing, frame) is True
    assert await store.get(Kind.MANIFEST, nothing, max_size=len(frame)) == frame
    assert await store.put_if_absent(Kind.PACK, big_pack.id, big_pack.data) is True
    assert await store.get(Kind.PACK, big_pack.id, max_size=len(big_pack.data)) == big_pack.data
    last = big_pack.entries[-1]
    frame = await store.get_range(Kind.PACK, big_pack.id, last.offset, last.stored)
    assert len(decode_frame(last, frame)) == 16 << 20


async def test_put_many_creates_only_the_absent(backend):
    """Batch writes are create-only too (frames, so one id can have two encodings)."""
    store = backend.store
    (a, blob_a), (c, blob_c) = obj(b"pa", Kind.MANIFEST), obj(b"pc", Kind.MANIFEST)
    b, original, changed = two_encodings(b"pb" * 1000)
    await store.put_if_absent(Kind.MANIFEST, b, original)
    created = await store.put_many(Kind.MANIFEST, [(a, blob_a), (b, changed), (c, blob_c)])
    assert created == [True, False, True]
    assert backend.peek(Kind.MANIFEST, b) == original
    got = await store.get_many(Kind.MANIFEST, [a, b, c], max_size=10_000)
    assert got == {a: blob_a, b: original, c: blob_c}


async def test_get_many_names_the_missing_object(store):
    (present, blob), absent = obj(b"gm1"), oid(b"gm2")
    await store.put_if_absent(Kind.PACK, present, blob)
    with pytest.raises(ObjectNotFound, match=str(absent)):
        await store.get_many(Kind.PACK, [present, absent], max_size=1000)


async def test_concurrent_put_many_of_one_id_creates_once(store):
    object_id, blob = obj(b"pm-race")
    results = await asyncio.gather(
        *(store.put_many(Kind.PACK, [(object_id, blob)]) for _ in range(16))
    )
    assert sum(r[0] for r in results) == 1


async def test_put_then_get_round_trip_through_the_backend(store, tmp_path):
    """The whole put/get path, once per backend: what went in comes out."""
    from cas.get.downloader import Downloader
    from cas.put.uploader import PutOptions, Uploader
    from cas.repo import Repository
    from tests.conftest import snapshot

    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "big.bin").write_bytes(os.urandom(3 << 20))
    (source / "small.txt").write_text("hello\n")
    (source / "empty").write_bytes(b"")
    (source / "link").symlink_to("small.txt")
    result = await Uploader(Repository(store), PutOptions(processes=False)).put(source)
    await Downloader(Repository(store)).get(result.manifest_id, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(source)


@pytest.mark.parametrize("kind", list(Kind))
async def test_every_namespace_stores_lists_and_deletes(store, kind):
    """Every `Kind`, including the gc records namespace, behaves the same."""
    objects = [obj(b"%s-%d" % (kind.value.encode(), i), kind) for i in range(5)]
    ids = [i for i, _ in objects]
    assert [await store.put_if_absent(kind, i, b) for i, b in objects] == [True] * 5
    assert {info.id async for info in store.list(kind)} == set(ids)
    assert await store.get(kind, ids[0], max_size=1000) == objects[0][1]
    for other in (k for k in Kind if k is not kind):
        assert await store.missing(other, ids) == set(ids)
    await store.delete(kind, ids[0])
    assert {info.id async for info in store.list(kind)} == set(ids[1:])


async def test_delete_many_removes_present_and_ignores_absent(store):
    objects = [obj(b"dm%d" % i) for i in range(40)]
    ids = [i for i, _ in objects]
    await store.put_many(Kind.PACK, objects[:30])
    await store.delete_many(Kind.PACK, ids[:20] + ids[30:] + ids[:5])
    assert await store.missing(Kind.PACK, ids) == set(ids[:20] + ids[30:])
    assert await store.missing(Kind.PACK, ids[20:30]) == set()
    await store.delete_many(Kind.PACK, [])


async def test_mtime_of_a_new_object_is_not_before_an_older_one(store):
    """gc compares store times of objects with the time of its start record."""
    (first, blob1), (second, blob2) = obj(b"t1", Kind.GC), obj(b"t2")
    await store.put_if_absent(Kind.GC, first, blob1)
    await asyncio.sleep(0.02)
    await store.put_if_absent(Kind.PACK, second, blob2)
    assert (await store.stat(Kind.PACK, second)).mtime >= (await store.stat(Kind.GC, first)).mtime


# ------------------------------------------------------------------ byte ranges


@pytest.fixture
async def stored_pack(store) -> SealedPack:
    pack = pack_of(b"first chunk " * 300, os.urandom(5000), b"last")
    await store.put_if_absent(Kind.PACK, pack.id, pack.data)
    return pack


async def test_get_range_reads_each_frame_of_a_pack(store, stored_pack):
    pack = stored_pack
    for entry in pack.entries:
        frame = await store.get_range(Kind.PACK, pack.id, entry.offset, entry.stored)
        assert frame == pack.data[entry.offset : entry.offset + entry.stored]
        assert decode_frame(entry, frame)
    middle = await store.get_range(Kind.PACK, pack.id, 3, 10)
    assert middle == pack.data[3:13]


async def test_get_range_ending_exactly_at_the_end(store, stored_pack):
    data = stored_pack.data
    assert await store.get_range(Kind.PACK, stored_pack.id, len(data) - 16, 16) == data[-16:]
    assert await store.get_range(Kind.PACK, stored_pack.id, 0, len(data)) == data
    assert await store.get_range(Kind.PACK, stored_pack.id, len(data) - 1, 1) == data[-1:]


@pytest.mark.parametrize(("back", "length"), [(5, 10), (0, 1), (0, 4096), (-100, 1)])
async def test_get_range_past_the_end_is_an_integrity_error(store, stored_pack, back, length):
    """An index pointing past its pack's end means corruption, not a short read."""
    pack = stored_pack
    offset = len(pack.data) - back
    with pytest.raises(IntegrityError) as raised:
        await store.get_range(Kind.PACK, pack.id, offset, length)
    assert raised.value.kind == "pack"
    assert raised.value.object_id == str(pack.id)


async def test_get_range_of_an_absent_object_names_it(store, stored_pack):
    absent = oid(b"no such pack")
    with pytest.raises(ObjectNotFound, match=f"pack {absent}"):
        await store.get_range(Kind.PACK, absent, 0, 10)
    with pytest.raises(ObjectNotFound, match=f"index {stored_pack.id}"):
        await store.get_range(Kind.INDEX, stored_pack.id, 0, 10)


@pytest.mark.parametrize(
    ("offset", "length"), [(-1, 10), (0, 0), (10, -5), (0.5, 10), (0, 2.0), (True, 1), (0, "1")]
)
async def test_get_range_refuses_bad_arguments_before_io(backend, offset, length):
    before = backend.snapshot()
    with pytest.raises(UsageError, match="range"):
        await backend.store.get_range(Kind.PACK, oid(b"x"), offset, length)
    assert backend.snapshot() == before


async def test_an_upload_written_in_pieces_is_named_whole_and_create_only(backend):
    store = backend.store
    pack = pack_of(os.urandom(300_000), os.urandom(200_000), b"small" * 100)
    cuts = [0, 8, 1000, 150_000, len(pack.data) - 16, len(pack.data)]
    upload = store.begin_upload(Kind.PACK)
    for a, b in itertools.pairwise(cuts):
        upload.write([pack.data[a:b], b""])
    assert await store.missing(Kind.PACK, [pack.id]) == {pack.id}  # nothing named before finish
    assert await upload.finish(pack.id) is True
    assert backend.peek(Kind.PACK, pack.id) == pack.data
    again = store.begin_upload(Kind.PACK)
    again.write([pack.data])
    assert await again.finish(pack.id) is False  # never overwrites
    assert backend.peek(Kind.PACK, pack.id) == pack.data


async def test_an_aborted_upload_leaves_nothing(store):
    pack = pack_of(b"aborted" * 1000)
    upload = store.begin_upload(Kind.PACK)
    upload.write([pack.data])
    upload.abort()
    assert await store.missing(Kind.PACK, [pack.id]) == {pack.id}
    assert [i async for i in store.list(Kind.PACK)] == []
