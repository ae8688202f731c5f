"""Open directory descriptors of a destination, reused across the files written into them.

Reaching a directory safely means opening every component from the root with
`O_NOFOLLOW | O_DIRECTORY`; done per file, that was most of a get's system
calls (about five opens and closes for a file four levels deep). Descriptors
are kept instead, least recently used closed first, and one is never closed
while a caller holds it. A descriptor names the directory it was opened on,
so a directory renamed or removed later must be forgotten (`forget`).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Final

DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
"""How every destination directory is opened: never through a symlink."""
DEFAULT_KEEP: Final = 256

Key = tuple[str, ...]


class DirectoryHandles:
    """`parts` -> an open descriptor of root/parts, with reference counts."""

    def __init__(
        self,
        root_fd: int,
        check: Callable[[Key], None],
        fail: Callable[[OSError, Key], Exception],
        keep: int = DEFAULT_KEEP,
    ) -> None:
        self._root_fd = root_fd
        self._check = check
        """Validates a component (by its path so far) before it is opened; raises if bad."""
        self._fail = fail
        """The error to raise when opening the directory at a path failed."""
        self._keep = keep
        self._lock = threading.Lock()
        self._open: OrderedDict[Key, int] = OrderedDict()
        self._users: dict[int, int] = {}
        self._orphans: set[int] = set()
        """Forgotten while held: closed when the last holder releases them."""

    def acquire(self, parts: Sequence[str]) -> int:
        """A descriptor of root/parts, held until `release`."""
        key = tuple(parts)
        with self._lock:
            depth = len(key)
            while depth and key[:depth] not in self._open:
                depth -= 1
            fd = self._hold(key[:depth]) if depth else self._root_fd
        try:
            for end in range(depth + 1, len(key) + 1):  # open the rest, one level at a time
                sub = key[:end]
                self._check(sub)
                try:
                    child = os.open(sub[-1], DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    raise self._fail(exc, sub) from None
                with self._lock:
                    if sub in self._open:  # another thread opened it meanwhile
                        os.close(child)
                    else:
                        self._open[sub] = child
                    held = self._hold(sub)
                self.release(fd)
                fd = held
                with self._lock:
                    self._trim()
        except BaseException:
            self.release(fd)
            raise
        return fd

    def _hold(self, key: Key) -> int:
        """Under the lock: one more holder of the cached descriptor of `key`."""
        fd = self._open[key]
        self._open.move_to_end(key)
        self._users[fd] = self._users.get(fd, 0) + 1
        return fd

    def release(self, fd: int) -> None:
        """Stop holding `fd`."""
        if fd == self._root_fd:
            return
        with self._lock:
            left = self._users[fd] - 1
            if left:
                self._users[fd] = left
                return
            del self._users[fd]
            if fd in self._orphans:
                self._orphans.discard(fd)
                os.close(fd)
            else:
                self._trim()

    def forget(self, parts: Sequence[str]) -> None:
        """root/parts and everything below it were renamed or removed."""
        prefix = tuple(parts)
        with self._lock:
            for key in [k for k in self._open if k[: len(prefix)] == prefix]:
                fd = self._open.pop(key)
                if fd in self._users:
                    self._orphans.add(fd)
                else:
                    os.close(fd)

    def close(self) -> None:
        """Close every descriptor no one holds (all of them, once writing is over)."""
        with self._lock:
            for fd in self._open.values():
                if fd not in self._users:
                    os.close(fd)
                else:
                    self._orphans.add(fd)
            self._open.clear()

    def _trim(self) -> None:
        if len(self._open) <= self._keep:
            return
        for key in list(self._open):
            if len(self._open) <= self._keep:
                break
            fd = self._open[key]
            if fd not in self._users:
                del self._open[key]
                os.close(fd)
