"""put's worker processes: same result as the threaded path, same safety, real processes."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from cas.caches.files import FilesCache
from cas.chunking import FastCdcChunker
from cas.errors import SourceError
from cas.get.downloader import restore_manifest
from cas.progress import NullProgress
from cas.put.filecut import CutSettings
from cas.put.files import FileStage, WriterFeed
from cas.put.listing import SourceEntry
from cas.put.packwriter import PackWriter
from cas.put.uploader import PutOptions, Uploader
from cas.repo import Repository
from cas.store.local import LocalStore
from tests.conftest import snapshot
from tests.store.faulty import FaultyStore


def build_tree(root: Path) -> None:
    """Inline, single-chunk, multi-chunk and duplicate files across several batches."""
    rng = __import__("random").Random(7)
    for d in range(5):
        sub = root / f"d{d}" / "deeper"
        sub.mkdir(parents=True)
        for i in range(40):
            size = rng.choice([0, 100, 4096, 4097, 60_000, 300_000, 1_500_000])
            (sub / f"f{i}").write_bytes(rng.randbytes(size))
        (sub / "same-as-first").write_bytes(
            (root / "d0" / "deeper" / "f0").read_bytes() if d else b"x" * 9000
        )
        os.symlink("f0", sub / "link")
    (root / "big").write_bytes(rng.randbytes(5 << 20))


def put(store, src, files_cache=None, **options):
    async def run():
        async with store:
            uploader = Uploader(Repository(store), PutOptions(**options), files_cache=files_cache)
            return await uploader.put(src)

    return asyncio.run(run())


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    build_tree(src)
    return src


def test_processes_and_threads_describe_a_tree_identically(tmp_path, tree):
    in_threads = put(LocalStore(tmp_path / "s1", fsync=False), tree, processes=False)
    in_processes = put(LocalStore(tmp_path / "s2", fsync=False), tree, processes=True)
    assert in_processes.manifest.root == in_threads.manifest.root
    assert in_processes.stats.chunks_new == in_threads.stats.chunks_new
    assert in_processes.stats.bytes_read == in_threads.stats.bytes_read
    chunks = sorted(p.name for p in (tmp_path / "s1" / "chunk").rglob("*") if p.is_file())
    assert chunks == sorted(p.name for p in (tmp_path / "s2" / "chunk").rglob("*") if p.is_file())


def test_put_in_processes_restores_exactly(tmp_path, tree):
    store_dir = tmp_path / "store"
    result = put(LocalStore(store_dir), tree, processes=True)

    async def get():
        async with LocalStore(store_dir, create=False) as store:
            await restore_manifest(Repository(store), result.manifest_id, tmp_path / "out")

    asyncio.run(get())
    assert snapshot(tmp_path / "out") == snapshot(tree)


def test_workers_use_and_fill_the_files_cache(tmp_path, tree, monkeypatch):
    store = tmp_path / "store"
    cache = FilesCache(tmp_path / "cache", f"file://{store}", PutOptions().params)
    real = time.time_ns  # files younger than two seconds are never trusted: start "later"
    monkeypatch.setattr(time, "time_ns", lambda: real() + 10 * 10**9)
    try:
        first = put(LocalStore(store), tree, files_cache=cache, processes=True)
        regular = [p for p in tree.rglob("*") if p.is_file() and not p.is_symlink()]
        # A new file in every directory: no tree is reused whole, so files are looked up one by one.
        for directory in {p.parent for p in regular}:
            (directory / "added-after-first-put").write_bytes(b"new")
        again = put(LocalStore(store), tree, files_cache=cache, processes=True)
    finally:
        cache.close()
    chunked = sum(1 for p in regular if p.stat().st_size > 4096)
    assert first.stats.files_unchanged == 0
    assert again.stats.files_unchanged == chunked
    assert again.stats.bytes_read <= 4096 * 250  # only inline-sized files are read again
    assert again.manifest.root != first.manifest.root
    assert again.manifest.root == put(LocalStore(store), tree).manifest.root  # as if uncached


def test_worker_read_error_fails_the_put_with_the_path(tmp_path, tree):
    """A file that vanished before a worker process read it: one error naming it."""
    store = LocalStore(tmp_path / "store", fsync=False)
    options = PutOptions()

    async def run():
        async with store:
            writer = PackWriter(store)
            feed = WriterFeed(writer, asyncio.get_running_loop(), lambda **counts: None)
            stage = FileStage(
                CutSettings(options.params, options.inline_max, options.mtimes),
                options.level,
                feed,
                lambda: FastCdcChunker(options.params),
                workers=2,
                in_flight=2,
                processes=True,
                files_cache=None,
                started_ns=0,
                abort=threading.Event(),
                progress=NullProgress(),
                count=lambda **counts: None,
            )
            ghost = SourceEntry("gone", str(tmp_path / "gone"), "gone", os.stat(tree / "big"))
            try:
                await asyncio.wrap_future(stage.submit([ghost, ghost]))
            finally:
                await asyncio.to_thread(stage.close)

    with pytest.raises(SourceError, match="gone"):
        asyncio.run(run())


def test_worker_processes_never_talk_to_the_store(tmp_path, tree):
    inner = LocalStore(tmp_path / "store", fsync=False)
    wrapped = FaultyStore(inner, fail_on={})  # no opener: a worker could not reach it
    result = put(wrapped, tree, processes=True)
    assert result.stats.files > 0 and result.stats.chunks_new > 0
    # Every write went through the put process's one pack writer: packs, index, manifest.
    assert wrapped.calls["put_if_absent"] == result.stats.packs + 2


def test_source_removed_after_put_leaves_store_readable(tmp_path, tree):
    store_dir = tmp_path / "store"
    result = put(LocalStore(store_dir), tree, processes=True)
    shutil.rmtree(tree)

    async def get():
        async with LocalStore(store_dir, create=False) as store:
            await restore_manifest(Repository(store), result.manifest_id, tmp_path / "out")

    asyncio.run(get())
    assert (tmp_path / "out" / "big").stat().st_size == 5 << 20
