"""The LMDB chunk cache: LRU cap, sharing between processes, damage is only a miss."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from cas import codec
from cas.caches.chunks import ChunkCache
from cas.codec import decode_object
from cas.get.downloader import Downloader
from cas.ids import ObjectId, hash_bytes
from cas.pack import ObjectKind
from cas.put.uploader import PutOptions, Uploader
from cas.repo import Repository
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
    import cas.caches.chunks as cache_module

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
    cache.flush()  # writes (and the evictions they cause) are committed in the background
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
    cache.flush()  # entries are committed in the background
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


def test_a_get_leaves_its_chunks_in_the_cache_for_the_next_run(tmp_path):
    """`cas get` returns after its fetched chunks are committed: the next process finds them."""
    import json
    import subprocess
    import sys

    src = tmp_path / "src"
    src.mkdir()
    for n in range(4):
        (src / f"f{n}.bin").write_bytes(os.urandom(1 << 20))
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "CAS_CACHE_DIR": str(tmp_path / "cache")}

    def cas(*args):
        done = subprocess.run(
            [sys.executable, "-m", "cas_cli.main", "--store", str(tmp_path / "store"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    manifest = cas("put", "-q", str(src)).strip()
    first = json.loads(cas("--json", "get", "--cache", manifest, str(tmp_path / "o1")))
    assert first["chunks_from_store"] > 0
    cache = ChunkCache(tmp_path / "cache", capacity=1 << 30)
    assert cache.stats().entries >= first["chunks_from_store"]
    cache.close()
    second = json.loads(cas("--json", "get", "--cache", manifest, str(tmp_path / "o2")))
    assert second["chunks_from_store"] == 0
    assert second["chunks_from_cache"] == first["chunks_from_store"]


def _hold_write_lock(path: str, ready, release) -> None:
    """Keep the cache's one write transaction open until told: every other writer waits."""
    cache = ChunkCache(Path(path), capacity=64 << 20)
    with cache._env.begin(write=True):
        ready.set()
        release.wait(30)
    cache.close()


@contextlib.contextmanager
def write_lock_held(path: Path) -> Iterator[None]:
    """Inside, another process holds the cache's write transaction (a stuck writer)."""
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_write_lock, args=(str(path), ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        yield
    finally:
        release.set()
        holder.join(30)


def test_reads_do_not_wait_for_cache_commits(tmp_path):
    """A get with a cache whose writer is blocked still returns; the entries land afterwards."""
    store, manifest_id = _make_store_with_tree(tmp_path)
    cache = ChunkCache(tmp_path / "cache", capacity=64 << 20)  # opening takes the lock too
    with write_lock_held(tmp_path / "cache"):
        t0 = time.monotonic()
        stats = asyncio.run(
            asyncio.wait_for(
                Downloader(Repository(store, cache)).get(manifest_id, tmp_path / "o1"), 20
            )
        )
        assert time.monotonic() - t0 < 20
        assert stats.chunks_from_store > 0
        assert (tmp_path / "o1" / "a.bin").read_bytes() == (tmp_path / "src" / "a.bin").read_bytes()
        # Not committed yet (the writer waits for the lock), yet this process's reads see them.
        assert not cache.flush(timeout=0.2)
        again = asyncio.run(Downloader(Repository(store, cache)).get(manifest_id, tmp_path / "o2"))
        assert again.chunks_from_store == 0 and again.chunks_from_cache == stats.chunks_from_store
    cache.close()  # commits what was pending
    reopened = ChunkCache(tmp_path / "cache", capacity=64 << 20)
    assert reopened.stats().entries >= stats.chunks_from_store
    reopened.close()


def test_a_full_write_queue_drops_entries_instead_of_blocking_reads(tmp_path):
    """With the writer stuck, puts past the pending bound wait about a second, then are lost."""
    cache = ChunkCache(tmp_path, capacity=64 << 20, pending_bytes=1 << 20)
    with write_lock_held(tmp_path):
        items = [blob_of(os.urandom(300_000)) for _ in range(6)]
        t0 = time.monotonic()
        cache.put_many(items)
        assert time.monotonic() - t0 < 5
        assert cache.dropped > 0
        kept = [i for i, _ in items if cache.get(i) is not None]
        assert 0 < len(kept) < len(items)
    cache.close()
    reopened = ChunkCache(tmp_path, capacity=64 << 20)
    assert reopened.has_many([i for i, _ in items]) == set(kept)
    reopened.close()
