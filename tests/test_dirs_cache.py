"""The directories cache: unchanged directories are reused whole, and never wrongly."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cas.caches.files import FilesCache
from cas.chunking import ChunkParams
from cas.gc.verify import manifest_complete
from cas.get.downloader import Downloader
from cas.put.filecut import CutSettings
from cas.put.uploader import PutOptions, PutResult, Uploader
from cas.repo import Repository
from cas.store.base import Kind
from cas.store.local import LocalStore
from tests.conftest import snapshot

OLD = 1_600_000_000 * 10**9


def make_tree(root: Path) -> None:
    for d in ("a", "a/deep", "b"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "top.txt").write_bytes(b"top level inline file")
    (root / "a" / "big.bin").write_bytes(os.urandom(300_000))
    (root / "a" / "deep" / "x.h").write_bytes(b"#define X 1\n")
    (root / "a" / "deep" / "y.h").write_bytes(b"#define Y 2\n")
    (root / "b" / "lib.so").write_bytes(os.urandom(100_000))
    os.symlink("lib.so", root / "b" / "lib.so.1")


def put(store: LocalStore, src: Path, cache_dir: Path | None, **options) -> PutResult:
    async def run() -> PutResult:
        files = None if cache_dir is None else FilesCache(cache_dir, store.url, ChunkParams())
        try:
            uploader = Uploader(Repository(store), PutOptions(**options), files_cache=files)
            return await uploader.put(src)
        finally:
            if files is not None:
                files.close()

    return asyncio.run(run())


def get(store: LocalStore, result: PutResult, out: Path) -> None:
    asyncio.run(Downloader(Repository(store)).get(result.manifest_id, out))


@pytest.fixture
def settled(monkeypatch):
    """Puts start well after every file's ctime, as if the files were old (the racy rule)."""
    import cas.put.uploader as put_module

    real = time.time_ns
    monkeypatch.setattr(put_module.time, "time_ns", lambda: real() + 10 * 10**9)


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "store", fsync=False)


def test_unchanged_tree_is_reused_without_reading_a_file(tmp_path, store, settled):
    src = tmp_path / "src"
    make_tree(src)
    cache = tmp_path / "cache"
    first = put(store, src, cache)
    second = put(store, src, cache)
    assert second.manifest.root == first.manifest.root
    assert second.stats.bytes_read == 0
    assert second.stats.files_unchanged == 5
    assert (second.stats.files, second.stats.dirs, second.stats.symlinks) == (5, 4, 1)
    assert second.manifest.totals == first.manifest.totals


def test_inline_file_rewritten_with_restored_mtime_is_seen(tmp_path, store, settled):
    src = tmp_path / "src"
    make_tree(src)
    cache = tmp_path / "cache"
    put(store, src, cache)
    header = src / "a" / "deep" / "x.h"
    before = header.stat()
    header.write_bytes(b"#define X 9\n")  # same size
    os.utime(header, ns=(before.st_atime_ns, before.st_mtime_ns))  # ctime still moves
    second = put(store, src, cache)
    assert second.manifest.root == put(store, src, None).manifest.root
    out = tmp_path / "out"
    get(store, second, out)
    assert (out / "a" / "deep" / "x.h").read_bytes() == b"#define X 9\n"


def test_change_deep_in_the_tree_rebuilds_only_its_ancestors(tmp_path, store, settled):
    src = tmp_path / "src"
    make_tree(src)
    cache = tmp_path / "cache"
    put(store, src, cache)
    (src / "a" / "deep" / "z.h").write_bytes(b"new header")
    second = put(store, src, cache)
    # Read: the changed directory's files and the inline files of its ancestors (the
    # root's top.txt); not b/, and not a/big.bin (the files cache knows it).
    read = len(b"new header") + len(b"#define X 1\n") * 2 + len(b"top level inline file")
    assert second.stats.bytes_read == read
    assert second.manifest.root == put(store, src, None).manifest.root


def test_tree_removed_from_the_store_is_stored_again(tmp_path, store, settled):
    src = tmp_path / "src"
    make_tree(src)
    cache = tmp_path / "cache"
    first = put(store, src, cache)
    for tree in (tmp_path / "store" / "tree").rglob("*"):
        if tree.is_file():
            tree.unlink()  # as a garbage collection of an expired manifest might
    second = put(store, src, cache)
    assert second.manifest.root == first.manifest.root
    assert asyncio.run(manifest_complete(Repository(store), second.manifest_id))
    out = tmp_path / "out"
    get(store, second, out)
    assert snapshot(out) == snapshot(src)


def test_chunk_removed_from_the_store_is_stored_again(tmp_path, store, settled):
    src = tmp_path / "src"
    make_tree(src)
    cache = tmp_path / "cache"
    put(store, src, cache)
    for chunk in (tmp_path / "store" / "pack").rglob("*"):
        if chunk.is_file():
            chunk.unlink()
    second = put(store, src, cache)
    assert second.stats.chunks_new > 0
    assert asyncio.run(manifest_complete(Repository(store), second.manifest_id))
    assert not asyncio.run(store.missing(Kind.PACK, []))


def test_racy_directories_are_not_remembered(tmp_path, store):
    src = tmp_path / "src"
    make_tree(src)  # every ctime is "now": within the racy window of the put
    cache = tmp_path / "cache"
    put(store, src, cache)
    second = put(store, src, cache)
    assert second.stats.bytes_read > 0


def test_settings_that_change_trees_do_not_share_entries(tmp_path, store, settled):
    src = tmp_path / "src"
    make_tree(src)
    cache = tmp_path / "cache"
    put(store, src, cache)
    for options in ({"mtimes": False}, {"inline_max": 0}):
        cached = put(store, src, cache, **options)
        assert cached.manifest.root == put(store, src, None, **options).manifest.root


# A small tree mutated between puts: a put using the caches must produce the
# same tree as a put that reads everything.
NAMES = st.sampled_from(["a", "b", "c", "d"])
OPS = st.lists(
    st.tuples(
        st.sampled_from(["write", "rewrite", "mkdir", "remove", "chmod", "link", "rename"]),
        st.lists(NAMES, min_size=1, max_size=3),
        st.binary(max_size=6000),
    ),
    min_size=1,
    max_size=6,
)


def _apply(root: Path, op: str, parts: list[str], data: bytes) -> None:
    path = root.joinpath(*parts)
    parent_ok = path.parent.is_dir() and not path.parent.is_symlink()
    if not parent_ok:
        return
    if op == "write" and not path.is_dir():
        if path.is_symlink():
            path.unlink()
        path.write_bytes(data)
    elif op == "rewrite" and path.is_file() and not path.is_symlink():
        st_before = path.stat()
        path.write_bytes(data[: st_before.st_size].ljust(st_before.st_size, b"!"))
        os.utime(path, ns=(st_before.st_atime_ns, st_before.st_mtime_ns))
    elif op == "mkdir" and not path.exists() and not path.is_symlink():
        path.mkdir()
    elif op == "remove" and (path.exists() or path.is_symlink()):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    elif op == "chmod" and path.exists() and not path.is_symlink():
        path.chmod(0o700 if path.stat().st_mode & 0o077 else 0o755)
    elif op == "link" and not path.exists() and not path.is_symlink():
        os.symlink("target-" + "-".join(parts) + str(len(data)), path)
    elif op == "rename" and (path.exists() or path.is_symlink()):
        other = path.with_name(path.name + "x")
        if not other.exists() and not other.is_symlink():
            path.rename(other)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(rounds=st.lists(OPS, min_size=1, max_size=3))
def test_cached_puts_match_uncached_puts(tmp_path_factory, settled, rounds):
    base = tmp_path_factory.mktemp("prop")
    src = base / "src"
    make_tree(src)
    store = LocalStore(base / "store", fsync=False)
    cache = base / "cache"
    put(store, src, cache)
    for ops in rounds:
        for op, parts, data in ops:
            _apply(src, op, parts, data)
        cached = put(store, src, cache)
        assert cached.manifest.root == put(store, src, None).manifest.root


def test_entries_unused_for_a_month_are_pruned(tmp_path, store, settled, monkeypatch):
    import cas.caches.dirs as dirscache

    src = tmp_path / "src"
    make_tree(src)
    cache = tmp_path / "cache"
    put(store, src, cache)
    files = FilesCache(cache, store.url, ChunkParams())
    try:
        dirs = dirscache.DirsCache(files, CutSettings(ChunkParams(), 4096, True))
        assert dirs.prune(max_age_s=10**9) == 0  # nothing that old
        monkeypatch.setattr(dirs._table, "_now_s", dirs._table._now_s + 86400 + 1)  # next day
        assert dirs.prune(max_age_s=0) == 4  # every directory
    finally:
        files.close()
    assert put(store, src, cache).stats.bytes_read > 0
