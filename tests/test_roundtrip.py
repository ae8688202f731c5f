"""get(put(tree)) == tree, byte for byte and in metadata, for generated trees."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings

from cas.chunking import ChunkParams
from cas.get.downloader import Downloader
from cas.put.uploader import PutOptions, Uploader
from cas.repo import Repository
from cas.store.local import LocalStore
from tests.conftest import snapshot
from tests.trees import make_writable, materialize, root_trees

SMALL_CHUNKS = ChunkParams(min_size=256, avg_size=1024, max_size=4096)


def roundtrip(src: Path, dest: Path, store_dir: Path, **options) -> tuple:
    async def run():
        store = LocalStore(store_dir, fsync=False)
        repo = Repository(store)
        result = await Uploader(repo, PutOptions(**options)).put(src)
        stats = await Downloader(Repository(store)).get(result.manifest_id, dest)
        return result, stats

    return asyncio.run(run())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=root_trees)
def test_roundtrip_generated_trees(spec):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "src"
        src.mkdir()
        materialize(src, spec)
        try:
            result, stats = roundtrip(src, tmp / "out", tmp / "store", params=SMALL_CHUNKS)
            assert snapshot(tmp / "out") == snapshot(src)
            assert stats.files == result.manifest.totals.files
        finally:
            make_writable(tmp)


def test_roundtrip_large_file_default_params(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    block = os.urandom(1 << 20)
    # 9 MiB, partly repetitive so chunks repeat, plus an odd tail.
    (src / "big.bin").write_bytes(block * 4 + os.urandom(5 << 20) + b"tail" * 1000)
    (src / "small").write_bytes(b"s")
    result, stats = roundtrip(src, tmp_path / "out", tmp_path / "store")
    assert snapshot(tmp_path / "out") == snapshot(src)
    assert result.stats.chunks > 4
    assert stats.bytes_written == (src / "big.bin").stat().st_size + 1


def test_hard_links_are_stored_as_separate_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"linked content" * 100)
    os.link(src / "a", src / "b")
    roundtrip(src, tmp_path / "out", tmp_path / "store")
    out = tmp_path / "out"
    assert (out / "a").read_bytes() == (out / "b").read_bytes()
    assert (out / "a").stat().st_ino != (out / "b").stat().st_ino


def test_get_restores_into_existing_destination_replacing_files(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"new")
    dest = tmp_path / "out"
    (dest / "d").mkdir(parents=True)
    (dest / "d" / "f").write_bytes(b"old content that is longer")
    roundtrip(src, dest, tmp_path / "store")
    assert (dest / "d" / "f").read_bytes() == b"new"
    assert not [p for p in dest.rglob(".cas-tmp-*")]


def _dest_with_temporaries(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"content")
    dest = tmp_path / "out"
    (dest / "d").mkdir(parents=True)
    (dest / ".cas-tmp-0123456789abcdef").write_bytes(b"half")
    (dest / "d" / ".cas-tmp-fedcba9876543210").write_bytes(b"half")
    (dest / "d" / "user-file").write_bytes(b"not ours")
    return src, dest


def test_stale_temporaries_of_an_interrupted_get_are_removed(tmp_path, monkeypatch):
    import cas.get.fswrite as fswrite

    src, dest = _dest_with_temporaries(tmp_path)
    real_time = fswrite.time.time
    monkeypatch.setattr(fswrite.time, "time", lambda: real_time() + 2 * 3600)
    roundtrip(src, dest, tmp_path / "store")
    left = sorted(str(p.relative_to(dest)) for p in dest.rglob("*"))
    assert left == ["d", "d/f", "d/user-file"]


def test_recent_temporaries_may_belong_to_a_running_get_and_are_kept(tmp_path):
    src, dest = _dest_with_temporaries(tmp_path)
    roundtrip(src, dest, tmp_path / "store")
    assert (dest / ".cas-tmp-0123456789abcdef").exists()
    assert (dest / "d" / ".cas-tmp-fedcba9876543210").exists()
