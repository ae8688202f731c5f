"""The LMDB chunk cache: LRU cap, sharing between processes, damage is only a miss."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
from pathlib import Path

from cas import codec
from cas.cache import ChunkCache
from cas.get import Downloader
from cas.ids import ObjectId, hash_bytes
from cas.pack import ObjectKind
from cas.put import PutOptions, Uploader
from cas.repo import Repository, decode_object
from cas.store.local import LocalStore


def blob_of(data: bytes):
    return hash_bytes(data), codec.encode(data)


def test_put_get_and_lru_eviction(tmp_path):
    cache = ChunkCache(tmp_path, capacity=1 << 20)
    items = [blob_of(os.urandom(100_000)) for _ in range(15)]
    for object_id, blob in items[:8]:
        cache.put(object_id, blob)
    assert all(cache.get(i) == b for i, b in items[:8])
    for object_id, blob in items[8:]:
        cache.put(object_id, blob)
    stats = cache.stats()
    assert stats.bytes <= 1 << 20
    # The newest entries survive; the oldest went first.
    assert cache.get(items[-1][0]) == items[-1][1]
    assert cache.get(items[0][0]) is None
    cache.close()


def test_recently_read_entries_survive_eviction(tmp_path, monkeypatch):
    import cas.cache as cache_module

    clock = [1_000_000 * 10**9]
    monkeypatch.setattr(cache_module.time, "time_ns", lambda: clock[0])
    cache = ChunkCache(tmp_path, capacity=1 << 20)
    items = [blob_of(os.urandom(100_000)) for _ in range(14)]
    for object_id, blob in items[:9]:
        cache.put(object_id, blob)
        clock[0] += 10 * 10**9
    clock[0] += 7200 * 10**9  # older than the touch interval, so this read refreshes
    assert cache.get(items[0][0]) == items[0][1]
    clock[0] += 10 * 10**9
    for object_id, blob in items[9:]:
        cache.put(object_id, blob)
        clock[0] += 10 * 10**9
    assert cache.get(items[0][0]) == items[0][1]
    assert cache.get(items[1][0]) is None
    cache.close()


def _writer(path: str, seed: int, count: int) -> None:
    cache = ChunkCache(Path(path), capacity=2 << 20)
    rng = __import__("random").Random(seed)
    for _ in range(count):
        data = rng.randbytes(50_000)
        cache.put(hash_bytes(data), codec.encode(data))
    cache.close()


def test_several_processes_share_one_cache(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), s, 60)) for s in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    cache = ChunkCache(tmp_path, capacity=2 << 20)
    stats = cache.stats()
    assert 0 < stats.bytes <= 2 << 20
    assert stats.entries > 0
    cache.close()


def _make_store_with_tree(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(3 << 20))
    store = LocalStore(tmp_path / "store", fsync=False)
    result = asyncio.run(Uploader(Repository(store), PutOptions()).put(src))
    return store, result.manifest_id


def test_second_get_comes_from_cache(tmp_path):
    store, manifest_id = _make_store_with_tree(tmp_path)
    cache = ChunkCache(tmp_path / "cache", capacity=64 << 20)
    first = asyncio.run(Downloader(Repository(store, cache)).get(manifest_id, tmp_path / "o1"))
    second = asyncio.run(Downloader(Repository(store, cache)).get(manifest_id, tmp_path / "o2"))
    assert first.chunks_from_store > 0 and first.chunks_from_cache == 0
    assert second.chunks_from_store == 0 and second.chunks_from_cache == first.chunks_from_store
    assert (tmp_path / "o2" / "a.bin").read_bytes() == (tmp_path / "src" / "a.bin").read_bytes()
    cache.close()


def test_corrupt_cache_entry_is_a_miss_not_bad_data(tmp_path):
    store, manifest_id = _make_store_with_tree(tmp_path)
    cache = ChunkCache(tmp_path / "cache", capacity=64 << 20)
    asyncio.run(Downloader(Repository(store, cache)).get(manifest_id, tmp_path / "o1"))
    # Overwrite every cached entry with a valid frame of other content.
    bogus = codec.encode(b"not the chunk")
    with cache._env.begin(write=True) as txn:
        keys = [bytes(k) for k, _ in txn.cursor(db=cache._data)]
        for key in keys:
            txn.put(key, bogus, db=cache._data)
    stats = asyncio.run(Downloader(Repository(store, cache)).get(manifest_id, tmp_path / "o2"))
    assert stats.chunks_from_cache == 0 and stats.chunks_from_store > 0
    assert (tmp_path / "o2" / "a.bin").read_bytes() == (tmp_path / "src" / "a.bin").read_bytes()
    # The damaged entries were replaced by good ones.
    again = asyncio.run(Downloader(Repository(store, cache)).get(manifest_id, tmp_path / "o3"))
    assert again.chunks_from_store == 0 and again.chunks_from_cache == stats.chunks_from_store
    cache.close()


def _write_forever(path: str, seed: int) -> None:
    """A writer that is killed mid-transaction by the test."""
    cache = ChunkCache(Path(path), capacity=8 << 20)  # small: eviction runs too
    n = 0
    while True:
        batch = []
        for _ in range(16):
            data = seed.to_bytes(4, "little") + n.to_bytes(8, "little") + os.urandom(20_000)
            batch.append(blob_of(data))
            n += 1
        cache.put_many(batch)


def test_cache_survives_a_writer_killed_mid_write(tmp_path):
    """SIGKILL during writes and evictions: the cache opens, every entry verifies, writes go on."""
    ctx = multiprocessing.get_context("spawn")
    for round_ in range(3):
        writers = [
            ctx.Process(target=_write_forever, args=(str(tmp_path), round_ * 2 + i))
            for i in range(2)
        ]
        for writer in writers:
            writer.start()
        time.sleep(1.5 + 0.2 * round_)
        for writer in writers:
            os.kill(writer.pid, signal.SIGKILL)
            writer.join()
        cache = ChunkCache(tmp_path, capacity=8 << 20)
        try:
            stats = cache.stats()
            assert stats.entries > 0
            with cache._env.begin() as txn:
                keys = [bytes(k) for k, _ in txn.cursor(db=cache._data)]
            assert len(keys) == stats.entries
            for key in keys:
                blob = cache.get(ObjectId(key))
                assert blob is not None
                decode_object(ObjectKind.CHUNK, ObjectId(key), blob, 1 << 20)  # raises if damaged
            fresh = blob_of(b"after the crash %d" % round_)
            cache.put(*fresh)
            assert cache.get(fresh[0]) == fresh[1]
        finally:
            cache.close()
