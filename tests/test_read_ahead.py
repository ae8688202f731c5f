"""Read-ahead: planned neighbours of an asked frame come along in the same ranged read.

They are kept for when they are asked for: in the chunk cache when there is
one, else in bounded memory. Either way the later ask reads nothing more from
the store, and a cache whose writer is stuck never holds a read up for long.
"""

from __future__ import annotations

import os
import time

import cas.packreads as packreads
from cas.caches.chunks import ChunkCache
from cas.codec import decode_object
from cas.ids import ObjectId
from cas.pack import ObjectKind
from cas.packindex import Location
from cas.packreads import PackReader, ReadCounts
from cas.store.base import Kind
from cas.store.local import LocalStore
from tests.store.stored import pack_of
from tests.test_cache import write_lock_held

CHUNK = ObjectKind.CHUNK
MAX = 1 << 20


async def packed(tmp_path, count: int, size: int):
    """A local store holding one pack of `count` incompressible chunks, and where each lies."""
    contents = [os.urandom(size) for _ in range(count)]
    pack = pack_of(*contents)
    store = LocalStore(tmp_path / "store", fsync=False)
    await store.put_if_absent(Kind.PACK, pack.id, pack.data)
    located: dict[ObjectKind, dict[ObjectId, Location]] = {k: {} for k in ObjectKind}
    for e in pack.entries:
        located[e.kind][e.id] = Location(pack.id, e.offset, e.stored, e.raw)
    ids = [e.id for e in pack.entries]
    return store, located, ids, dict(zip(ids, contents, strict=True))


def planned_reader(store, cache, located, ids) -> PackReader:
    reader = PackReader(store, cache, located, ReadCounts())
    reader.plan[CHUNK].update(dict.fromkeys(ids))
    return reader


async def ask(reader: PackReader, located, object_id: ObjectId) -> dict[ObjectId, bytes]:
    return await reader.read_located(CHUNK, {object_id: located[CHUNK][object_id]}, MAX)


async def test_frames_read_along_land_in_the_chunk_cache(tmp_path):
    store, located, ids, contents = await packed(tmp_path, 20, 40_000)
    cache = ChunkCache(tmp_path / "cache", capacity=64 << 20)
    reader = planned_reader(store, cache, located, ids)
    assert await ask(reader, located, ids[0]) == {ids[0]: contents[ids[0]]}
    assert reader.counts.reads == 1 and not reader.has_staged
    assert cache.has_many(ids) == set(ids)  # the asked frame and every one read along
    for object_id in ids[1:]:
        blob = cache.get(object_id)
        assert blob is not None
        assert decode_object("chunk", object_id, blob, MAX) == contents[object_id]
    cache.close()
    await store.aclose()


async def test_without_a_cache_frames_read_along_wait_in_memory(tmp_path):
    store, located, ids, contents = await packed(tmp_path, 20, 40_000)
    reader = planned_reader(store, None, located, ids)
    await ask(reader, located, ids[0])
    assert reader.has_staged
    taken = reader.take_staged(CHUNK, ids[1:], MAX)
    assert taken == {i: contents[i] for i in ids[1:]}
    assert reader.counts.reads == 1 and reader.counts.chunks_from_store == 20
    assert not reader.has_staged  # each is taken once
    await store.aclose()


async def test_frames_read_along_in_memory_stay_within_their_bound(tmp_path, monkeypatch):
    store, located, ids, _ = await packed(tmp_path, 20, 40_000)
    frame = max(loc.stored for loc in located[CHUNK].values())
    monkeypatch.setattr(packreads, "_STAGED_MAX", 5 * frame)
    reader = planned_reader(store, None, located, ids)
    await ask(reader, located, ids[0])
    assert 0 < reader._staged_bytes <= 5 * frame
    assert len(reader.take_staged(CHUNK, ids[1:], MAX)) == 5
    await store.aclose()


async def test_a_stuck_cache_writer_holds_a_read_up_about_a_second(tmp_path):
    """Frames read along past the cache's pending bound are dropped after one short wait."""
    store, located, ids, contents = await packed(tmp_path, 24, 300_000)
    cache = ChunkCache(tmp_path / "cache", capacity=64 << 20, pending_bytes=1 << 20)
    with write_lock_held(tmp_path / "cache"):
        reader = planned_reader(store, cache, located, ids)
        started = time.monotonic()
        assert await ask(reader, located, ids[0]) == {ids[0]: contents[ids[0]]}
        assert time.monotonic() - started < 3  # one wait for room, not one per frame
        assert cache.dropped > 0
    cache.close()
    await store.aclose()
