"""The only code that writes into a `get` destination.

Rules that make a hostile manifest harmless:

1. Every path is walked component by component from a file descriptor of the
   destination root, each directory opened with `O_NOFOLLOW | O_DIRECTORY`
   relative to its parent. A symlink in the way (planted by the manifest or
   already in the destination) is never traversed.
2. Names were validated by `cas.objects` (no `..`, `/`, NUL, empty); this
   module checks again, because it is the last line.
3. File content goes to a fresh temporary name (`O_CREAT | O_EXCL |
   O_NOFOLLOW`), then mode and mtime are set on the descriptor and the file
   is renamed over its final name. A final path never holds a partial file.
4. Symlinks are created after all files are written, so nothing is ever
   written through one; directory modes and mtimes are set last, deepest
   first (a read-only directory would otherwise block its own children).
5. In-place updates never leave a half-written file: a directory in the way
   of a file or symlink is renamed aside (to a temporary name) just before
   the rename that replaces it, a file in the way of a directory likewise,
   and both are removed at the end (`remove_asides`). Files whose old bytes
   later writes will copy are first hard-linked to a temporary name in the
   root (`pin`), so replacing them does not take those bytes away.
6. A killed get's temporaries are removed by the next get at once: files
   being written are locked by their writer, and pins and asides carry the
   token of a get whose owner file in the root it keeps locked while it runs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import secrets
import shutil
import stat
import time
from collections.abc import Iterator, Sequence
from typing import Final

from cas.errors import CasError, DestinationError, UnsafeManifest
from cas.get.dirhandles import DIR_FLAGS, DirectoryHandles
from cas.objects import check_name

TEMP_PREFIX: Final = ".cas-tmp-"
WRITE_PREFIX: Final = TEMP_PREFIX + "w"
"""Files being written: each is held under an exclusive `flock` by its writer, so a later
get can tell a dead writer's file (lock free: removed at once) from a live one's."""
OWNER_PREFIX: Final = TEMP_PREFIX + "l"
"""One file per get in the destination root, `OWNER_PREFIX + token`, held under `flock`
while the get runs: its pins and the entries it set aside (`TEMP_PREFIX + token +
serial`) belong to a dead get once that lock is free. The next get removes a dead
get's owner file when it closes, after it has visited the directories it writes."""
_TOKEN_HEX: Final = 12
STALE_TEMP_SECONDS: Final = 3600
# setuid/setgid bits from a manifest are never applied.
_MODE_MASK: Final = 0o1777

Parts = Sequence[str]


def _describe(parts: Parts, name: str | None = None) -> str:
    path = "/".join([*parts, name] if name is not None else parts)
    return path or "."


def _fail(exc: OSError, action: str, where: str) -> DestinationError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DestinationError(f"destination is full: {action} {where}")
    if exc.errno == errno.EROFS:
        return DestinationError(f"destination is read-only: {action} {where}")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return DestinationError(f"permission denied: {action} {where}")
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return DestinationError(f"{where} exists in the destination and is not a directory")
    if exc.errno == errno.EISDIR:
        return DestinationError(f"{where} is a directory in the destination; cannot replace it")
    return DestinationError(f"{action} {where}: {exc.strerror or exc}")


class Destination:
    """A directory that `get` fills; safe against symlinks and partial writes."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.fspath(root)
        self._asides: list[tuple[tuple[str, ...], str]] = []
        self._pins: list[str] = []
        self._token = secrets.token_hex(_TOKEN_HEX // 2)
        self._serial = itertools.count()
        self._owner_fd = -1
        try:
            os.makedirs(self.root, exist_ok=True)
            self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self._claim()
            self._dead_owners = _dead_owners(self._root_fd)
            self.leftovers_removed = len(self._dead_owners)
            self.leftovers_removed += remove_stale_temporaries(self._root_fd, self._root_fd)
            self._handles = DirectoryHandles(
                self._root_fd,
                lambda parts: check_name(parts[-1], _describe(parts)),
                lambda exc, parts: _fail(exc, "opening", _describe(parts)),
            )
        except FileExistsError:
            raise DestinationError(
                f"destination {self.root} exists and is not a directory"
            ) from None
        except NotADirectoryError:
            raise DestinationError(f"destination {self.root} is not a directory") from None
        except OSError as exc:
            raise _fail(exc, "creating", self.root) from None

    def _claim(self) -> None:
        """Create and lock this get's owner file (see `OWNER_PREFIX`).

        Without it (a read-only root, say) the get still runs; only a later get
        would then leave its pins and asides for `STALE_TEMP_SECONDS`.
        """
        name = OWNER_PREFIX + self._token
        try:
            fd = os.open(
                name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=self._root_fd,
            )
        except OSError:
            return
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new: never contended
        self._owner_fd = fd

    def close(self) -> None:
        """Release the directory descriptors and this get's owner file."""
        self._handles.close()
        for name in self._dead_owners:  # their pins and asides are gone with this get's visit
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=self._root_fd)
        if self._owner_fd >= 0:
            with contextlib.suppress(OSError):
                os.unlink(OWNER_PREFIX + self._token, dir_fd=self._root_fd)
            os.close(self._owner_fd)
            self._owner_fd = -1
        os.close(self._root_fd)

    def __enter__(self) -> Destination:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def directory(self, parts: Parts) -> Iterator[int]:
        """A descriptor of the directory at `parts`, never through a symlink."""
        fd = self._handles.acquire(parts)
        try:
            yield fd
        finally:
            self._handles.release(fd)

    def _temp_name(self, prefix: str = TEMP_PREFIX) -> str:
        return f"{prefix}{self._token}{next(self._serial):x}"

    def make_dir(self, parts: Parts, name: str) -> None:
        """Create `parts/name`, owner-writable until `finish_dir`; an existing one is fine."""
        check_name(name, _describe(parts, name))
        with self.directory(parts) as fd:
            try:
                os.mkdir(name, 0o700, dir_fd=fd)
            except FileExistsError:
                try:
                    probe = os.open(name, DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    raise _fail(exc, "creating directory", _describe(parts, name)) from None
                try:
                    mode = os.fstat(probe).st_mode
                    if mode & 0o700 != 0o700:  # left read-only by an earlier get
                        os.fchmod(probe, (mode | 0o700) & 0o7777)
                    self.leftovers_removed += remove_stale_temporaries(probe, self._root_fd)
                finally:
                    os.close(probe)
            except OSError as exc:
                raise _fail(exc, "creating directory", _describe(parts, name)) from None

    def open_file(self, parts: Parts, name: str) -> PendingFile:
        """Start writing `parts/name`; nothing appears at that name until `commit`."""
        check_name(name, _describe(parts, name))
        parent = self._handles.acquire(parts)
        temp = self._temp_name(WRITE_PREFIX)
        try:
            fd = os.open(
                temp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=parent,
            )
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new: never contended
        except OSError as exc:
            self._handles.release(parent)
            raise _fail(exc, "creating", _describe(parts, name)) from None
        return PendingFile(self, tuple(parts), parent, fd, temp, name, _describe(parts, name))

    def release(self, dir_fd: int) -> None:
        """A pending file is done with its directory's descriptor."""
        self._handles.release(dir_fd)

    def rename_into_place(self, parts: Parts, dir_fd: int, temp: str, name: str) -> None:
        """Rename `temp` over `name`; a directory in the way is first renamed aside."""
        try:
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise
            self._set_aside(parts, dir_fd, name)
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)

    def _set_aside(self, parts: Parts, dir_fd: int, name: str) -> None:
        aside = self._temp_name()
        os.rename(name, aside, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        self._handles.forget((*parts, name))
        self._asides.append((tuple(parts), aside))

    def move_aside(self, parts: Parts, name: str) -> None:
        """Rename `parts/name` to a temporary name, removed by `remove_asides`."""
        check_name(name, _describe(parts, name))
        with self.directory(parts) as fd:
            try:
                self._set_aside(parts, fd, name)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise _fail(exc, "replacing", _describe(parts, name)) from None

    def remove_asides(self) -> None:
        """Delete whatever `move_aside` and replacing renames set aside."""
        for parts, aside in self._asides:
            with contextlib.suppress(CasError, OSError), self.directory(parts) as fd:
                _remove_entry(fd, aside)
        self._asides.clear()

    def pin(self, parts: Parts, name: str) -> str | None:
        """Hard-link `parts/name` to a temporary name in the root; its path, or None.

        The link keeps the old bytes readable after this get replaces or
        removes the file. None where links are impossible (another file
        system, no permission): reads from the old path are then verified
        and fall back to the store.
        """
        pin = self._temp_name()
        try:
            with self.directory(parts) as fd:
                os.link(name, pin, src_dir_fd=fd, dst_dir_fd=self._root_fd, follow_symlinks=False)
        except (CasError, OSError):
            return None
        self._pins.append(pin)
        return os.path.join(self.root, pin)

    def remove_pins(self) -> None:
        """Drop the links `pin` made."""
        for pin in self._pins:
            with contextlib.suppress(OSError):
                os.unlink(pin, dir_fd=self._root_fd)
        self._pins.clear()

    def remove(self, parts: Parts, name: str) -> None:
        """Delete `parts/name` (a directory with everything in it), never through a symlink."""
        check_name(name, _describe(parts, name))
        self._handles.forget((*parts, name))
        with self.directory(parts) as fd:
            try:
                _remove_entry(fd, name)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise _fail(exc, "removing", _describe(parts, name)) from None

    def set_metadata(self, parts: Parts, name: str, mode: int, mtime_ns: int | None) -> None:
        """Give an unchanged file the manifest's mode and mtime without rewriting it."""
        check_name(name, _describe(parts, name))
        where = _describe(parts, name)
        with self.directory(parts) as dir_fd:
            try:
                fd = os.open(
                    name,
                    os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                    dir_fd=dir_fd,
                )
            except OSError as exc:
                raise _fail(exc, "setting metadata of", where) from None
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise DestinationError(f"{where} changed while being updated")
                os.fchmod(fd, mode & _MODE_MASK)
                if mtime_ns is not None:
                    os.utime(fd, ns=(mtime_ns, mtime_ns))
            except OSError as exc:
                raise _fail(exc, "setting metadata of", where) from None
            finally:
                os.close(fd)

    def symlink(self, parts: Parts, name: str, target: str, mtime_ns: int | None) -> None:
        """Create or replace a symlink atomically; its target is stored, never followed."""
        check_name(name, _describe(parts, name))
        where = _describe(parts, name)
        with self.directory(parts) as fd:
            temp = self._temp_name()
            try:
                os.symlink(target, temp, dir_fd=fd)
                if mtime_ns is not None:
                    os.utime(temp, ns=(mtime_ns, mtime_ns), dir_fd=fd, follow_symlinks=False)
                self.rename_into_place(parts, fd, temp, name)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=fd)
                raise _fail(exc, "creating symlink", where) from None

    def finish_dir(self, parts: Parts, mode: int | None, mtime_ns: int | None) -> None:
        """Apply a directory's own mode and mtime, after everything inside it is written."""
        with self.directory(parts) as fd:
            try:
                if mode is not None:
                    os.chmod(fd, mode & _MODE_MASK)
                if mtime_ns is not None:
                    os.utime(fd, ns=(mtime_ns, mtime_ns))
            except OSError as exc:
                raise _fail(exc, "setting metadata of", _describe(parts)) from None


def remove_stale_temporaries(dir_fd: int, root_fd: int | None = None) -> int:
    """Delete temporaries an interrupted get left in this directory; return how many.

    A file being written (`WRITE_PREFIX`) is held under an exclusive lock by
    its writer: if the lock can be taken, its writer is gone and it goes at
    once. Pins and entries set aside carry their get's token: given the
    destination root (`root_fd`), they go at once when that get's owner file
    (`OWNER_PREFIX`) is unlocked. Without an owner file (its get predates
    them, or a later get removed it), a temporary goes when its ctime is over
    `STALE_TEMP_SECONDS` old: a younger one may belong to a running get
    (ctime, unlike mtime, cannot be set back by the writer). Owner files are
    left to `Destination.close`.
    """
    cutoff = time.time() - STALE_TEMP_SECONDS
    removed = 0
    try:
        names = [n for n in os.listdir(dir_fd) if n.startswith(TEMP_PREFIX)]
    except OSError:
        return 0
    owners: dict[str, bool] = {}
    for name in names:
        with contextlib.suppress(OSError):
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            dead = st.st_ctime < cutoff
            if name.startswith(OWNER_PREFIX):
                continue  # removed by `Destination.close` (`_dead_owners`)
            if not dead and name.startswith(WRITE_PREFIX) and stat.S_ISREG(st.st_mode):
                dead = _writer_gone(dir_fd, name)
            elif not dead and root_fd is not None:
                token = _owner_token(name)
                if token is not None:
                    if token not in owners:
                        owners[token] = _owner_gone(root_fd, token)
                    dead = owners[token]
            if dead:
                _remove_entry(dir_fd, name)
                removed += 1
    return removed


def _owner_token(name: str) -> str | None:
    """The token of the get that made a pin or aside, from its name (None: not one)."""
    token = name[len(TEMP_PREFIX) : len(TEMP_PREFIX) + _TOKEN_HEX]
    if len(token) == _TOKEN_HEX and all(c in "0123456789abcdef" for c in token):
        return token
    return None


def _owner_gone(root_fd: int, token: str) -> bool:
    """True when the get with this token has left its owner file unlocked (died)."""
    try:
        return _writer_gone(root_fd, OWNER_PREFIX + token)
    except OSError:
        return False  # no owner file: only the age rule can tell


def _dead_owners(root_fd: int) -> list[str]:
    """Owner files in the root whose gets are dead (their lock is free)."""
    try:
        names = [n for n in os.listdir(root_fd) if n.startswith(OWNER_PREFIX)]
    except OSError:
        return []
    dead = []
    for name in names:
        with contextlib.suppress(OSError):
            if _writer_gone(root_fd, name):
                dead.append(name)
    return dead


def _writer_gone(dir_fd: int, name: str) -> bool:
    """True when nobody holds the lock its writer took on `name`."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # also drops a lock just taken
    return True


def _remove_entry(dir_fd: int, name: str) -> None:
    """Unlink a file or symlink, or remove a directory tree (fd-relative, no symlink followed)."""
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        _make_tree_writable(dir_fd, name)
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def _make_tree_writable(dir_fd: int, name: str) -> None:
    """Owner-writable directories, so a read-only tree can be removed."""
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        return
    try:
        mode = os.fstat(fd).st_mode
        if mode & 0o700 != 0o700:
            os.fchmod(fd, (mode | 0o700) & 0o7777)
        for child in os.listdir(fd):
            with contextlib.suppress(OSError):
                if stat.S_ISDIR(os.stat(child, dir_fd=fd, follow_symlinks=False).st_mode):
                    _make_tree_writable(fd, child)
    finally:
        os.close(fd)


class PendingFile:
    """A file being written under a temporary name in its final directory."""

    def __init__(
        self,
        dest: Destination,
        parts: tuple[str, ...],
        dir_fd: int,
        fd: int,
        temp: str,
        name: str,
        where: str,
    ) -> None:
        self._dest = dest
        self._parts = parts
        self._dir_fd = dir_fd
        self._fd = fd
        self._temp = temp
        self._name = name
        self.final_stat: os.stat_result | None = None
        """The file's `lstat` right after it was renamed into place (None before)."""
        self.where = where
        self.written = 0
        """Bytes appended by `write` (not counted for `write_at`)."""

    def write(self, data: bytes | memoryview) -> None:
        """Append `data`."""
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
                self.written += n
        except OSError as exc:
            raise _fail(exc, "writing", self.where) from None

    def truncate(self, size: int) -> None:
        """Give the file its final size up front (for `write_at` from several threads)."""
        try:
            os.ftruncate(self._fd, size)
        except OSError as exc:
            raise _fail(exc, "writing", self.where) from None

    def write_at(self, pieces: Sequence[bytes], offset: int) -> None:
        """Write `pieces` one after another from `offset`; safe from several threads."""
        try:
            for piece in pieces:
                view = memoryview(piece)
                while view:
                    n = os.pwrite(self._fd, view, offset)
                    view = view[n:]
                    offset += n
        except OSError as exc:
            raise _fail(exc, "writing", self.where) from None

    def commit(self, mode: int, mtime_ns: int | None) -> None:
        """Set metadata, then rename into place: the file appears whole or not at all."""
        try:
            os.fchmod(self._fd, mode & _MODE_MASK)
            if mtime_ns is not None:
                os.utime(self._fd, ns=(mtime_ns, mtime_ns))
            os.close(self._fd)
            self._fd = -1
            self._dest.rename_into_place(self._parts, self._dir_fd, self._temp, self._name)
        except OSError as exc:
            self.abort()
            raise _fail(exc, "writing", self.where) from None
        with contextlib.suppress(OSError):  # what the files cache may remember of it
            self.final_stat = os.stat(self._name, dir_fd=self._dir_fd, follow_symlinks=False)
        self._dest.release(self._dir_fd)
        self._dir_fd = -1

    def abort(self) -> None:
        """Remove the temporary file; the final name is untouched."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._dir_fd >= 0:
            with contextlib.suppress(OSError):
                os.unlink(self._temp, dir_fd=self._dir_fd)
            self._dest.release(self._dir_fd)
            self._dir_fd = -1


__all__ = ["Destination", "PendingFile", "UnsafeManifest"]
