"""get remembers the files it wrote, so the next in-place get need not read them."""

from __future__ import annotations

import os

import pytest

import cas.caches.files
from cas.caches.files import FileIdentity, FilesCache
from cas.store.local import LocalStore
from tests.conftest import snapshot
from tests.delta_helpers import SMALL, get, put


@pytest.fixture
def pair(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    same, changed = os.urandom(50_000), os.urandom(40_000)
    for root in (a, b):
        root.mkdir()
        (root / "same.bin").write_bytes(same)
    (a / "changed.bin").write_bytes(changed)
    (b / "changed.bin").write_bytes(changed[:20_000] + b"edit" + changed[20_000:])
    store = tmp_path / "store"
    return a, b, store, put(store, a), put(store, b)


def remembered(store, files_cache_dir, path):
    cache = FilesCache(files_cache_dir, LocalStore(store, fsync=False).url, SMALL)
    try:
        return cache.lookup_many([(str(path), FileIdentity.of(os.lstat(path)))]).get(str(path))
    finally:
        cache.close()


def test_written_files_are_remembered_with_their_chunks(tmp_path, pair, monkeypatch):
    monkeypatch.setattr(cas.caches.files, "RACY_WINDOW_NS", 0)
    _a, b, store, id_a, id_b = pair
    dest, fc = tmp_path / "dest", tmp_path / "fc"
    get(store, id_a, dest, files_cache_dir=fc)
    hit = remembered(store, fc, dest / "same.bin")
    assert hit is not None and sum(c.length for c in hit.chunks) == 50_000
    get(store, id_b, dest, files_cache_dir=fc, delete=True)
    assert snapshot(dest) == snapshot(b)


def test_a_file_changed_after_get_is_read_again(tmp_path, pair, monkeypatch):
    """Same size, mtime set back: only the ctime tells, and the next get must not trust it."""
    monkeypatch.setattr(cas.caches.files, "RACY_WINDOW_NS", 0)
    _a, b, store, id_a, id_b = pair
    dest, fc = tmp_path / "dest", tmp_path / "fc"
    get(store, id_a, dest, files_cache_dir=fc)
    target = dest / "same.bin"
    st = target.stat()
    target.write_bytes(os.urandom(50_000))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert remembered(store, fc, target) is None
    get(store, id_b, dest, files_cache_dir=fc, delete=True)
    assert snapshot(dest) == snapshot(b)


def test_files_written_within_the_racy_window_are_not_remembered(tmp_path, pair):
    _a, _b, store, id_a, _id_b = pair
    dest, fc = tmp_path / "dest", tmp_path / "fc"
    get(store, id_a, dest, files_cache_dir=fc)  # well under two seconds
    assert remembered(store, fc, dest / "same.bin") is None
