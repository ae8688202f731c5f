"""Durable, create-only files: how a local store writes objects and refs.

Data is written where no reader can see it (an unnamed `O_TMPFILE` in the
final directory on Linux, else a temp name in `tmp/`), flushed (one
`syncfs` per batch where the platform has it), and only then linked to its
name: a crash never names garbage, and a name is never overwritten.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class Staged:
    """An object written but not yet named: an open fd, and a temp path off Linux."""

    final: str
    fd: int
    tmp: str | None


def _syncfs(fd: int) -> bool:
    """`syncfs(2)` on the file system holding `fd`; False where unavailable."""
    libc = _libc()
    if libc is None:
        return False
    if libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return True


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syncfs.argtypes = [ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None


class ExclusiveWriter:
    """Create-only writes under one store directory (`tmp_dir` holds temp names)."""

    def __init__(self, tmp_dir: str, fsync: bool) -> None:
        self.tmp_dir = tmp_dir
        self.fsync = fsync
        self.tmpfile_ok = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")
        self._ready_dirs: set[str] = set()
        self._proc_fd_cache: int | None = None

    def ensure_parent(self, final: str) -> None:
        """The directory of `final` exists (made once per run)."""
        parent = os.path.dirname(final)
        if parent not in self._ready_dirs:
            os.makedirs(parent, exist_ok=True)
            self._ready_dirs.add(parent)

    def stage(self, final: str, data: bytes) -> Staged:
        """Write `data` where no reader can see it yet.

        Linux: an unnamed `O_TMPFILE` in the final directory, later linked
        into place with `linkat`: no temp name to create and unlink, which
        profiling showed to be a large share of a put's kernel time.
        Elsewhere: a named temp file in `tmp/`.
        """
        self.ensure_parent(final)
        parent = os.path.dirname(final)
        if self.tmpfile_ok:
            try:
                fd = os.open(parent, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o444)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                    raise
                self.tmpfile_ok = False
            else:
                staged = Staged(final, fd, None)
                self.fill(staged, data)
                return staged
        tmp = f"{self.tmp_dir}/{os.path.basename(final)}.{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
        staged = Staged(final, fd, tmp)
        self.fill(staged, data)
        return staged

    def fill(self, staged: Staged, data: bytes) -> None:
        """Write all of `data`; on failure the staged file is dropped."""
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(staged.fd, view) :]
        except BaseException:
            self.discard(staged)
            raise

    def make_durable(self, batch: list[Staged]) -> None:
        """Flush staged data before any of it gets a name (a crash never names garbage).

        One `syncfs` covers a whole batch where the platform has it; otherwise
        each file is `fsync`ed.
        """
        if not self.fsync or not batch:
            return
        if len(batch) > 1 and _syncfs(batch[0].fd):
            return
        for staged in batch:
            os.fsync(staged.fd)

    def publish(self, staged: Staged) -> bool:
        """Give a staged object its name; False if the name was taken."""
        try:
            if staged.tmp is None:
                # linkat(procfd, "N", ..., AT_SYMLINK_FOLLOW): plain link() would
                # try to hard-link the /proc symlink itself.
                os.link(
                    str(staged.fd), staged.final, src_dir_fd=self.proc_fd(), follow_symlinks=True
                )
            else:
                os.link(staged.tmp, staged.final)
        except FileExistsError:
            return False
        finally:
            self.discard(staged)
        return True

    def discard(self, staged: Staged) -> None:
        """Close a staged file and remove its temp name (an unnamed one just vanishes)."""
        if staged.fd >= 0:
            os.close(staged.fd)
            staged.fd = -1
        if staged.tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged.tmp)
            staged.tmp = None

    def write_exclusive(self, final: str, data: bytes) -> bool:
        """Create `final` holding `data`, never overwriting; False if it existed."""
        staged = self.stage(final, data)
        try:
            self.make_durable([staged])
        except BaseException:
            self.discard(staged)
            raise
        return self.publish(staged)

    def put_batch(self, items: Sequence[tuple[str, bytes]]) -> list[bool]:
        """Create each `(final path, data)` not there yet, with one flush for all."""
        created = [False] * len(items)
        staged: list[tuple[int, Staged]] = []
        try:
            for index, (final, data) in enumerate(items):
                if not os.path.exists(final):
                    staged.append((index, self.stage(final, data)))
            self.make_durable([s for _, s in staged])
            for index, item in staged:
                created[index] = self.publish(item)
        finally:
            for _, item in staged:
                self.discard(item)
        return created

    def proc_fd(self) -> int:
        """`/proc/PID/fd`, kept open: `linkat` names an `O_TMPFILE` through it."""
        if self._proc_fd_cache is None:
            self._proc_fd_cache = os.open(f"/proc/{os.getpid()}/fd", os.O_RDONLY | os.O_CLOEXEC)
        return self._proc_fd_cache

    def link_spooled(self, fd: int, tmp: str | None, final: str) -> bool:
        """Name a file spooled in the store (an upload); False if the name was taken."""
        self.ensure_parent(final)
        staged = Staged(final, fd, tmp)
        try:
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            self.discard(staged)
            raise
        return self.publish(staged)

    def close(self) -> None:
        """Release the `/proc` descriptor."""
        if self._proc_fd_cache is not None:
            os.close(self._proc_fd_cache)
            self._proc_fd_cache = None
