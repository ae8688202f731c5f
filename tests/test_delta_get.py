"""In-place get: reuse what the destination, the cache and seeds hold; fetch only the rest."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from cas.caches.files import CachedFile, FileIdentity, FilesCache
from cas.errors import DestinationError
from cas.get.sources import Sources
from tests.conftest import snapshot
from tests.delta_helpers import (
    SMALL,
    get,
    local_chunk_ids,
    manifest_chunks,
    put,
    stored_sizes,
)
from tests.trees import make_writable, materialize, root_trees

OLD = 1_600_000_000 * 10**9


def write(path: Path, data: bytes, mode: int = 0o644, mtime: int = OLD) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    os.utime(path, ns=(mtime, mtime))


@pytest.fixture
def pair(tmp_path):
    """Trees A and B with identical, changed, missing, extra files and type changes."""
    a, b = tmp_path / "a", tmp_path / "b"
    base = os.urandom(60_000)
    for root in (a, b):
        write(root / "same.bin", base)
        write(root / "sub" / "same-small", b"small and equal")
    write(a / "changed.bin", base[:30_000] + b"inserted" * 50 + base[30_000:])
    write(b / "changed.bin", base)
    write(a / "extra.bin", os.urandom(20_000))
    write(a / "olddir" / "inner.bin", os.urandom(9_000))
    write(b / "new.bin", os.urandom(12_000))
    write(a / "file-then-dir", os.urandom(7_000))
    write(b / "file-then-dir" / "child", b"child")
    write(a / "dir-then-file" / "x.bin", base[:9_000])
    write(b / "dir-then-file", os.urandom(5_000))
    write(a / "dir-then-link" / "y", b"y")
    os.symlink("same.bin", b / "dir-then-link")
    write(a / "mode-only", b"mode", mode=0o600)
    write(b / "mode-only", b"mode", mode=0o755)
    store = tmp_path / "store"
    return a, b, store, put(store, a), put(store, b)


def test_in_place_update_is_exact_and_leaves_identical_files_untouched(tmp_path, pair):
    a, b, store, id_a, id_b = pair
    dest = tmp_path / "dest"
    get(store, id_a, dest)
    assert snapshot(dest) == snapshot(a)
    before = {n: (dest / n).stat() for n in ("same.bin", "sub/same-small")}

    stats = get(store, id_b, dest, cache_dir=tmp_path / "c", files_cache_dir=tmp_path / "fc")
    for name, st in before.items():  # not rewritten: same inode, same ctime
        now = (dest / name).stat()
        assert (now.st_ino, now.st_ctime_ns) == (st.st_ino, st.st_ctime_ns)
    assert stats.files_untouched == 3  # same.bin, sub/same-small, mode-only (mode set)
    assert stat.S_IMODE((dest / "mode-only").stat().st_mode) == 0o755
    # Without --delete, what B lacks stays and is reported.
    assert sorted(stats.extra_paths) == ["extra.bin", "olddir"]
    assert stats.extra_files == 2 and stats.deleted == 0
    assert (dest / "extra.bin").read_bytes() == (a / "extra.bin").read_bytes()
    expected = snapshot(b)
    got = snapshot(dest)
    assert {k: v for k, v in got.items() if not k.startswith(("extra", "olddir"))} == expected
    # changed.bin was rebuilt from its own old chunks: only a little came from the store.
    assert stats.bytes_from_destination > 0
    assert stats.bytes_from_store < 30_000

    stats = get(store, id_b, dest, delete=True)
    assert snapshot(dest) == expected
    assert stats.deleted == 2 and stats.files == 0
    assert not list(dest.rglob(".cas-tmp-*"))


def test_delete_is_off_by_default_and_excluded_paths_are_protected(tmp_path, pair):
    _a, _b, store, id_a, id_b = pair
    dest = tmp_path / "dest"
    get(store, id_a, dest)
    stats = get(store, id_b, dest, delete=True, selection=_sel(exclude=["extra.bin"]))
    assert (dest / "extra.bin").exists()
    assert not (dest / "olddir").exists()
    assert stats.extra_paths == ["olddir"]


def _sel(include=(), exclude=()):
    from cas.get.selection import Selection

    return Selection(include, exclude)


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_symlink_where_a_file_should_be_is_replaced_never_followed(tmp_path, kind):
    outside = tmp_path / "outside"
    if kind == "file":
        write(outside, b"outside, keep me" * 1000)
    else:
        outside.mkdir()
        write(outside / "f", b"outside")
    src = tmp_path / "src"
    write(src / "f", b"outside, keep me" * 1000)  # same bytes: must not be taken as identical
    write(src / "g", b"new")
    store = tmp_path / "store"
    manifest_id = put(store, src)
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside, dest / "f")
    os.symlink(outside, dest / "g")
    before = snapshot(outside) if kind == "dir" else outside.read_bytes()
    stats = get(store, manifest_id, dest, files_cache_dir=tmp_path / "fc")
    assert snapshot(dest) == snapshot(src)
    assert (snapshot(outside) if kind == "dir" else outside.read_bytes()) == before
    assert stats.files_untouched == 0 and stats.bytes_from_destination == 0


def test_symlink_where_a_directory_should_be_is_refused(tmp_path):
    """A link in the way of a directory is an error (never a path), unless --delete."""
    src = tmp_path / "src"
    write(src / "d" / "f", b"x")
    store = tmp_path / "store"
    manifest_id = put(store, src)
    dest = tmp_path / "dest"
    dest.mkdir()
    elsewhere = tmp_path / "elsewhere"
    write(elsewhere / "keep", b"outside")
    write(elsewhere / "sub" / "keep", b"outside")
    before = snapshot(elsewhere)
    os.symlink(elsewhere, dest / "d")
    os.symlink(elsewhere, dest / "extra-link")  # not in the manifest
    with pytest.raises(DestinationError, match="not a directory"):
        get(store, manifest_id, dest)
    assert snapshot(elsewhere) == before
    get(store, manifest_id, dest, delete=True)  # --delete replaces/removes the links only
    assert snapshot(dest) == snapshot(src)
    assert snapshot(elsewhere) == before


def test_read_only_files_and_directories_are_updated(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    data = os.urandom(30_000)
    write(a / "ro" / "changed", data, mode=0o444)
    write(b / "ro" / "changed", data[:10_000] + b"!" + data[10_000:], mode=0o444)
    write(a / "ro" / "same", data, mode=0o444)
    write(b / "ro" / "same", data, mode=0o400)
    write(a / "ro" / "gone", b"gone", mode=0o444)
    for root in (a, b):
        (root / "ro").chmod(0o555)
    store = tmp_path / "store"
    id_a, id_b = put(store, a), put(store, b)
    dest = tmp_path / "dest"
    try:
        get(store, id_a, dest)
        stats = get(store, id_b, dest, delete=True)
        assert snapshot(dest) == snapshot(b)
        assert stats.files == 1 and stats.files_untouched == 1 and stats.deleted == 1
    finally:
        make_writable(tmp_path)


def test_seed_supplies_chunks_and_only_the_rest_is_fetched(tmp_path, pair):
    a, b, store, _id_a, id_b = pair
    dest = tmp_path / "dest"
    stats = get(store, id_b, dest, seeds=(str(a),), cache_dir=tmp_path / "c")
    assert snapshot(dest) == snapshot(b)
    assert stats.bytes_from_seeds > 0
    lacking = set(manifest_chunks(store, id_b)) - local_chunk_ids(a)
    sizes = stored_sizes(store, id_b)
    assert stats.bytes_from_store == sum(sizes[i] for i in lacking)


def test_corrupt_seed_costs_only_a_fetch(tmp_path, pair):
    """The files cache lies about a seed file: verification catches every chunk."""
    _a, b, store, _id_a, id_b = pair
    seed = tmp_path / "seed"
    write(seed / "liar", os.urandom(60_000))
    st = (seed / "liar").lstat()
    chunks = manifest_chunks(store, id_b)
    from cas.ids import ObjectId
    from cas.objects import ChunkRef

    refs = tuple(ChunkRef(i, n) for i, n in chunks.items())
    size = sum(r.length for r in refs)
    os.truncate(seed / "liar", size)
    os.utime(seed / "liar", ns=(OLD, OLD))
    st = (seed / "liar").lstat()
    files = FilesCache(tmp_path / "fc", f"file://{store}", SMALL)
    cached = CachedFile(FileIdentity.of(st), ObjectId(bytes(32)), refs, 0)
    files.record_many([(str(seed / "liar"), cached)], started_ns=2**62)
    files.close()
    _make_old(seed / "liar")
    dest = tmp_path / "dest"
    stats = get(store, id_b, dest, seeds=(str(seed),), files_cache_dir=tmp_path / "fc")
    assert snapshot(dest) == snapshot(b)
    assert stats.bytes_from_seeds == 0
    assert stats.chunks_from_store == len(chunks)


def _make_old(path: Path) -> None:
    os.utime(path, ns=(OLD, OLD))


def test_seed_changing_after_it_was_indexed_costs_only_a_fetch(tmp_path, pair, monkeypatch):
    a, b, store, _id_a, id_b = pair
    seed = tmp_path / "seed"
    shutil.copytree(a, seed, symlinks=True)
    real_pin = Sources.pin

    def scribble_then_pin(self, out):  # runs after indexing, before any chunk is read
        for path in seed.rglob("*"):
            if path.is_file() and not path.is_symlink():  # every byte, so no chunk survives
                path.write_bytes(bytes(byte ^ 0xFF for byte in path.read_bytes()))
        return real_pin(self, out)

    monkeypatch.setattr(Sources, "pin", scribble_then_pin)
    dest = tmp_path / "dest"
    stats = get(store, id_b, dest, seeds=(str(seed),))
    assert snapshot(dest) == snapshot(b)
    assert stats.bytes_from_seeds == 0
    assert stats.chunks_from_store == len(manifest_chunks(store, id_b))


def test_files_cache_spares_reading_unchanged_destination_files(tmp_path, pair):
    _a, _b, store, _id_a, id_b = pair
    dest = tmp_path / "dest"
    get(store, id_b, dest)
    for path in dest.rglob("*"):  # make every file old enough to be remembered
        if path.is_file() and not path.is_symlink():
            mtime = path.stat().st_mtime_ns
            os.utime(path, ns=(mtime, mtime))
    import cas.caches.files as filescache

    fc = tmp_path / "fc"
    old_window = filescache.RACY_WINDOW_NS
    filescache.RACY_WINDOW_NS = -(10**12)  # ctime is "now"; pretend the window has passed
    try:
        first = _describer_reads(store, id_b, dest, fc)
        second = _describer_reads(store, id_b, dest, fc)
    finally:
        filescache.RACY_WINDOW_NS = old_window
    assert first > 0 and second == 0


def _describer_reads(store, manifest_id, dest, fc) -> int:
    import cas.get.localchunks as localchunks

    counted = []
    real = localchunks.Describer.record

    def spy(self):
        counted.append(self.files_cut)
        return real(self)

    localchunks.Describer.record = spy
    try:
        stats = get(store, manifest_id, dest, files_cache_dir=fc)
    finally:
        localchunks.Describer.record = real
    assert stats.files == 0
    return counted[0]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec_a=root_trees, spec_b=root_trees)
def test_property_in_place_or_seeded_get_gives_exactly_b_and_fetches_only_new_chunks(
    spec_a, spec_b
):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        a, b = tmp / "a", tmp / "b"
        a.mkdir()
        b.mkdir()
        materialize(a, spec_a)
        materialize(b, spec_b)
        try:
            store = tmp / "store"
            id_a, id_b = put(store, a), put(store, b)
            dest = tmp / "dest"
            get(store, id_a, dest)
            expected_local = local_chunk_ids(dest)
            stats = get(store, id_b, dest, delete=True, cache_dir=tmp / "cache")
            assert snapshot(dest) == snapshot(b)  # no temporaries, pins or asides left
            lacking = set(manifest_chunks(store, id_b)) - expected_local
            sizes = stored_sizes(store, id_b)
            assert stats.bytes_from_store == sum(sizes[i] for i in lacking)
            # The same with A as a seed for a fresh directory.
            fresh = tmp / "fresh"
            stats = get(store, id_b, fresh, seeds=(str(a),), cache_dir=tmp / "cache2")
            assert snapshot(fresh) == snapshot(b)
            assert stats.bytes_from_store == sum(sizes[i] for i in lacking)
        finally:
            make_writable(tmp)


def test_large_file_in_many_segments_is_updated_in_place(tmp_path):
    """Over 8 MiB, segments are fetched and written at their offsets several at a time."""
    from cas.chunking import ChunkParams

    a, b = tmp_path / "a", tmp_path / "b"
    data = bytearray(os.urandom(45 << 20))
    write(a / "big.bin", bytes(data))
    data[20 << 20 : (20 << 20) + 5000] = os.urandom(5000)
    data[40 << 20 : 40 << 20] = b"inserted" * 100
    write(b / "big.bin", bytes(data))
    store = tmp_path / "store"
    id_a, id_b = put(store, a, ChunkParams()), put(store, b, ChunkParams())
    dest = tmp_path / "dest"
    get(store, id_a, dest)
    assert snapshot(dest) == snapshot(a)
    stats = get(store, id_b, dest)
    assert snapshot(dest) == snapshot(b)
    assert stats.bytes_from_destination > 40 << 20
    lacking = set(manifest_chunks(store, id_b)) - set(manifest_chunks(store, id_a))
    sizes = stored_sizes(store, id_b)
    assert stats.bytes_from_store == sum(sizes[i] for i in lacking)
