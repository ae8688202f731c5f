"""`cas mount`: a real FUSE mount (as root) of a put tree, checked against what `cas get` writes.

These fail instead of skipping when CAS_TEST_REQUIRE names `fuse` (as .ci/run
sets it) or CI is set: FUSE missing there is a broken CI machine.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.gcs_emulator import unavailable

ROOT = Path(__file__).parent.parent
STAMP = 1_650_000_000_123_456_789
CHUNK = ["--chunk-size", "64K"]  # 16K..256K chunks: a few MB make many chunks


def binding_ready() -> None:
    """Skip (or fail, when required) unless the FUSE binding imports here."""
    try:
        import pyfuse3  # noqa: F401
    except ImportError as exc:
        unavailable("fuse", f"pyfuse3 is not installed ({exc})")


def fuse_ready() -> None:
    """Skip (or fail, when required) unless a FUSE mount can be made here."""
    binding_ready()
    if not os.path.exists("/dev/fuse"):
        unavailable("fuse", "/dev/fuse does not exist")
    if shutil.which("fusermount3") is None:
        unavailable("fuse", "fusermount3 is not installed (Debian package fuse3)")
    if os.geteuid() != 0:
        unavailable("fuse", "not running as root")


def cas(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cas", *args], env=env, capture_output=True, text=True, check=check
    )


def put_tree(store: Path, src: Path, ref: str | None = None) -> str:
    """`cas put --chunk-size 64K` in this process (a subprocess costs a second of start-up)."""
    import asyncio

    from cas.chunking import ChunkParams
    from cas.put.uploader import PutOptions, Uploader
    from cas.repo import Repository
    from cas.store.local import LocalStore

    params = ChunkParams(min_size=16 << 10, avg_size=64 << 10, max_size=256 << 10)

    async def run():
        async with LocalStore(store, fsync=False) as local:
            options = PutOptions(params=params, ref=ref, processes=False)
            return (await Uploader(Repository(local), options).put(src)).manifest_id

    return str(asyncio.run(run()))


def build_source(root: Path) -> dict[str, bytes]:
    """A tree with every kind of entry `get` writes; returns file contents by path."""
    rng = random.Random(7)
    files = {
        "big.bin": rng.randbytes(3 << 20),
        "mid.bin": rng.randbytes(300_000),
        "small.txt": b"hello\n",
        "empty": b"",
        "sub/deeper/leaf.c": b"int main(void) { return 0; }\n" * 200,
        "sub/tool.sh": b"#!/bin/sh\necho hi\n",
        "sub/\xe9t\xe9.txt".encode("latin-1").decode("utf-8", "surrogateescape"): b"latin-1 name",
    }
    for i in range(40):  # one chunk each (over the 4 KiB inline limit): packed side by side
        files[f"many/f{i:02d}.o"] = rng.randbytes(5000 + 100 * i)
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    os.chmod(root / "sub/tool.sh", 0o4755)  # setuid: get (and mount) drop it
    os.chmod(root / "small.txt", 0o600)
    (root / "emptydir").mkdir()
    os.chmod(root / "emptydir", 0o750)
    os.symlink("small.txt", root / "link")
    os.symlink("does/not/exist", root / "sub/dangling")
    os.symlink("../big.bin", root / "sub/up")
    for top, dirs, names in os.walk(root, topdown=False):
        for name in [*names, *dirs]:
            os.utime(os.path.join(top, name), ns=(STAMP, STAMP), follow_symlinks=False)
    return files


def describe(root: Path) -> dict[str, tuple]:
    """What a user sees of a tree without reading file contents: type, mode, size, mtime, target."""
    out = {}
    for top, dirs, names in os.walk(root):
        for name in [*dirs, *names]:
            path = os.path.join(top, name)
            st = os.lstat(path)
            target = os.readlink(path) if os.path.islink(path) else None
            size = None if os.path.isdir(path) and not os.path.islink(path) else st.st_size
            rel = os.path.relpath(path, root)
            out[rel] = (st.st_mode, size, st.st_mtime_ns, target)
    return out


class Mount:
    """A `cas mount` process and its mount point."""

    def __init__(self, store: Path | str, manifest: str, point: Path, env: dict[str, str], *extra):
        self.point = point
        command = ["--store", str(store), "--json", "mount", manifest, str(point), *extra]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cas", *command],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 20
        while not os.path.ismount(point):
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                pytest.fail(f"cas mount exited {self.proc.returncode}: {err}{out}")
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail("cas mount did not come up within 20 s")
            time.sleep(0.02)
        self.stats: dict | None = None
        self.stderr = ""

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Signal the mount; returns its exit code once it has unmounted and exited."""
        self.proc.send_signal(signum)
        try:
            out, self.stderr = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, self.stderr = self.proc.communicate()
            pytest.fail(f"cas mount did not exit within 15 s of {signum}")
        if self.proc.returncode == 0:
            self.stats = json.loads(out)
        return self.proc.returncode

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.stop()
        if os.path.ismount(self.point):
            subprocess.run(["fusermount3", "-u", "-z", str(self.point)], check=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    fuse_ready()
    tmp = tmp_path_factory.mktemp("mount")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CAS_CACHE_DIR": str(tmp / "cache")}
    src = tmp / "src"
    files = build_source(src)
    store = tmp / "store"
    manifest = cas("--store", str(store), "put", "-q", *CHUNK, str(src), env=env).stdout.strip()
    dest = tmp / "got"
    cas("--store", str(store), "get", "-q", manifest, str(dest), env=env)
    return {"tmp": tmp, "env": env, "src": src, "files": files, "store": store,
            "manifest": manifest, "dest": dest}  # fmt: skip


@pytest.fixture
def mount(world, tmp_path):
    mounts: list[Mount] = []

    def make(manifest: str | None = None, store: Path | None = None, *extra: str) -> Mount:
        point = tmp_path / f"mnt{len(mounts)}"
        store = store or world["store"]
        m = Mount(store, manifest or world["manifest"], point, world["env"], *extra)
        mounts.append(m)
        return m

    yield make
    for m in mounts:
        m.cleanup()


def test_listing_stat_readlink_equal_get_with_no_chunk_fetched(world, mount):
    m = mount()
    seen = describe(m.point)
    assert seen == describe(world["dest"])
    assert os.stat(m.point / "sub/tool.sh").st_mode & 0o7777 == 0o755  # setuid dropped, as get
    assert os.readlink(m.point / "sub/dangling") == "does/not/exist"
    assert sorted(os.listdir(m.point / "emptydir")) == []
    assert m.stop() == 0
    assert not os.path.ismount(m.point)
    assert m.stats["chunks_from_store"] == 0 and m.stats["chunks_from_cache"] == 0
    assert m.stats["bytes_from_store"] == 0 and m.stats["trees_fetched"] >= 4


def test_reads_give_exact_bytes(world, mount):
    m = mount()
    for rel, data in world["files"].items():
        assert (m.point / rel).read_bytes() == data, rel
    assert (m.point / "link").read_bytes() == b"hello\n"  # through the mount's own symlink
    big = world["files"]["big.bin"]
    rng = random.Random(3)
    fd = os.open(m.point / "big.bin", os.O_RDONLY)
    try:
        for _ in range(200):  # random ranges, many across chunk boundaries
            offset = rng.randrange(0, len(big) + 1000)
            size = rng.randrange(1, 400_000)
            assert os.pread(fd, size, offset) == big[offset : offset + size]
    finally:
        os.close(fd)
    with pytest.raises(OSError) as info:
        os.open(m.point / "small.txt", os.O_WRONLY)
    assert info.value.errno == errno.EROFS
    assert m.stop() == 0
    assert m.stats["chunks_from_store"] > 0 and m.stats["errors"] == 0


def test_small_files_of_a_directory_come_in_one_read(world, mount):
    m = mount()
    names = sorted(os.listdir(m.point / "many"))
    assert len(names) == 40
    for name in names:  # as a test runner or a compiler opens them: one by one
        assert (m.point / "many" / name).read_bytes() == world["files"][f"many/{name}"]
    assert m.stop() == 0
    # Each of the 40 once, plus (if it lands before the unmount) the one chunked
    # file the walk of "many" reads ahead in the next directory (sub/deeper/leaf.c).
    assert m.stats["chunks_from_store"] in (40, 41)
    assert m.stats["walks"] == 1
    assert m.stats["reads"] <= 5  # trees and one merged read, not one read per file


def test_a_small_file_opened_alone_fetches_only_itself(world, mount):
    """A job reading one file here and there does not pay for its neighbours; a second open does."""
    m = mount()
    names = sorted(os.listdir(m.point / "many"))
    assert (m.point / "many" / names[10]).read_bytes() == world["files"][f"many/{names[10]}"]
    time.sleep(0.5)  # a sibling fetch would run in the background meanwhile
    assert m.stop() == 0
    assert m.stats["chunks_from_store"] == 1
    m = mount()
    for name in [names[10], names[20], *names]:
        assert (m.point / "many" / name).read_bytes() == world["files"][f"many/{name}"]
    assert m.stop() == 0
    # Each of the 40 once, plus (if it lands before the unmount) the one chunked
    # file the walk of "many" reads ahead in the next directory (sub/deeper/leaf.c).
    assert m.stats["chunks_from_store"] in (40, 41)
    assert m.stats["walks"] == 1
    assert m.stats["reads"] <= 6  # trees, the first file, then one merged read


def test_subdirectory_mount(world, mount):
    m = mount(world["manifest"] + ":sub")
    assert sorted(os.listdir(m.point)) == sorted(os.listdir(world["dest"] / "sub"))
    assert (m.point / "deeper/leaf.c").read_bytes() == world["files"]["sub/deeper/leaf.c"]
    assert m.stop(signal.SIGINT) == 0  # Ctrl-C unmounts too
    assert not os.path.ismount(m.point)


def corrupt_one_chunk(store: Path, manifest: str, path: str, which: int) -> str:
    """Flip a byte inside the frame of chunk `which` of file `path`; returns the chunk id."""
    import asyncio

    from cas.get.browse import lookup
    from cas.ids import ObjectId
    from cas.pack import ObjectKind
    from cas.repo import Repository
    from cas.store.local import LocalStore

    async def locate():
        repo = Repository(LocalStore(str(store)))
        mid = ObjectId.parse(manifest)
        found = await lookup(repo, await repo.get_manifest(mid), path)
        chunk = found.entry.chunks[which].id
        index = await repo.index(mid)
        return chunk, index.table(ObjectKind.CHUNK)[chunk]

    chunk, loc = asyncio.run(locate())
    pack = store / "pack" / str(loc.pack)[:2] / str(loc.pack)
    with open(pack, "r+b") as f:
        f.seek(loc.offset + loc.stored // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    return str(chunk)


def test_corrupt_chunk_is_eio_never_wrong_bytes(world, mount, tmp_path):
    # A store of its own: the corruption must not leak into the other tests.
    env = world["env"] | {"CAS_CACHE_DIR": str(tmp_path / "cache")}
    store = tmp_path / "store"
    manifest_id = put_tree(store, world["src"])
    bad = corrupt_one_chunk(store, manifest_id, "big.bin", 5)
    m = Mount(store, manifest_id, tmp_path / "mnt", env)
    try:
        big = world["files"]["big.bin"]
        got = bytearray()
        with open(m.point / "big.bin", "rb", buffering=0) as f, pytest.raises(OSError) as info:
            while chunk := f.read(128 << 10):
                got += chunk
        assert info.value.errno == errno.EIO
        assert len(got) < len(big) and bytes(got) == big[: len(got)]  # only verified bytes
        assert (m.point / "mid.bin").read_bytes() == world["files"]["mid.bin"]  # others fine
        assert m.stop() == 0
    finally:
        m.cleanup()
    lines = [line for line in m.stderr.splitlines() if "EIO" in line]
    assert len(lines) == 1, m.stderr
    assert bad in lines[0] and "big.bin" in lines[0], lines[0]
    assert m.stats["errors"] >= 1


def test_sigterm_unmounts_and_leaves_no_mount(world, mount):
    m = mount()
    fd = os.open(m.point / "mid.bin", os.O_RDONLY)  # an open file does not block the unmount
    try:
        assert os.read(fd, 10) == world["files"]["mid.bin"][:10]
        assert m.stop(signal.SIGTERM) == 0
    finally:
        with contextlib.suppress(OSError):  # ENOTCONN: its file system is gone
            os.close(fd)
    assert not os.path.ismount(m.point)
    assert "Traceback" not in m.stderr and "Exception" not in m.stderr, m.stderr
    with open("/proc/self/mounts") as f:
        assert str(m.point) not in f.read()
    assert os.listdir(m.point) == []


def test_unknown_ref_fails_before_mounting(world, tmp_path):
    point = tmp_path / "mnt"
    done = cas("--store", str(world["store"]), "mount", "no/such/ref", str(point),
               env=world["env"], check=False)  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert not os.path.ismount(point)


class StallingProxy:
    """A TCP proxy on 127.0.0.1 that can stop passing answers back (a store that hangs)."""

    def __init__(self, upstream_port: int) -> None:
        import socket
        import threading

        self.upstream_port = upstream_port
        self.stalled = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source, sink, answers: bool) -> None:
        while True:
            if answers and self.stalled.is_set():
                time.sleep(0.05)  # hold the answer back: the client waits forever
                continue
            try:
                data = source.recv(1 << 16)
                if not data:
                    return
                sink.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.listener.close()
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.close()


def test_stalled_store_is_eio_after_the_timeout_not_a_hang(world, tmp_path):
    from tests.serve_process import TOKENS, start_serve

    env = world["env"] | {"CAS_CACHE_DIR": str(tmp_path / "cache"), "CAS_TOKEN": TOKENS["read"]}
    workdir = tmp_path / "srv"
    store = workdir / "store"
    manifest = put_tree(store, world["src"])
    server = start_serve(workdir)
    proxy = StallingProxy(int(server.url.rsplit(":", 1)[1]))
    url = f"http://127.0.0.1:{proxy.port}"
    m = Mount(url, manifest, tmp_path / "mnt", env, "--timeout", "1s")
    try:
        assert sorted(os.listdir(m.point)) == sorted(os.listdir(world["dest"]))
        proxy.stalled.set()
        t0 = time.monotonic()
        with pytest.raises(OSError) as info:
            (m.point / "mid.bin").read_bytes()
        assert info.value.errno == errno.EIO
        assert time.monotonic() - t0 < 10
        assert m.stop() == 0
    finally:
        m.cleanup()
        proxy.close()
        server.stop()
    assert "did not answer within 1 s" in m.stderr and "mid.bin" in m.stderr, m.stderr


def test_record_then_prefetch_fills_the_cache_before_reads(world, tmp_path):
    env = world["env"] | {"CAS_CACHE_DIR": str(tmp_path / "cache")}
    trace = tmp_path / "trace"
    m = Mount(world["store"], world["manifest"], tmp_path / "a", env, "--record", str(trace))
    try:
        for rel in ("sub/deeper/leaf.c", "mid.bin", "small.txt", "mid.bin", "big.bin"):
            (m.point / rel).read_bytes()
        assert m.stop() == 0
    finally:
        m.cleanup()
    assert trace.read_text().splitlines() == [
        "sub/deeper/leaf.c",
        "mid.bin",
        "small.txt",
        "big.bin",
    ]
    assert m.stats["recorded"] == 4

    extra = ("--cache", "--prefetch", str(trace))
    wanted = chunk_ids(
        world["store"], world["manifest"], ["sub/deeper/leaf.c", "mid.bin", "big.bin"]
    )
    m = Mount(world["store"], world["manifest"], tmp_path / "b", env, *extra)
    try:
        from cas.caches.chunks import ChunkCache

        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # the prefetch fills the cache with no read at all
            if (tmp_path / "cache" / "chunks.lmdb").exists():
                cache = ChunkCache(tmp_path / "cache", capacity=1 << 30)
                held = cache.has_many(wanted)
                cache.close()
                if held == set(wanted):
                    break
            time.sleep(0.1)
        else:
            pytest.fail("the prefetch did not fill the cache within 15 s")
        assert (m.point / "big.bin").read_bytes() == world["files"]["big.bin"]
        assert m.stop() == 0
    finally:
        m.cleanup()
    fetched = m.stats["prefetched"]
    assert fetched["done"] and fetched["files"] == 4 and fetched["failed_batches"] == 0
    assert m.stats["chunks_from_store"] == fetched["chunks"] == len(wanted)  # each fetched once
    assert m.stats["chunks_from_cache"] >= len(
        chunk_ids(world["store"], world["manifest"], ["big.bin"])
    )


def chunk_ids(store: Path, manifest: str, paths: list[str]) -> list:
    import asyncio

    from cas.get.browse import lookup
    from cas.ids import ObjectId
    from cas.repo import Repository
    from cas.store.local import LocalStore

    async def ids():
        repo = Repository(LocalStore(str(store)))
        m = await repo.get_manifest(ObjectId.parse(manifest))
        out = {}
        for path in paths:
            for ref in (await lookup(repo, m, path)).entry.chunks:
                out[ref.id] = None
        return list(out)

    return asyncio.run(ids())


def test_gc_while_mounted_repacked_is_followed_collected_is_eio(tmp_path, world):
    env = world["env"] | {"CAS_CACHE_DIR": str(tmp_path / "cache")}
    rng = random.Random(11)
    kept, dropped = rng.randbytes(1 << 20), rng.randbytes(1 << 20)
    for name, files in (
        ("a", {"kept.bin": kept, "dropped.bin": dropped}),
        ("b", {"kept.bin": kept}),
    ):
        (tmp_path / name).mkdir()
        for file, data in files.items():
            (tmp_path / name / file).write_bytes(data)
    store = tmp_path / "store"
    a = put_tree(store, tmp_path / "a", ref="r/a")
    b = put_tree(store, tmp_path / "b", ref="r/b")
    ma = Mount(store, a, tmp_path / "ma", env)
    mb = Mount(store, b, tmp_path / "mb", env)
    try:
        assert os.path.getsize(ma.point / "dropped.bin") == len(dropped)  # trees only so far
        collect_twice(store, "r/a")
        assert (mb.point / "kept.bin").read_bytes() == kept  # kept by its ref: relocated
        with pytest.raises(OSError) as info:
            (ma.point / "dropped.bin").read_bytes()
        assert info.value.errno == errno.EIO
        assert mb.stop() == 0 and ma.stop() == 0
    finally:
        ma.cleanup()
        mb.cleanup()
    assert mb.stats["errors"] == 0 and mb.stats["index_reloads"] >= 1
    lines = [line for line in ma.stderr.splitlines() if "EIO" in line]
    assert len(lines) == 1 and "dropped.bin: chunk" in lines[0] and "missing" in lines[0], lines


def collect_twice(store: Path, ref: str) -> None:
    """`cas ref rm REF`, then two `cas gc --grace 0s`: the first collects the manifest and
    repacks its mostly dead data pack, the second deletes the old pack."""
    import asyncio

    from cas.gc.collector import GcOptions, collect
    from cas.repo import Repository
    from cas.store.local import LocalStore

    async def run():
        async with LocalStore(store, fsync=False) as local:
            await local.delete_ref(ref)
            for _ in range(2):
                await collect(Repository(local), GcOptions(grace=0.0))

    asyncio.run(run())


def test_daemon_returns_once_mounted_and_fusermount_ends_it(world, tmp_path):
    point, log = tmp_path / "mnt", tmp_path / "mount.log"
    args = ("--store", str(world["store"]), "mount", world["manifest"], str(point))
    done = cas(*args, "--daemon", "--log", str(log), env=world["env"])
    assert done.returncode == 0 and os.path.ismount(point)  # up when the command returns
    try:
        assert (point / "small.txt").read_bytes() == b"hello\n"
    finally:
        subprocess.run(["fusermount3", "-u", str(point)], check=True)
    deadline = time.monotonic() + 10
    while "unmounted" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "unmounted" in log.read_text()  # the background process saw it and ended cleanly
    assert not os.path.ismount(point)


def run_python(script: str) -> None:
    """Run `script` in a fresh interpreter (imports of its own); its asserts must hold."""
    binding_ready()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_binding_runs_on_asyncio_without_trio_in_the_process():
    """pyfuse3 imports trio but never uses it on asyncio: the mount skips its ~0.1 s import."""
    script = (
        "import sys, threading\n"
        "from cas.mount import compat\n"
        "threads = [threading.Thread(target=compat.import_binding) for _ in range(4)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "compat.enable()\n"
        "import pyfuse3, pyfuse3.asyncio\n"
        "assert 'trio' not in sys.modules, 'trio imported'\n"
        "assert pyfuse3.trio is pyfuse3.asyncio, 'pyfuse3 not on asyncio'\n"
    )
    run_python(script)


def test_allow_other_lets_another_user_in_by_mode_bits(world):
    """Without --allow-other only the mounting user gets in; with it, mode bits decide."""
    nobody = 65534
    shared = Path(tempfile.mkdtemp(prefix="cas-allow-other-", dir="/tmp"))
    os.chmod(shared, 0o755)  # another user can reach the mount points

    def as_nobody(*command: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(list(command), user=nobody, group=nobody, capture_output=True)

    mounts = []
    try:
        mounts.append(Mount(world["store"], world["manifest"], shared / "own", world["env"]))
        shut_out = as_nobody("ls", str(shared / "own"))
        mounts.append(
            Mount(world["store"], world["manifest"], shared / "all", world["env"], "--allow-other")
        )
        public = as_nobody("cat", str(shared / "all/many/f00.o"))
        private = as_nobody("cat", str(shared / "all/small.txt"))  # mode 0600
        assert (shared / "all/small.txt").read_bytes() == b"hello\n"  # its owner reads it
    finally:
        for m in mounts:
            m.cleanup()
        shutil.rmtree(shared, ignore_errors=True)
    assert shut_out.returncode != 0 and b"Permission denied" in shut_out.stderr
    assert public.returncode == 0 and public.stdout == world["files"]["many/f00.o"]
    assert private.returncode != 0 and b"Permission denied" in private.stderr


def test_allow_other_without_the_opt_in_is_refused_before_mounting(tmp_path, monkeypatch):
    from cas.errors import UsageError
    from cas.mount.session import check_allow_other

    conf = tmp_path / "fuse.conf"
    monkeypatch.setattr(os, "getuid", lambda: 1000)  # the rule is for users; tests run as root
    refused = (
        "",
        "# user_allow_other\n",
        "mount_max = 5\n",
        "user_allow_other",  # fusermount3 ignores a last line without its newline
        " " * 250 + "user_allow_other\n",  # longer than fusermount3's line buffer
        "\x1cuser_allow_other\n",  # not C white space
        "user_allow_other = 1\n",
    )
    for text in refused:
        conf.write_text(text)
        with pytest.raises(UsageError, match="user_allow_other"):
            check_allow_other(str(conf))
    with pytest.raises(UsageError, match="user_allow_other"):
        check_allow_other(str(tmp_path / "missing.conf"))
    for text in ("mount_max = 5\nuser_allow_other  # for CI\n", "\tuser_allow_other\r\n"):
        conf.write_text(text)
        check_allow_other(str(conf))


def test_daemon_child_gets_every_option_of_the_mount(tmp_path):
    """`--daemon` re-runs the mount in the background: no option may be lost on the way."""
    from cas_cli.commands.mount import child_command
    from cas_cli.main import build_parser

    argv = ["mount", "ci/main", str(tmp_path / "mnt"), "--store", str(tmp_path / "s"),
            "--timeout", "9s", "--readahead", "1M", "--memory", "32M", "--record",
            str(tmp_path / "t"), "--prefetch", "all", "--allow-other", "--cache", "--json",
            "-q", "-v", "--debug", "--daemon", "--log", str(tmp_path / "log")]  # fmt: skip
    parser = build_parser(argv)
    given = vars(parser.parse_args(argv))
    child = child_command(parser.parse_args(argv))
    assert child[1:4] == ["-m", "cas", "mount"]
    again = vars(parser.parse_args(child[3:]))
    assert {k: v for k, v in again.items() if k not in ("daemon", "log", "run")} == {
        k: v for k, v in given.items() if k not in ("daemon", "log", "run")
    }
    assert not again["daemon"]


@pytest.mark.parametrize(
    ("module", "failure"),
    [("pyfuse3", "ImportError('trio.lowlevel needed')"), ("pyfuse3._pyfuse3", "trio.Lock")],
)
def test_the_binding_is_imported_the_plain_way_when_the_stand_in_is_not_enough(module, failure):
    """A pyfuse3 release needing more of trio at import gets the real one, not an error.

    Either its import fails (ImportError), or, half-way through pyfuse3's
    own initialisation, it reads an attribute the stand-in lacks.
    """
    script = (
        "import sys\n"
        "class FailsFirstImport:\n"
        "    failed = False\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name == {module!r} and not self.failed:\n"
        "            self.failed = True\n"
        "            trio = sys.modules['trio']\n"
        f"            raise {failure}\n"
        "sys.meta_path.insert(0, FailsFirstImport())\n"
        "from cas.mount import compat\n"
        "compat.import_binding()\n"
        "compat.enable()\n"
        "import pyfuse3, pyfuse3.asyncio\n"
        "assert sys.meta_path[0].failed\n"
        "assert getattr(sys.modules['trio'], '__file__', None), 'not the real trio'\n"
        "assert pyfuse3.trio is pyfuse3.asyncio\n"
    )
    run_python(script)
