"""put: determinism, write order under interruption, excludes, odd file types."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cas import codec
from cas.caches.files import FilesCache
from cas.errors import AlreadyExists, PermissionDenied, StoreUnavailable
from cas.gc.verify import manifest_complete
from cas.objects import ChunkParams
from cas.pack import read_entries
from cas.put.listing import Excludes
from cas.put.uploader import PutOptions, Uploader
from cas.repo import Repository
from cas.store.base import Kind
from cas.store.local import LocalStore
from cas.store.wrapping import WrappingStore
from tests.store.faulty import FaultyStore


def make_tree(root: Path, files: int = 30, size: int = 300_000) -> None:
    for i in range(files):
        sub = root / f"dir{i % 4}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i}.bin").write_bytes(os.urandom(size))
    (root / "tiny").write_bytes(b"tiny")
    os.symlink("tiny", root / "link")


def put(store, src, files_cache=None, **options):
    async def run():
        uploader = Uploader(Repository(store), PutOptions(**options), files_cache=files_cache)
        return await uploader.put(src)

    return asyncio.run(run())


def packed_chunks(store_root: Path) -> int:
    """Chunks inside every pack stored (each pack read whole and parsed)."""
    total = 0
    for path in (store_root / "pack").rglob("*"):
        if path.is_file():
            entries = read_entries(bytes.fromhex(path.name), path.read_bytes(), max_chunk=16 << 20)
            total += sum(1 for e in entries if e.kind == "chunk")
    return total


def count_files(path: Path) -> int:
    return sum(1 for p in path.rglob("*") if p.is_file())


def test_same_tree_twice_same_id_and_nothing_uploaded(tmp_path):
    src = tmp_path / "src"
    make_tree(src, files=8)
    store = LocalStore(tmp_path / "store", fsync=False)
    first = put(store, src, reproducible=True)
    objects = count_files(tmp_path / "store" / "pack")
    second = put(store, src, reproducible=True, parent=str(first.manifest_id))
    assert second.manifest_id == first.manifest_id
    assert second.stats.chunks_new == 0 and second.stats.bytes_uploaded == 0
    assert second.stats.packs == 0 and second.stats.parents == [str(first.manifest_id)]
    assert count_files(tmp_path / "store" / "pack") == objects


def test_a_ref_beside_the_new_one_is_the_default_parent(tmp_path):
    src = tmp_path / "src"
    make_tree(src, files=8)
    store = LocalStore(tmp_path / "store", fsync=False)
    first = put(store, src, ref="ci/main/1")
    (src / "dir0" / "new.bin").write_bytes(os.urandom(100_000))  # one chunk
    second = put(store, src, ref="ci/main/2")
    assert second.stats.parents == [str(first.manifest_id)]
    assert second.stats.chunks_new == 1 and second.stats.packs == 2  # chunks, trees
    unrelated = put(store, src, ref="other", parent=None)
    assert unrelated.stats.parents == [str(second.manifest_id)]  # the store's newest ref


def test_without_a_parent_a_put_stores_everything_again_under_the_same_id(tmp_path):
    src = tmp_path / "src"
    make_tree(src, files=4)
    store = LocalStore(tmp_path / "store", fsync=False)
    first = put(store, src, reproducible=True)
    second = put(store, src, reproducible=True)
    assert second.manifest_id == first.manifest_id
    assert second.stats.chunks_new == first.stats.chunks_new > 0
    assert asyncio.run(manifest_complete(Repository(store), first.manifest_id))


def test_copy_elsewhere_gives_same_id_reproducible(tmp_path):
    src = tmp_path / "src"
    make_tree(src, files=6)
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(src, copy, symlinks=True)  # new mtimes, same content
    os.utime(copy / "tiny", ns=(0, 0))
    store_a = LocalStore(tmp_path / "a", fsync=False)
    store_b = LocalStore(tmp_path / "b", fsync=False)
    assert (
        put(store_a, src, reproducible=True).manifest_id
        == put(store_b, copy, reproducible=True).manifest_id
    )


def test_mtimes_change_the_id_unless_left_out(tmp_path):
    src = tmp_path / "src"
    make_tree(src, files=2)
    store = LocalStore(tmp_path / "store", fsync=False)
    a = put(store, src, mtimes=True)
    os.utime(src / "tiny", ns=(10**18, 10**18))
    b = put(store, src, mtimes=True)
    assert a.manifest.root != b.manifest.root
    c = put(store, src, mtimes=False)
    os.utime(src / "tiny", ns=(5 * 10**17, 5 * 10**17))
    d = put(store, src, mtimes=False)
    assert c.manifest.root == d.manifest.root
    assert a.manifest.created is not None and c.manifest.tool.startswith("cas ")


def all_trees_complete(store_root: Path) -> None:
    """Invariant 2: every index names only stored packs; every manifest is complete."""
    store = LocalStore(store_root, create=False)

    async def check():
        repo = Repository(store)
        async for info in store.list(Kind.INDEX):
            blob = await store.get(Kind.INDEX, info.id, max_size=64 << 20)
            from cas.packindex import decode_index

            index = decode_index(info.id, blob)
            assert not await store.missing(Kind.PACK, list(index.packs()))
        async for info in store.list(Kind.MANIFEST):
            assert await manifest_complete(repo, info.id)

    asyncio.run(check())


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (worker processes hang off a forkserver child)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def wait_gone(pids: set[int], timeout: float = 60) -> None:
    """Until none of `pids` runs any more (a zombie counts as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                alive.append(pid)
        if not alive:
            return
        time.sleep(0.05)
    raise AssertionError(f"processes {sorted(pids)} outlived the killed put")


def settled_count(directory: Path) -> int:
    """The number of files once it has stopped changing for a moment."""
    count, since = count_files(directory), time.monotonic()
    while time.monotonic() - since < 0.5:
        time.sleep(0.05)
        now = count_files(directory)
        if now != count:
            count, since = now, time.monotonic()
    return count


def test_failed_upload_leaves_no_manifest_and_rerun_uploads_the_rest(tmp_path):
    src = tmp_path / "src"
    make_tree(src, files=30)
    inner = LocalStore(tmp_path / "store", fsync=False)
    faulty = FaultyStore(inner, fail_on={"put_if_absent": 7})
    cache = FilesCache(tmp_path / "cache", inner.url, PutOptions().params)
    with pytest.raises(StoreUnavailable):
        put(faulty, src, files_cache=cache, pack_size=256 << 10, processes=False)
    assert count_files(tmp_path / "store" / "manifest") == 0
    assert count_files(tmp_path / "store" / "index") == 0
    all_trees_complete(tmp_path / "store")
    stored_before = packed_chunks(tmp_path / "store")
    assert stored_before > 0
    result = put(inner, src, files_cache=cache, pack_size=256 << 10)
    assert result.stats.resumed >= stored_before  # the journal's packs, chunks and trees
    assert result.stats.chunks_new == result.stats.chunks - stored_before
    assert count_files(tmp_path / "store" / "manifest") == 1
    all_trees_complete(tmp_path / "store")


def test_killed_put_leaves_no_manifest_and_rerun_completes(tmp_path):
    src = tmp_path / "src"
    make_tree(src, files=240, size=512 << 10)  # 120 MiB of incompressible data
    store_dir = tmp_path / "store"
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parent.parent),
        "CAS_CACHE_DIR": str(tmp_path / "cache"),
    }
    cmd = [sys.executable, "-m", "cas_cli.main", "put", "--store", str(store_dir), str(src)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    pack_dir = store_dir / "pack"
    while time.monotonic() < deadline:
        if pack_dir.exists() and count_files(pack_dir) >= 1:
            break
        time.sleep(0.005)
    workers = descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "put finished before it could be killed"
    wait_gone(workers)  # worker processes die with the put, not at the same instant
    assert count_files(store_dir / "manifest") == 0
    settled_count(pack_dir)
    stored_before = packed_chunks(store_dir)
    assert stored_before > 0
    all_trees_complete(store_dir)
    done = subprocess.run([*cmd, "--json"], env=env, capture_output=True, text=True, check=True)

    report = json.loads(done.stdout)
    assert report["chunks_new"] == report["chunks"] - stored_before
    assert count_files(store_dir / "manifest") == 1


def test_excludes_gitignore_style(tmp_path):
    src = tmp_path / "src"
    for rel in [
        "a.o",
        "lib/x.a",
        "lib/keep.c",
        "third_party/llvm/lib/big.bin",
        "third_party/llvm/include/h.h",
        "build/out",
        "sub/build/out",
        "keep.o",
    ]:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(rel.encode())
    patterns = tmp_path / "patterns"
    patterns.write_text("# comment\n/build\n")
    store = LocalStore(tmp_path / "store", fsync=False)
    excludes = Excludes.from_options(
        ["*.o", "*.a", "third_party/llvm/lib/", "!keep.o"], [str(patterns)]
    )
    result = put(store, src, excludes=excludes)
    out = tmp_path / "out"
    from cas.get.downloader import Downloader

    asyncio.run(Downloader(Repository(store)).get(result.manifest_id, out))
    got = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert got == ["keep.o", "lib/keep.c", "sub/build/out", "third_party/llvm/include/h.h"]
    assert "*.o" in result.manifest.excludes and "/build" in result.manifest.excludes


def test_sockets_and_fifos_are_skipped_with_a_warning(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_bytes(b"f")
    os.mkfifo(src / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "sock"))
    from cas.progress import NullProgress

    progress = NullProgress()
    store = LocalStore(tmp_path / "store", fsync=False)

    async def run():
        return await Uploader(Repository(store), PutOptions(), progress).put(src)

    result = asyncio.run(run())
    sock.close()
    assert result.manifest.totals.files == 1
    assert sorted(p for p, _ in result.stats.skipped) == ["fifo", "sock"]
    assert any("fifo" in w for w in progress.warnings)


def test_compression_level_changes_blobs_not_ids(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "text").write_bytes(b"compressible line of text\n" * 50_000)
    a = put(LocalStore(tmp_path / "a", fsync=False), src, level=1, reproducible=True)
    b = put(LocalStore(tmp_path / "b", fsync=False), src, level=19, reproducible=True)
    assert a.manifest_id == b.manifest_id
    assert b.stats.bytes_uploaded < a.stats.bytes_uploaded
    path = next(p for p in (tmp_path / "b" / "pack").rglob("*") if p.is_file())
    data = path.read_bytes()
    entry = read_entries(bytes.fromhex(path.name), data, max_chunk=16 << 20)[0]
    assert codec.decoded_size(data[entry.offset : entry.offset + entry.stored]) == entry.raw


def test_a_parent_that_is_not_there_is_a_clear_error_and_stores_nothing(tmp_path):
    from cas.errors import ObjectNotFound

    src = tmp_path / "src"
    make_tree(src, files=2)
    store = LocalStore(tmp_path / "store", fsync=False)
    with pytest.raises(ObjectNotFound, match="parent: no manifest id or ref named 'ci/nope'"):
        put(store, src, parent="ci/nope")
    assert count_files(tmp_path / "store" / "pack") == 0
    assert count_files(tmp_path / "store" / "manifest") == 0


def test_a_parent_collected_since_is_skipped_with_a_warning(tmp_path):
    from cas.progress import NullProgress

    src = tmp_path / "src"
    make_tree(src, files=3)
    store = LocalStore(tmp_path / "store", fsync=False)
    first = put(store, src, ref="ci/1")
    for index in (tmp_path / "store" / "index").rglob("*"):
        if index.is_file():
            index.unlink()  # as a collection that removed the parent would
    progress = NullProgress()

    async def run():
        return await Uploader(Repository(store), PutOptions(ref="ci/2"), progress).put(src)

    second = asyncio.run(run())
    assert second.stats.parents == [] and second.stats.chunks_new == first.stats.chunks_new
    assert any("no longer stored" in w for w in progress.warnings)
    assert asyncio.run(manifest_complete(Repository(store), second.manifest_id))


class _DiesAfterNaming(WrappingStore):
    """The ref is created, then the put is cut off (a job killed right after naming)."""

    async def create_ref(self, name, target):
        await self.inner.create_ref(name, target)
        raise PermissionDenied("cut off after the ref was created")


async def test_a_put_cut_off_after_naming_is_completed_by_its_rerun(tmp_path):
    """A CI job retried on the same workspace: the ref its first run created is its own."""
    store = LocalStore(tmp_path / "store", fsync=False)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(50_000))
    files = FilesCache(tmp_path / "cache", store.url, ChunkParams())
    options = PutOptions(ref="ci/1")
    try:
        with pytest.raises(PermissionDenied):
            await Uploader(Repository(_DiesAfterNaming(store)), options, files_cache=files).put(src)
        named = await store.read_ref("ci/1")
        again = await Uploader(Repository(store), options, files_cache=files).put(src)
        assert again.manifest_id == named and again.stats.bytes_uploaded == 0
        # Finished now: a further put with the name is refused before anything is read.
        with pytest.raises(AlreadyExists, match="nothing was uploaded"):
            await Uploader(Repository(store), options, files_cache=files).put(src)
        # Cut off again, but the source changed meanwhile: create-only, refused.
        await store.delete_ref("ci/1")
        with pytest.raises(PermissionDenied):
            await Uploader(Repository(_DiesAfterNaming(store)), options, files_cache=files).put(src)
        (src / "b").write_bytes(b"new")
        with pytest.raises(AlreadyExists, match="was stored but not named"):
            await Uploader(Repository(store), options, files_cache=files).put(src)
    finally:
        files.close()


async def test_the_library_leaves_a_store_inside_the_source_out_as_the_cli_does(tmp_path):
    from cas.get.browse import walk
    from cas.put.uploader import put_directory

    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"x" * 5000)
    store = LocalStore(src / "store", fsync=False)
    repo = Repository(store)
    result = await put_directory(repo, src)
    names = [located.path async for located in walk(repo, result.manifest)]
    assert names == ["a"] and result.stats.skipped == [("store", "store or cache")]
