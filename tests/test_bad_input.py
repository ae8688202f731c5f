"""Bad input at the command line: one clear error line, the right exit code, nothing half-done.

Every case runs the real `cas` in a subprocess with a real local store. The
contract checked each time: stderr is exactly one line starting with
`cas: error:` that names what was wrong, the exit code is the one of the
`cas.errors` class for that problem, stdout is empty, and neither the store
nor the destination holds anything half-written (no manifest after a failed
put, no file at its final name and no `.cas-tmp-*` after a failed get).

Cases that need a read to fail or a file system to be full or read-only use
`setpriv` (to drop root's permission-override capabilities) and `unshare
--mount` (a private mount namespace with a tiny tmpfs or a read-only bind
mount); they are skipped with the reason when the machine does not allow it.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cas import codec
from cas.chunking import ChunkParams
from cas.errors import (
    DestinationError,
    IncompletePut,
    IntegrityError,
    ObjectNotFound,
    PermissionDenied,
    SourceError,
    StoreUnavailable,
    UsageError,
)
from cas.get.browse import lookup
from cas.ids import ObjectId
from cas.objects import FileEntry
from cas.packindex import PackIndex, encode_index
from cas.put.uploader import PutOptions, Uploader
from cas.repo import Repository
from cas.store.base import Kind
from cas.store.local import LocalStore
from tests.gcs_emulator import unavailable
from tests.helpers_hostile import leftovers, snapshot_tree

ROOT = Path(__file__).parent.parent
UNKNOWN_ID = "0123456789abcdef" * 4


# ---------------------------------------------------------------- running cas


def cas(
    tmp_path: Path,
    *args: str,
    prefix: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run the real command line; its data and cache dirs live under tmp_path/home."""
    home = tmp_path / "home"
    full_env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_CACHE_HOME": str(home / "cache"),
        "CAS_CACHE_DIR": str(home / "cache" / "cas"),
    }
    full_env.pop("CAS_STORE", None)
    full_env.pop("CI", None)
    full_env.update(env or {})
    return subprocess.run(
        [*prefix, sys.executable, "-m", "cas_cli.main", *args],
        env=full_env,
        capture_output=True,
        timeout=120,
    )


def one_error(proc: subprocess.CompletedProcess, error: type, *needles: str) -> str:
    """Exactly one `cas: error:` line naming `needles`, and the exit code of `error`."""
    stderr = proc.stderr.decode(errors="replace")
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got:\n{stderr}"
    line = lines[0]
    assert line.startswith("cas: error: "), line
    assert proc.returncode == error.exit_code, (
        f"exit {proc.returncode}, expected {error.exit_code} ({error.__name__}): {line}"
    )
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout.decode()


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


# ---------------------------------------------------------------- privileges


def _probe(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@functools.lru_cache(maxsize=1)
def unprivileged_prefix() -> tuple[str, ...] | None:
    """A command prefix under which permission bits are enforced (None: not possible here).

    Root ignores `chmod 000` through CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH;
    `setpriv` drops them from the bounding set, so the exec'd cas runs without.
    """
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        return None
    prefix = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search")
    with tempfile.TemporaryDirectory() as tmp:
        locked = Path(tmp) / "locked"
        locked.write_text("x")
        locked.chmod(0)
        if _probe([*prefix, "true"]) and not _probe([*prefix, "cat", str(locked)]):
            return prefix
    return None


@functools.lru_cache(maxsize=1)
def mount_namespace_prefix() -> tuple[str, ...] | None:
    """`unshare` arguments giving a private mount namespace where tmpfs can be mounted."""
    if shutil.which("unshare") is None:
        return None
    script = 'd=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs "$d" && umount "$d" && rmdir "$d"'
    for prefix in (("unshare", "--mount"), ("unshare", "--user", "--map-root-user", "--mount")):
        if _probe([*prefix, "sh", "-c", script]):
            return prefix
    return None


def need_unprivileged() -> tuple[str, ...]:
    prefix = unprivileged_prefix()
    if prefix is None:
        unavailable("privileges", "running as root and cannot drop CAP_DAC_OVERRIDE (setpriv)")
    return prefix


def need_mount_namespace() -> tuple[str, ...]:
    prefix = mount_namespace_prefix()
    if prefix is None:
        unavailable("mounts", "cannot make a private mount namespace for a tmpfs (unshare)")
    return prefix


LISTING = "@@listing@@"


def cas_with_mount(
    tmp_path: Path, mount_script: str, where: Path, *args: str
) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run cas in a private mount namespace after `mount_script` (with $M = `where`).

    Returns the process and the listing of `where` as cas left it, taken inside
    the namespace before the mount disappears.
    """
    script = (
        f"{mount_script} || exit 99\n"
        '"$@"; rc=$?\n'
        f"echo {LISTING}\n"
        "find \"$M\" -mindepth 1 -printf '%P\\n'\n"
        "exit $rc\n"
    )
    prefix = (*need_mount_namespace(), "env", f"M={where}", "sh", "-c", script, "sh")
    proc = cas(tmp_path, *args, prefix=prefix)
    assert proc.returncode != 99, f"mount failed: {proc.stderr.decode()}"
    out = proc.stdout.decode()
    assert LISTING in out, out
    head, _, listing = out.partition(LISTING + "\n")
    proc.stdout = head.encode()
    return proc, [line for line in listing.splitlines() if line]


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "big.bin").write_bytes(os.urandom(300_000))
    (root / "sub" / "c.bin").write_bytes(os.urandom(50_000))
    return root


def put_library(store_dir: Path, source: Path) -> str:
    """Store `source` with the library (16 KiB average chunks); return the manifest id."""

    async def run() -> str:
        store = LocalStore(store_dir, fsync=False)
        try:
            options = PutOptions(params=ChunkParams.from_avg(16 << 10))
            result = await Uploader(Repository(store), options).put(source)
            return str(result.manifest_id)
        finally:
            await store.aclose()

    return asyncio.run(run())


def chunks_of(store_dir: Path, manifest_id: str, path: str) -> list[ObjectId]:
    async def run() -> list[ObjectId]:
        store = LocalStore(store_dir, create=False)
        try:
            repo = Repository(store)
            manifest = await repo.get_manifest(ObjectId.parse(manifest_id))
            found = await lookup(repo, manifest, path)
            assert found is not None and isinstance(found.entry, FileEntry)
            return [c.id for c in found.entry.chunks]
        finally:
            await store.aclose()

    return asyncio.run(run())


def index_of(store_dir: Path, manifest_id: str) -> PackIndex:
    """The index a get of `manifest_id` reads."""

    async def run() -> PackIndex:
        store = LocalStore(store_dir, create=False)
        try:
            return await Repository(store).index(ObjectId.parse(manifest_id))
        finally:
            await store.aclose()

    return asyncio.run(run())


def corrupt_chunk(store_dir: Path, manifest_id: str, chunk_id: ObjectId) -> None:
    """Replace a chunk's frame inside its pack by a valid frame of other bytes (bit rot, or a
    poisoned store): same length, so every other frame of the pack stays where it was."""
    loc = index_of(store_dir, manifest_id).chunks[chunk_id]
    path = store_dir / "pack" / str(loc.pack)[:2] / str(loc.pack)
    data = bytearray(path.read_bytes())
    frame = bytes(data[loc.offset : loc.offset + loc.stored])
    assert len(codec.decode(frame, loc.raw, kind="chunk", object_id="-")) == loc.raw
    other = codec.encode(os.urandom(loc.raw))
    assert len(other) == loc.stored  # random content frames to the same length at one level
    data[loc.offset : loc.offset + loc.stored] = other
    path.chmod(0o644)
    path.write_bytes(bytes(data))


def unlist_chunk(store_dir: Path, manifest_id: str, chunk_id: ObjectId) -> None:
    """Make one chunk missing: replace the manifest's index by one that does not list it.

    (Deleting its pack would lose every object of this small put, not that chunk.)
    """

    async def run() -> None:
        store = LocalStore(store_dir, create=False)
        try:
            index = await Repository(store).index(ObjectId.parse(manifest_id))
            assert index.name is not None
            del index.chunks[chunk_id]
            name, blob = encode_index(index)
            await store.delete(Kind.INDEX, index.name)
            await store.put_if_absent(Kind.INDEX, name, blob)
        finally:
            await store.aclose()

    asyncio.run(run())


@pytest.fixture
def stored(tmp_path: Path, src: Path) -> tuple[Path, str]:
    store = tmp_path / "store"
    return store, put_library(store, src)


# ---------------------------------------------------------------- put: bad sources


def test_put_missing_directory(tmp_path):
    store = tmp_path / "store"
    proc = cas(tmp_path, "put", "--store", str(store), str(tmp_path / "nope"))
    one_error(proc, SourceError, "no such directory", str(tmp_path / "nope"))
    assert proc.stdout == b""
    assert not store.exists()  # bad input creates no store


def test_put_a_file_instead_of_a_directory(tmp_path):
    store = tmp_path / "store"
    (tmp_path / "file").write_text("x")
    proc = cas(tmp_path, "put", "--store", str(store), str(tmp_path / "file"))
    one_error(proc, SourceError, "not a directory", str(tmp_path / "file"))
    assert proc.stdout == b""
    assert files_under(store / "manifest") == []


def test_put_with_an_unreadable_file_stores_no_manifest_and_no_ref(tmp_path, src):
    prefix = need_unprivileged()
    locked = src / "sub" / "locked.bin"
    locked.write_bytes(os.urandom(10_000))
    locked.chmod(0)
    store = tmp_path / "store"
    proc = cas(tmp_path, "put", "--store", str(store), "--ref", "ci/x", str(src), prefix=prefix)
    one_error(proc, SourceError, "cannot read", str(locked), "ermission denied")
    assert proc.stdout == b""
    assert files_under(store / "manifest") == []
    assert files_under(store / "refs") == []
    assert files_under(store / "tmp") == []
    locked.chmod(0o644)  # the same put now succeeds
    manifest_id = ok(cas(tmp_path, "put", "-q", "--store", str(store), str(src))).strip()
    assert len(files_under(store / "manifest")) == 1
    assert manifest_id in str(files_under(store / "manifest")[0])


def test_put_with_an_unreadable_directory_stores_no_manifest(tmp_path, src):
    prefix = need_unprivileged()
    locked = src / "sub"
    locked.chmod(0)
    store = tmp_path / "store"
    try:
        proc = cas(tmp_path, "put", "--store", str(store), str(src), prefix=prefix)
    finally:
        locked.chmod(0o755)
    one_error(proc, SourceError, "cannot read directory", str(locked))
    assert files_under(store / "manifest") == []


def test_skip_unreadable_leaves_them_out_stores_the_rest_and_exits_12(tmp_path, src):
    prefix = need_unprivileged()
    locked_file = src / "locked.bin"
    locked_file.write_bytes(os.urandom(10_000))
    locked_file.chmod(0)
    (src / "closed").mkdir()
    (src / "closed" / "inside.txt").write_text("unseen\n")
    (src / "closed").chmod(0)
    store = tmp_path / "store"
    try:
        proc = cas(
            tmp_path, "put", "--skip-unreadable", "--store", str(store), str(src), prefix=prefix
        )
    finally:
        (src / "closed").chmod(0o755)
        locked_file.chmod(0o644)
    assert proc.returncode == IncompletePut.exit_code, proc.stderr
    manifest_id = proc.stdout.decode().strip()
    stderr = proc.stderr.decode()
    assert "left out locked.bin" in stderr and "left out closed/" in stderr
    assert stderr.splitlines()[-1].startswith("cas: error: 2 unreadable")
    listing = ok(cas(tmp_path, "ls", "--store", str(store), manifest_id))
    assert "a.txt" in listing and "sub/c.bin" in listing
    assert "locked.bin" not in listing and "closed" not in listing
    out = tmp_path / "out"
    ok(cas(tmp_path, "get", "-q", "--store", str(store), manifest_id, str(out)))
    assert (out / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
    assert not (out / "locked.bin").exists()


def test_put_into_a_read_only_store_names_the_store(tmp_path, src):
    prefix = need_unprivileged()
    store = tmp_path / "store"
    ok(cas(tmp_path, "put", "-q", "--store", str(store), str(tmp_path / "src" / "sub")))
    modes = {p: p.stat().st_mode for p in [store, *store.rglob("*")] if p.is_dir()}
    for path in modes:
        path.chmod(0o555)
    try:
        proc = cas(tmp_path, "put", "--store", str(store), str(src), prefix=prefix)
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
    one_error(proc, PermissionDenied, "permission denied on the store at", str(store))


def test_put_exclude_from_a_missing_file(tmp_path, src):
    store = tmp_path / "store"
    missing = tmp_path / "no-such-excludes"
    proc = cas(tmp_path, "put", "--store", str(store), "--exclude-from", str(missing), str(src))
    one_error(proc, UsageError, "exclude file", str(missing))
    assert not store.exists()


# ---------------------------------------------------------------- put: bad options


@pytest.mark.parametrize("level", ["0", "20", "-3", "100"])
def test_put_level_out_of_range(tmp_path, src, level):
    store = tmp_path / "store"
    proc = cas(tmp_path, "put", "--store", str(store), "--level", level, str(src))
    one_error(proc, UsageError, "--level")
    assert not store.exists(), "a rejected option must not create the store"


def test_put_level_not_a_number(tmp_path, src):
    """argparse's own type errors must follow the same one-line contract."""
    store = tmp_path / "store"
    proc = cas(tmp_path, "put", "--store", str(store), "--level", "abc", str(src))
    one_error(proc, UsageError, "--level", "abc")
    assert not store.exists()


@pytest.mark.parametrize(
    ("size", "needle"),
    [
        ("abc", "--chunk-size"),
        ("12X", "--chunk-size"),
        ("100", "64K..4M"),
        ("1k", "64K..4M"),
        ("1T", "64K..4M"),
    ],
)
def test_put_bad_chunk_size(tmp_path, src, size, needle):
    store = tmp_path / "store"
    proc = cas(tmp_path, "put", "--store", str(store), "--chunk-size", size, str(src))
    one_error(proc, UsageError, needle)
    assert not store.exists()


@pytest.mark.parametrize("label", ["novalue", "=value", "k" * 129 + "=v"])
def test_put_bad_label(tmp_path, src, label):
    store = tmp_path / "store"
    proc = cas(tmp_path, "put", "--store", str(store), "--label", label, str(src))
    one_error(proc, UsageError, "label", "key=value")
    assert not store.exists()


@pytest.mark.parametrize("ref", ["../up", "-x", ".hidden", "a//b", "sp ace"])
def test_put_bad_ref_name(tmp_path, src, ref):
    store = tmp_path / "store"
    proc = cas(tmp_path, "put", "--store", str(store), f"--ref={ref}", str(src))
    one_error(proc, UsageError, "invalid ref name")
    assert not store.exists()


# ---------------------------------------------------------------- stores


def test_store_that_is_a_non_empty_non_store_directory(tmp_path, src):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8 not a store")
    before = snapshot_tree(other)
    one_error(cas(tmp_path, "put", "--store", str(other), str(src)), UsageError, str(other))
    one_error(
        cas(tmp_path, "get", "--store", str(other), UNKNOWN_ID, str(tmp_path / "dest")),
        ObjectNotFound,
        str(other),
    )
    one_error(cas(tmp_path, "ls", "--store", str(other), UNKNOWN_ID), ObjectNotFound, str(other))
    assert snapshot_tree(other) == before
    assert not (tmp_path / "dest").exists()


def test_store_path_that_is_a_regular_file(tmp_path, src):
    """Not a transient failure: exit code 7 (StoreUnavailable) would tell scripts to retry."""
    store = tmp_path / "store-file"
    store.write_text("I am a file\n")
    proc = cas(tmp_path, "put", "--store", str(store), str(src))
    line = one_error(proc, UsageError, str(store))
    assert proc.returncode != StoreUnavailable.exit_code, line
    assert store.read_text() == "I am a file\n"


def test_missing_store_for_readers(tmp_path):
    store = tmp_path / "never-created"
    for args in (["get", UNKNOWN_ID, str(tmp_path / "dest")], ["ls", UNKNOWN_ID]):
        proc = cas(tmp_path, args[0], "--store", str(store), *args[1:])
        one_error(proc, ObjectNotFound, str(store))
    assert not store.exists()
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize("url", ["s3://bucket/prefix", "ftp://host/x", "nosuch://x"])
def test_unknown_store_url_scheme(tmp_path, src, url):
    scheme = url.split(":")[0]
    one_error(cas(tmp_path, "put", "--store", url, str(src)), UsageError, scheme)
    proc = cas(tmp_path, "get", "--store", url, UNKNOWN_ID, str(tmp_path / "dest"))
    one_error(proc, UsageError, scheme)
    assert not (tmp_path / "dest").exists()
    assert {p.name for p in tmp_path.iterdir()} <= {"home", "src"}, "nothing may be created"


# ---------------------------------------------------------------- get: bad names


@pytest.mark.parametrize(
    ("name", "error", "needle"),
    [
        ("xyz!", UsageError, "invalid ref name"),
        ("../../etc/passwd", UsageError, "invalid ref name"),
        ("", UsageError, "invalid ref name"),
        ("ab" * 31 + "a", ObjectNotFound, "ab" * 31 + "a"),  # 63 hex: looked up as a ref name
        ("AB" * 32, ObjectNotFound, "AB" * 32),  # upper case is not an id
        (UNKNOWN_ID, ObjectNotFound, UNKNOWN_ID),
        ("ci/no-such-ref", ObjectNotFound, "ci/no-such-ref"),
    ],
    ids=["bang", "dotdot", "empty", "63-hex", "upper-hex", "unknown-id", "unknown-ref"],
)
def test_get_bad_or_unknown_names(tmp_path, stored, name, error, needle):
    store, _ = stored
    before = snapshot_tree(store)
    dest = tmp_path / "dest"
    proc = cas(tmp_path, "get", "--store", str(store), name, str(dest))
    one_error(proc, error, needle)
    assert proc.stdout == b""
    assert not dest.exists(), "a get that cannot start must not create its destination"
    assert snapshot_tree(store) == before


def test_get_into_a_file(tmp_path, stored):
    store, manifest_id = stored
    dest = tmp_path / "dest"
    dest.write_text("keep me\n")
    proc = cas(tmp_path, "get", "--store", str(store), manifest_id, str(dest))
    one_error(proc, DestinationError, str(dest), "not a directory")
    assert dest.read_text() == "keep me\n"


def test_get_into_an_empty_destination_path(tmp_path, stored):
    store, manifest_id = stored
    proc = cas(tmp_path, "get", "--store", str(store), manifest_id, "")
    one_error(proc, UsageError, "destination")


def test_get_into_a_read_only_directory(tmp_path, stored):
    prefix = need_unprivileged()
    store, manifest_id = stored
    dest = tmp_path / "dest"
    dest.mkdir()
    dest.chmod(0o555)
    try:
        proc = cas(tmp_path, "get", "--store", str(store), manifest_id, str(dest), prefix=prefix)
    finally:
        dest.chmod(0o755)
    one_error(proc, DestinationError, "permission denied")
    assert list(dest.iterdir()) == []


def test_get_into_a_read_only_file_system(tmp_path, stored):
    store, manifest_id = stored
    dest = tmp_path / "dest"
    dest.mkdir()
    mount = 'mount --bind "$M" "$M" && mount -o remount,bind,ro "$M"'
    proc, listing = cas_with_mount(
        tmp_path, mount, dest, "get", "--store", str(store), manifest_id, str(dest)
    )
    one_error(proc, DestinationError, "read-only")
    assert listing == []
    assert list(dest.iterdir()) == []


def test_get_into_a_full_file_system(tmp_path, src):
    (src / "big.bin").write_bytes(os.urandom(2 << 20))
    store = tmp_path / "store"
    manifest_id = put_library(store, src)
    dest = tmp_path / "dest"
    dest.mkdir()
    mount = 'mount -t tmpfs -o size=512k tmpfs "$M"'
    proc, listing = cas_with_mount(
        tmp_path,
        mount,
        dest,
        "get",
        "--no-cache",
        "--store",
        str(store),
        manifest_id,
        str(dest),
    )
    one_error(proc, DestinationError, "full", "big.bin")
    assert "big.bin" not in listing, "a file that did not fit must not exist at its final name"
    assert [name for name in listing if ".cas-tmp-" in name] == []
    assert list(dest.iterdir()) == []  # the tmpfs is gone; nothing reached the real directory


# ---------------------------------------------------------------- get: failing midway


def _check_partial_get(dest: Path, src: Path, bad: str) -> None:
    assert not (dest / bad).exists(), f"{bad} exists at its final name after a failed get"
    assert leftovers(dest) == []
    for path in files_under(dest):  # whatever was written is complete and correct
        assert path.read_bytes() == (src / path.relative_to(dest)).read_bytes()


def test_get_failing_on_a_corrupt_chunk_leaves_no_partial_file(tmp_path, src, stored):
    store, manifest_id = stored
    bad_chunk = chunks_of(store, manifest_id, "big.bin")[-1]
    corrupt_chunk(store, manifest_id, bad_chunk)
    dest = tmp_path / "dest"
    proc = cas(tmp_path, "get", "--no-cache", "--store", str(store), manifest_id, str(dest))
    one_error(proc, IntegrityError, str(bad_chunk), "corrupt")
    _check_partial_get(dest, src, "big.bin")


def test_get_of_a_large_file_failing_midway_leaves_no_partial_file(tmp_path, src):
    """Over 8 MiB a file is written in segments: the failure comes after bytes hit the disk."""
    (src / "large.bin").write_bytes(os.urandom(10 << 20))
    store = tmp_path / "store"
    manifest_id = put_library(store, src)
    bad_chunk = chunks_of(store, manifest_id, "large.bin")[-1]
    corrupt_chunk(store, manifest_id, bad_chunk)
    dest = tmp_path / "dest"
    proc = cas(tmp_path, "get", "--no-cache", "--store", str(store), manifest_id, str(dest))
    one_error(proc, IntegrityError, str(bad_chunk))
    _check_partial_get(dest, src, "large.bin")


def test_get_failing_on_a_missing_chunk_names_it(tmp_path, src, stored):
    store, manifest_id = stored
    gone = chunks_of(store, manifest_id, "sub/c.bin")[0]
    unlist_chunk(store, manifest_id, gone)
    dest = tmp_path / "dest"
    proc = cas(tmp_path, "get", "--no-cache", "--store", str(store), manifest_id, str(dest))
    one_error(proc, ObjectNotFound, str(gone))
    _check_partial_get(dest, src, "sub/c.bin")


# ---------------------------------------------------------------- cat and ls


@pytest.mark.parametrize(
    ("command", "path", "error", "needle"),
    [
        ("cat", "sub", UsageError, "'sub' is not a file"),
        ("cat", "", UsageError, "not a file"),
        ("cat", "nope.txt", ObjectNotFound, "nope.txt"),
        ("cat", "sub/nope", ObjectNotFound, "sub/nope"),
        ("cat", "a.txt/x", ObjectNotFound, "a.txt"),
        ("cat", "../a.txt", UsageError, ".."),
        ("ls", "nope", ObjectNotFound, "nope"),
        ("ls", "sub/deeper/nope", ObjectNotFound, "sub/deeper"),
        ("ls", "../sub", UsageError, ".."),
    ],
)
def test_cat_and_ls_bad_paths(tmp_path, stored, command, path, error, needle):
    store, manifest_id = stored
    proc = cas(tmp_path, command, "--store", str(store), manifest_id, path)
    one_error(proc, error, needle)
    assert proc.stdout == b""
