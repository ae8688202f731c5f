"""The store conformance suite: every backend must pass all of it.

Each test takes the parametrised `backend` fixture (see tests/conftest.py),
so adding a backend to `STORE_BACKENDS` runs the whole suite against it.
Objects are real ones (a zstd frame of content named by its BLAKE3), because
a backend may check what it is given: `cas serve` refuses anything else.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta

import pytest
import zstandard

from cas import codec
from cas.errors import AlreadyExists, CasError, ObjectNotFound, UsageError
from cas.ids import ObjectId, hash_bytes
from cas.repo import encode_object
from cas.store.base import Kind


def oid(data: bytes) -> ObjectId:
    return hash_bytes(data)


def obj(content: bytes, level: int = 3) -> tuple[ObjectId, bytes]:
    """A well-formed object: the id of `content` and its stored frame."""
    return encode_object(content, level)


def two_encodings(content: bytes) -> tuple[ObjectId, bytes, bytes]:
    """Two different, equally valid frames of one content (same id, other bytes)."""
    first = codec.encode(content)
    second = zstandard.ZstdCompressor(write_content_size=True, write_checksum=True).compress(
        content
    )
    assert first != second
    return oid(content), first, second


async def test_put_if_absent_true_then_false_and_bytes_unchanged(backend):
    store = backend.store
    object_id, first, second = two_encodings(b"one, two, three. " * 500)
    assert await store.put_if_absent(Kind.CHUNK, object_id, first) is True
    assert await store.put_if_absent(Kind.CHUNK, object_id, second) is False
    assert await store.get(Kind.CHUNK, object_id, max_size=10_000) == first
    assert backend.peek(Kind.CHUNK, object_id) == first


async def test_concurrent_creators_of_one_id_exactly_one_wins(store):
    object_id, blob = obj(b"race" * 1000)
    results = await asyncio.gather(
        *(store.put_if_absent(Kind.CHUNK, object_id, blob) for _ in range(32))
    )
    assert results.count(True) == 1
    assert await store.get(Kind.CHUNK, object_id, max_size=10_000) == blob


async def test_kinds_are_separate_namespaces(store):
    object_id, blob = obj(b"shared")
    await store.put_if_absent(Kind.CHUNK, object_id, blob)
    assert await store.missing(Kind.TREE, [object_id]) == {object_id}
    with pytest.raises(ObjectNotFound):
        await store.get(Kind.MANIFEST, object_id, max_size=10)


async def test_get_missing_raises_object_not_found(store):
    with pytest.raises(ObjectNotFound):
        await store.get(Kind.CHUNK, oid(b"absent"), max_size=10)
    with pytest.raises(FileNotFoundError):  # the dual base lets plain callers catch it
        await store.stat(Kind.CHUNK, oid(b"absent"))


async def test_get_refuses_objects_larger_than_max_size(store):
    object_id, blob = obj(os.urandom(2000))
    assert len(blob) > 1000
    await store.put_if_absent(Kind.CHUNK, object_id, blob)
    with pytest.raises(CasError):
        await store.get(Kind.CHUNK, object_id, max_size=1000)


async def test_missing_empty_mixed_and_large(store):
    assert await store.missing(Kind.CHUNK, []) == set()
    present = []
    for i in range(5):
        object_id, blob = obj(b"p%d" % i)
        await store.put_if_absent(Kind.CHUNK, object_id, blob)
        present.append(object_id)
    absent = [oid(b"a%d" % i) for i in range(5)]
    assert await store.missing(Kind.CHUNK, present + absent) == set(absent)
    many = [oid(b"m%d" % i) for i in range(10_000)]
    assert await store.missing(Kind.CHUNK, many + present) == set(many)


async def test_list_shows_complete_objects_only(backend):
    store = backend.store
    ids = set()
    for i in range(20):
        object_id, blob = obj(b"l%d" % i)
        await store.put_if_absent(Kind.TREE, object_id, blob)
        ids.add(object_id)
    backend.plant_partial(str(oid(b"partial")) + ".deadbeef", b"half")
    listed = {info.id async for info in store.list(Kind.TREE)}
    assert listed == ids
    assert {info.id async for info in store.list(Kind.CHUNK)} == set()


async def test_list_prefix(store):
    ids = []
    for i in range(64):
        object_id, blob = obj(b"x%d" % i)
        await store.put_if_absent(Kind.CHUNK, object_id, blob)
        ids.append(object_id)
    prefix = str(ids[0])[:1]
    listed = {info.id async for info in store.list(Kind.CHUNK, prefix)}
    assert listed == {i for i in ids if str(i).startswith(prefix)}
    prefix3 = str(ids[0])[:3]
    assert {info.id async for info in store.list(Kind.CHUNK, prefix3)} == {
        i for i in ids if str(i).startswith(prefix3)
    }


async def test_stat_size_and_mtime(store):
    object_id, blob = obj(os.urandom(1234))
    before = datetime.now(UTC) - timedelta(seconds=2)
    await store.put_if_absent(Kind.CHUNK, object_id, blob)
    info = await store.stat(Kind.CHUNK, object_id)
    after = datetime.now(UTC) + timedelta(seconds=2)
    assert info.size == len(blob)
    assert info.kind == Kind.CHUNK and info.id == object_id
    assert before <= info.mtime <= after


async def test_delete_is_idempotent(store):
    object_id, blob = obj(b"del")
    await store.put_if_absent(Kind.CHUNK, object_id, blob)
    await store.delete(Kind.CHUNK, object_id)
    await store.delete(Kind.CHUNK, object_id)
    assert await store.missing(Kind.CHUNK, [object_id]) == {object_id}
    # Deleted names can be created again (gc then re-put).
    assert await store.put_if_absent(Kind.CHUNK, object_id, blob) is True


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
        await store.put_if_absent(Kind.CHUNK, bad, b"x")
    with pytest.raises(UsageError):
        await store.get(Kind.CHUNK, bad, max_size=10)
    with pytest.raises(UsageError):
        await store.missing(Kind.CHUNK, [bad])
    assert backend.snapshot() == before


async def test_zero_length_and_large_objects(store):
    """Empty content, and a chunk of the largest size put can cut (16 MiB, incompressible)."""
    empty, frame = obj(b"")
    assert await store.put_if_absent(Kind.CHUNK, empty, frame) is True
    assert await store.get(Kind.CHUNK, empty, max_size=len(frame)) == frame
    assert (await store.stat(Kind.CHUNK, empty)).size == len(frame)
    big_id, big = obj(os.urandom(16 << 20), level=1)
    assert await store.put_if_absent(Kind.CHUNK, big_id, big) is True
    assert await store.get(Kind.CHUNK, big_id, max_size=len(big)) == big


async def test_put_many_creates_only_the_absent(backend):
    store = backend.store
    (a, blob_a), (c, blob_c) = obj(b"pa"), obj(b"pc")
    b, original, changed = two_encodings(b"pb" * 1000)
    await store.put_if_absent(Kind.CHUNK, b, original)
    created = await store.put_many(Kind.CHUNK, [(a, blob_a), (b, changed), (c, blob_c)])
    assert created == [True, False, True]
    assert backend.peek(Kind.CHUNK, b) == original
    got = await store.get_many(Kind.CHUNK, [a, b, c], max_size=10_000)
    assert got == {a: blob_a, b: original, c: blob_c}


async def test_get_many_names_the_missing_object(store):
    (present, blob), absent = obj(b"gm1"), oid(b"gm2")
    await store.put_if_absent(Kind.CHUNK, present, blob)
    with pytest.raises(ObjectNotFound, match=str(absent)):
        await store.get_many(Kind.CHUNK, [present, absent], max_size=100)


async def test_concurrent_put_many_of_one_id_creates_once(store):
    object_id, blob = obj(b"pm-race")
    results = await asyncio.gather(
        *(store.put_many(Kind.CHUNK, [(object_id, blob)]) for _ in range(16))
    )
    assert sum(r[0] for r in results) == 1


async def test_put_then_get_round_trip_through_the_backend(store, tmp_path):
    """The whole put/get path, once per backend: what went in comes out."""
    from cas.get import Downloader
    from cas.put import PutOptions, Uploader
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
    objects = [obj(b"%s-%d" % (kind.value.encode(), i)) for i in range(5)]
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
    await store.put_many(Kind.CHUNK, objects[:30])
    await store.delete_many(Kind.CHUNK, ids[:20] + ids[30:] + ids[:5])
    assert await store.missing(Kind.CHUNK, ids) == set(ids[:20] + ids[30:])
    assert await store.missing(Kind.CHUNK, ids[20:30]) == set()
    await store.delete_many(Kind.CHUNK, [])


async def test_mtime_of_a_new_object_is_not_before_an_older_one(store):
    """gc compares store times of objects with the time of its start record."""
    (first, blob1), (second, blob2) = obj(b"t1"), obj(b"t2")
    await store.put_if_absent(Kind.GC, first, blob1)
    await asyncio.sleep(0.02)
    await store.put_if_absent(Kind.CHUNK, second, blob2)
    assert (await store.stat(Kind.CHUNK, second)).mtime >= (await store.stat(Kind.GC, first)).mtime
