"""The files cache: unchanged files are not read again, and nothing stale is trusted."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from cas.caches.files import FilesCache
from cas.chunking import ChunkParams
from cas.get.downloader import Downloader
from cas.put.uploader import PutOptions, Uploader
from cas.repo import Repository
from cas.store.base import Kind
from cas.store.local import LocalStore
from tests.conftest import snapshot

OLD = 1_600_000_000 * 10**9  # far outside the racy window


def make_tree(root: Path) -> None:
    (root / "d").mkdir(parents=True)
    for i in range(5):
        path = root / "d" / f"f{i}.bin"
        path.write_bytes(os.urandom(200_000 + i))
        os.utime(path, ns=(OLD, OLD))
    (root / "tiny").write_bytes(b"inline")
    # ctime cannot be set; wait out the racy window instead.


def put(store: LocalStore, src: Path, cache_dir: Path, **options):
    async def run():
        files = FilesCache(cache_dir, store.url, ChunkParams())
        try:
            uploader = Uploader(Repository(store), PutOptions(**options), files_cache=files)
            return await uploader.put(src)
        finally:
            files.close()

    return asyncio.run(run())


def settle(monkeypatch) -> None:
    """Make the put start well after the files' ctimes (the racy rule)."""
    import cas.put.uploader as put_module

    real = time.time_ns
    monkeypatch.setattr(put_module.time, "time_ns", lambda: real() + 10 * 10**9)


def test_warm_put_reads_no_unchanged_file(tmp_path, monkeypatch):
    src = tmp_path / "src"
    make_tree(src)
    settle(monkeypatch)
    store = LocalStore(tmp_path / "store", fsync=False)
    first = put(store, src, tmp_path / "cache")
    assert first.stats.files_unchanged == 0
    second = put(store, src, tmp_path / "cache")
    assert second.stats.files_unchanged == 6  # with the inline file, in its reused tree
    assert second.stats.bytes_read == 0  # the directories cache covers the inline file too
    assert second.manifest.root == first.manifest.root


def test_racy_files_are_read_again(tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    (src / "d" / "fresh.bin").write_bytes(os.urandom(100_000))  # mtime and ctime: now
    store = LocalStore(tmp_path / "store", fsync=False)
    put(store, src, tmp_path / "cache")
    second = put(store, src, tmp_path / "cache")
    # Without the settle() clock shift every file's ctime is racy: nothing is trusted.
    assert second.stats.files_unchanged == 0


def test_content_change_with_restored_mtime_is_detected(tmp_path, monkeypatch):
    src = tmp_path / "src"
    make_tree(src)
    settle(monkeypatch)
    store = LocalStore(tmp_path / "store", fsync=False)
    put(store, src, tmp_path / "cache")
    target = src / "d" / "f0.bin"
    size = target.stat().st_size
    target.write_bytes(os.urandom(size))  # same size
    os.utime(target, ns=(OLD, OLD))  # same mtime; ctime moved
    second = put(store, src, tmp_path / "cache")
    assert second.stats.files_unchanged == 4
    out = tmp_path / "out"
    asyncio.run(Downloader(Repository(store)).get(second.manifest_id, out))
    assert (out / "d" / "f0.bin").read_bytes() == target.read_bytes()


def test_chunks_missing_from_the_store_are_uploaded_again(tmp_path, monkeypatch):
    src = tmp_path / "src"
    make_tree(src)
    settle(monkeypatch)
    store = LocalStore(tmp_path / "store", fsync=False)
    small = 64 << 10  # about one 200 KB chunk per pack
    first = put(store, src, tmp_path / "cache", pack_size=small)
    packs = [p for p in (tmp_path / "store" / "pack").rglob("*") if p.is_file()]
    assert len(packs) >= 5
    big = max(packs, key=lambda p: p.stat().st_size)  # a chunk's pack, not the trees'
    big.unlink()  # as a garbage collection might
    second = put(store, src, tmp_path / "cache", pack_size=small)
    assert second.stats.files_unchanged == 5  # d/'s other four, and the root's inline file
    assert second.stats.chunks_new == 1
    out = tmp_path / "out"
    asyncio.run(Downloader(Repository(store)).get(second.manifest_id, out))
    assert snapshot(out) == snapshot(src)
    assert first.manifest.root == second.manifest.root


def test_cache_is_per_store_and_per_chunking(tmp_path, monkeypatch):
    src = tmp_path / "src"
    make_tree(src)
    settle(monkeypatch)
    a = LocalStore(tmp_path / "a", fsync=False)
    b = LocalStore(tmp_path / "b", fsync=False)
    put(a, src, tmp_path / "cache")
    other_store = put(b, src, tmp_path / "cache")
    assert other_store.stats.files_unchanged == 0
    assert not asyncio.run(b.missing(Kind.PACK, []))

    async def other_params():
        params = ChunkParams.from_avg(256 << 10)
        files = FilesCache(tmp_path / "cache", a.url, params)
        try:
            uploader = Uploader(Repository(a), PutOptions(params=params), files_cache=files)
            return await uploader.put(src)
        finally:
            files.close()

    assert asyncio.run(other_params()).stats.files_unchanged == 0


def test_cli_reports_unchanged_files(tmp_path):
    import json
    import subprocess
    import sys

    src = tmp_path / "src"
    make_tree(src)
    time.sleep(2.1)  # let the files' ctimes leave the racy window
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    cmd = [
        sys.executable,
        "-m",
        "cas_cli.main",
        "put",
        "--store",
        str(tmp_path / "s"),
        str(src),
        "--json",
    ]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    report = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True).stdout)
    assert report["files_unchanged"] == 6 and report["bytes_read"] == 0
    again = json.loads(
        subprocess.run([*cmd, "--no-files-cache"], env=env, check=True, capture_output=True).stdout
    )
    assert again["files_unchanged"] == 0


def test_last_puts_and_unsettled_refs_are_per_source_ref_and_store(tmp_path):
    """The hints behind a put's default parent and a re-run's own ref, as later puts read them."""
    from cas.caches.files import LastPuts, UnsettledRefs
    from cas.ids import hash_bytes

    first, second = hash_bytes(b"manifest one"), hash_bytes(b"manifest two")
    files = FilesCache(tmp_path / "cache", "file:///a", ChunkParams())
    try:
        last = LastPuts(files)
        assert last.get(str(tmp_path / "src")) is None
        last.remember(str(tmp_path / "src"), first)
        last.remember(str(tmp_path / "src"), second)  # the newest put wins
        assert last.get(str(tmp_path / "src")) == second
        assert last.get(str(tmp_path / "other")) is None

        unsettled = UnsettledRefs(files)
        unsettled.note(str(tmp_path / "src"), "ci/main", first)
        assert unsettled.get(str(tmp_path / "src"), "ci/main") == first
        assert unsettled.get(str(tmp_path / "src"), "ci/other") is None
        assert unsettled.get(str(tmp_path / "other"), "ci/main") is None
        unsettled.clear(str(tmp_path / "src"), "ci/main")
        unsettled.clear(str(tmp_path / "src"), "ci/main")  # clearing twice is fine
        assert unsettled.get(str(tmp_path / "src"), "ci/main") is None
        assert last.get(str(tmp_path / "src")) == second  # separate tables
    finally:
        files.close()
    elsewhere = FilesCache(tmp_path / "cache", "file:///b", ChunkParams())
    try:
        assert LastPuts(elsewhere).get(str(tmp_path / "src")) is None  # another store
    finally:
        elsewhere.close()
