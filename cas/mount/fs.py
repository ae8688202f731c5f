"""The FUSE operations of a mount (pyfuse3's low-level API, on the asyncio loop).

Read-only: the kernel refuses writes (`ro`), and nothing here changes the
tree. Attributes are what `cas get` writes: modes without setuid/setgid,
stored mtimes (or the mount's start when the put left them out), symlinks
with their stored targets, owned by the mounting user. They never change,
so the kernel may cache entries and attributes for an hour. Any failure to
get verified data is EIO plus one log line naming the object and the path.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import itertools
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar, cast

import pyfuse3

from cas.errors import CasError
from cas.mount.nodes import Node, NodeTable
from cas.mount.reader import ChunkReader, OpenFile, ReadFailed
from cas.mount.trees import Listing, TreeSource
from cas.mount.walkahead import Step, WalkAhead
from cas.objects import FileEntry, Totals

CACHE_SECONDS: Final = 3600.0
"""Entries and attributes never change while mounted."""
BLOCK_SIZE: Final = 128 << 10
"""Preferred I/O size reported to readers: what the kernel asks for at a time."""
_MAX_LOGGED: Final = 10_000
log = logging.getLogger("cas.mount")
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def guarded(method: F) -> F:
    """Answer EIO for any failure but FUSEError: pyfuse3 ends the whole mount on the rest."""

    @functools.wraps(method)
    async def wrapper(self: CasOperations, *args: Any) -> Any:
        try:
            return await method(self, *args)
        except pyfuse3.FUSEError:
            raise
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this request itself is cancelled (unmounting)
            self.errors += 1  # a read it shared was cancelled: an answer, never a hang
            log.error("EIO: %s: a read it waited on was cancelled", method.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except CasError as exc:
            raise self._fail(f"{method.__name__}: {exc}") from None
        except Exception:
            self.errors += 1
            log.exception("EIO: unexpected failure in %s", method.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return cast(F, wrapper)


class CasOperations(pyfuse3.Operations):
    """One manifest (or one directory of it) as a read-only file system."""

    def __init__(
        self,
        nodes: NodeTable,
        trees: TreeSource,
        reader: ChunkReader,
        totals: Totals,
        *,
        on_open: Callable[[str], None] | None = None,
        walk: WalkAhead | None = None,
    ) -> None:
        super().__init__()
        self.nodes = nodes
        self.trees = trees
        self.reader = reader
        self.totals = totals
        self.on_open = on_open
        self.walk = walk
        self.uid = os.getuid()
        self.gid = os.getgid()
        self._handles: dict[int, OpenFile] = {}
        self._serial = itertools.count(1)
        self._logged: set[str] = set()
        self.errors = 0
        """Requests answered EIO."""

    # ------------------------------------------------------------ helpers

    def _fail(self, message: str) -> pyfuse3.FUSEError:
        """EIO, with one log line per distinct failure (the kernel retries reads)."""
        self.errors += 1
        if message not in self._logged:
            if len(self._logged) < _MAX_LOGGED:
                self._logged.add(message)
            log.error("EIO: %s", message)
        return pyfuse3.FUSEError(errno.EIO)

    def _node(self, ino: int) -> Node:
        node = self.nodes.get(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    async def _listing(self, node: Node) -> Listing:
        if node.kind != "dir" or node.tree is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        try:
            return await self.trees.listing(node.tree, self.nodes.path(node))
        except CasError as exc:
            raise self._fail(f"directory {self.nodes.path(node)}: {exc}") from None

    def attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        """What `stat` shows, as `cas get` would have written it."""
        attr = pyfuse3.EntryAttributes()
        kind = {"dir": stat.S_IFDIR, "file": stat.S_IFREG, "symlink": stat.S_IFLNK}[node.kind]
        attr.st_ino = node.ino
        attr.st_mode = kind | node.mode
        attr.st_nlink = 1
        attr.st_uid = self.uid
        attr.st_gid = self.gid
        attr.st_size = node.size
        attr.st_blksize = BLOCK_SIZE
        attr.st_blocks = (node.size + 511) // 512
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = node.mtime_ns
        attr.entry_timeout = attr.attr_timeout = CACHE_SECONDS
        return attr

    # ------------------------------------------------------------ names and attributes

    @guarded
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        if name == b".":
            found = parent
        elif name == b"..":
            found = self._node(parent.parent)
        else:
            entry = (await self._listing(parent)).find(os.fsdecode(name))
            if entry is None:  # cached by the kernel: test runners probe many absent names
                absent = pyfuse3.EntryAttributes()
                absent.st_ino = 0
                absent.entry_timeout = CACHE_SECONDS
                return absent
            found = self.nodes.child(parent, entry)
        self.nodes.hold(found)
        return self.attributes(found)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            self.nodes.release(ino, count)

    @guarded
    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        return self.attributes(self._node(inode))

    @guarded
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._node(inode)
        if node.target is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(node.target)

    @guarded
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_blocks = (self.totals.bytes + 4095) // 4096
        data.f_bfree = data.f_bavail = 0
        data.f_files = self.totals.files + self.totals.dirs + self.totals.symlinks + 1
        data.f_ffree = data.f_favail = 0
        data.f_namemax = 255
        return data

    # ------------------------------------------------------------ directories

    @guarded
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._node(inode)
        if node.kind != "dir":
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode  # a directory handle is its inode: the kernel holds it while open

    @guarded
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        parent = self._node(fh)
        listing = await self._listing(parent)
        # Positions 0 and 1 are "." and ".." (not counted as lookups), then the entries.
        for position in range(start_id, 2):
            dots = self.nodes.get(parent.parent) or parent if position else parent
            if not pyfuse3.readdir_reply(
                token, b"." * (position + 1), self.attributes(dots), position + 1
            ):
                return
        for index in range(max(0, start_id - 2), len(listing.entries)):
            node = self.nodes.child(parent, listing.entries[index])
            name = os.fsencode(node.name)
            if not pyfuse3.readdir_reply(token, name, self.attributes(node), index + 3):
                self.nodes.discard_unheld(node)
                break
            self.nodes.hold(node)

    # ------------------------------------------------------------ files

    @guarded
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if node.kind != "file" or node.holder is None:
            raise pyfuse3.FUSEError(errno.EISDIR if node.kind == "dir" else errno.EINVAL)
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise pyfuse3.FUSEError(errno.EROFS)
        path = self.nodes.path(node)
        try:
            listing = await self.trees.listing(node.holder, path.rpartition("/")[0] or ".")
        except CasError as exc:
            raise self._fail(f"{path}: {exc}") from None
        entry = listing.find(node.name)
        if not isinstance(entry, FileEntry):
            raise self._fail(f"{path}: no longer a file in its tree")
        if len(entry.chunks) == 1:  # a small file: its neighbours are likely next
            where = path.rpartition("/")[0]
            self.reader.read_siblings(node.holder, listing.entries, where, node.name)
        if self.walk is not None and entry.chunks:
            steps = self._steps(node, path)
            if steps:
                self.walk.opened(listing, steps, ctx.pid)
        fh = next(self._serial)
        self._handles[fh] = OpenFile(entry, path)
        if self.on_open is not None:
            self.on_open(path)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    def _steps(self, node: Node, path: str) -> list[Step]:
        """The directories from `node`'s up to the mount root, each with the entry leading down."""
        parts = path.split("/")
        steps = []
        for depth in range(len(parts) - 1, -1, -1):
            parent = self.nodes.get(node.parent)
            if parent is None or parent.tree is None:
                return []
            steps.append(Step(parent.tree, node.name, "/".join(parts[:depth]) or "."))
            node = parent
        return steps

    @guarded
    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self._handles.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        try:
            return await self.reader.read(handle, off, size)
        except ReadFailed as exc:
            raise self._fail(str(exc)) from None

    async def release(self, fh: int) -> None:
        self._handles.pop(fh, None)
