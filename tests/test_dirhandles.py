"""Directory descriptors a get keeps open: reused, bounded, and never through a symlink."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cas.errors import DestinationError
from cas.get.dirhandles import DirectoryHandles
from cas.get.fswrite import Destination


def handles(root: Path, keep: int = 256) -> tuple[DirectoryHandles, int]:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)

    def fail(exc: OSError, parts: tuple[str, ...]) -> Exception:
        return DestinationError(f"cannot open {'/'.join(parts)}: {exc.strerror}")

    return DirectoryHandles(fd, lambda parts: None, fail, keep=keep), fd


def test_the_same_directory_is_opened_once(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    dirs, _ = handles(tmp_path)
    first = dirs.acquire(("a", "b"))
    dirs.release(first)
    assert dirs.acquire(("a", "b")) == first
    assert os.path.samefile(f"/proc/self/fd/{first}", tmp_path / "a" / "b")


def test_a_symlink_in_the_path_is_never_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "link")
    dirs, _ = handles(root)
    with pytest.raises(DestinationError, match="link"):
        dirs.acquire(("link", "x"))


def test_at_most_keep_descriptors_stay_open_and_held_ones_survive(tmp_path):
    for i in range(10):
        (tmp_path / f"d{i}").mkdir()
    before = len(os.listdir("/proc/self/fd"))
    dirs, _ = handles(tmp_path, keep=3)
    held = dirs.acquire(("d0",))
    for i in range(1, 10):
        dirs.release(dirs.acquire((f"d{i}",)))
    assert len(os.listdir("/proc/self/fd")) - before <= 1 + 3  # the root, and at most 3
    assert os.path.samefile(f"/proc/self/fd/{held}", tmp_path / "d0")  # held: still open
    dirs.release(held)
    dirs.close()
    assert len(os.listdir("/proc/self/fd")) - before == 1  # only the root (the caller's)


def test_forgotten_directory_is_reopened_at_its_path(tmp_path):
    (tmp_path / "a").mkdir()
    dirs, _ = handles(tmp_path)
    old = dirs.acquire(("a",))
    os.rename(tmp_path / "a", tmp_path / "aside")
    (tmp_path / "a").mkdir()
    dirs.forget(("a",))
    assert os.path.samefile(f"/proc/self/fd/{old}", tmp_path / "aside")  # held: kept open
    new = dirs.acquire(("a",))
    assert os.path.samefile(f"/proc/self/fd/{new}", tmp_path / "a")
    dirs.release(old)
    dirs.release(new)


def test_file_replacing_a_directory_lands_at_the_final_path(tmp_path):
    dest = tmp_path / "dest"
    (dest / "x" / "sub").mkdir(parents=True)
    with Destination(dest) as out:
        first = out.open_file(("x", "sub"), "f")  # caches the descriptors of x and x/sub
        first.write(b"one")
        first.commit(0o644, None)
        replacing = out.open_file((), "x")  # a file where the directory x was
        replacing.write(b"file now")
        replacing.commit(0o644, None)
        out.make_dir((), "y")
        later = out.open_file(("y",), "g")
        later.write(b"two")
        later.commit(0o644, None)
        out.remove_asides()
    assert (dest / "x").read_bytes() == b"file now"
    assert (dest / "y" / "g").read_bytes() == b"two"
    assert sorted(os.listdir(dest)) == ["x", "y"]


def test_a_path_deeper_than_the_recursion_limit_opens(tmp_path):
    import sys

    depth = 300
    parts = tuple(["d"] * depth)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):  # relative to descriptors: no single path that long is needed
        os.mkdir("d", dir_fd=fd)
        inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(fd)
    dirs, _ = handles(tmp_path, keep=8)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(__import__("inspect").stack()) + 100)  # far less than the depth
    try:
        deepest = dirs.acquire(parts)
    finally:
        sys.setrecursionlimit(limit)
    assert os.readlink(f"/proc/self/fd/{deepest}").endswith("/d" * depth)
    dirs.release(deepest)
    dirs.close()
