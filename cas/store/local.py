"""A store in a local directory: the embedded default that needs no setup.

Layout (docs/format.md has the details)::

    ROOT/cas-store.json          marker with the layout version (cas.local-store/2)
    ROOT/pack/ab/abcd…           one file per object, sharded by the first two hex digits
    ROOT/index/ab/…
    ROOT/manifest/ab/…
    ROOT/gc/ab/…
    ROOT/refs/ci/main/…          one file per ref, holding the target id
    ROOT/tmp/                    uploads in progress; never listed

Create-only writes go to a unique file in `tmp/`, are flushed to disk, and
are then hard-linked to their final name. `link` fails with EEXIST when the
name is taken, which gives O_EXCL semantics for the whole object: a reader
sees nothing or everything, and nobody overwrites anybody. Blocking file
calls run in the default thread pool so the event loop keeps other requests
moving. Range reads (`get_range`) are one `pread` on a file opened for
that read alone.

A format 1 store (`cas.local-store/1`, one file per chunk and tree) is
refused with one line: this version reads and writes format 2 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TypeVar

from cas.errors import (
    AlreadyExists,
    CasError,
    IntegrityError,
    ObjectNotFound,
    PermissionDenied,
    StoreUnavailable,
    UsageError,
)
from cas.ids import ObjectId, is_object_id
from cas.store.base import (
    Capabilities,
    Kind,
    ObjectInfo,
    RefInfo,
    Store,
    Upload,
    check_id,
    check_range,
    range_past_end,
    validate_ref_name,
)
from cas.store.mounts import on_network_filesystem

LAYOUT: Final = "cas.local-store/2"
FORMAT_1_LAYOUT: Final = "cas.local-store/1"
MARKER: Final = "cas-store.json"
_STALE_TMP_SECONDS: Final = 24 * 3600
_SKELETON: Final = frozenset([*(kind.value for kind in Kind), "refs", "tmp"])
"""The directories `_open` makes for a new store before it writes the marker."""

T = TypeVar("T")


def _translate_error(exc: OSError, what: str, root: Path | None = None) -> CasError:
    """Map an OS error on the store onto `cas.errors`, naming the store and what was attempted."""
    if isinstance(exc, FileNotFoundError):
        return ObjectNotFound.named(what, f"{what} not found")
    where = f"the store at {root}" if root is not None else "the store"
    if isinstance(exc, PermissionError):
        path = f" ({exc.filename})" if exc.filename else ""
        return PermissionDenied(f"permission denied on {where}: {what}{path}")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreUnavailable(f"{where} is full: {what}")
    if exc.errno == errno.EROFS:
        return PermissionDenied(f"{where} is on a read-only file system: {what}")
    if exc.errno == errno.ENAMETOOLONG:
        # A valid ref name may hold a segment longer than a file name may be
        # here: no such ref can exist, and retrying cannot help.
        return UsageError(f"{what}: a name in it is too long for the file system of {where}")
    return StoreUnavailable(f"{what} in {where}: {exc.strerror or exc}")


@dataclass
class _Staged:
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


def _mtime(st: os.stat_result) -> datetime:
    return datetime.fromtimestamp(st.st_mtime_ns / 1e9, tz=UTC)


def _unfinished_skeleton(root: Path) -> bool:
    """Whether `root` holds nothing but what creating a store makes before its marker.

    A process killed while it created the store leaves empty namespace
    directories (and maybe its marker's temp file) without the marker; the
    next one finishes the job instead of refusing the directory as foreign.
    """
    for entry in root.iterdir():
        if entry.name not in _SKELETON or not entry.is_dir() or entry.is_symlink():
            return False
        allowed = "marker." if entry.name == "tmp" else None
        if any(allowed is None or not p.name.startswith(allowed) for p in entry.iterdir()):
            return False
    return True


def _check_layout(root: Path, info: object) -> None:
    """Accept only this layout; name a format 1 store as such, in one line."""
    layout = info.get("layout") if isinstance(info, dict) else None
    if layout == LAYOUT:
        return
    if layout == FORMAT_1_LAYOUT:
        raise UsageError(
            f"{root} is a format 1 store ({FORMAT_1_LAYOUT}); this cas reads and writes "
            "format 2 only: put into a new store"
        )
    raise UsageError(f"{root}: unsupported store layout {layout!r} (this cas reads {LAYOUT})")


class LocalStore(Store):
    """A `Store` in a directory on a local or network file system."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        create: bool = True,
        fsync: bool = True,
        io_threads: int = 2,
    ) -> None:
        self.root = Path(root).absolute()
        self._root_str = str(self.root)
        self.local_root = self._root_str
        self._tmp_str = f"{self._root_str}/tmp"
        self._ready_dirs: set[str] = set()
        self._tmpfile_ok = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")
        self._proc_fd_cache: int | None = None
        # Few threads on purpose: each blocking call releases and retakes the GIL,
        # and more threads contending for it made many-small-object puts slower.
        self._io_threads = io_threads
        self._executor: ThreadPoolExecutor | None = None
        self.url = f"file://{self.root}"
        self.fsync = fsync
        self._open(create)
        self.capabilities = Capabilities(
            max_concurrency=16,
            atomic_create=True,
            remote=on_network_filesystem(self._root_str),
        )

    def opener(self) -> Callable[[], Store]:
        """The same directory, opened with the same durability, in another process."""
        return functools.partial(LocalStore, self.root, create=False, fsync=self.fsync)

    # ------------------------------------------------------------ layout

    def _open(self, create: bool) -> None:
        marker = self.root / MARKER
        if self.root.exists() and not self.root.is_dir():
            raise UsageError(f"store path {self.root} exists and is not a directory")
        try:
            if marker.exists():
                _check_layout(self.root, json.loads(marker.read_text()))
            elif not create:
                raise ObjectNotFound(f"no cas store at {self.root}")
            else:
                self.root.mkdir(parents=True, exist_ok=True)
                if not _unfinished_skeleton(self.root):
                    raise UsageError(
                        f"{self.root} is not empty and not a cas store; refusing to write into it"
                    )
                for kind in Kind:
                    (self.root / kind.value).mkdir(exist_ok=True)
                (self.root / "refs").mkdir(exist_ok=True)
                (self.root / "tmp").mkdir(exist_ok=True)
                tmp = self.root / "tmp" / f"marker.{secrets.token_hex(8)}"
                tmp.write_text(json.dumps({"layout": LAYOUT}) + "\n")
                try:
                    os.link(tmp, marker)
                    self.created = True
                except FileExistsError:
                    pass  # another process initialised it at the same moment
                finally:
                    tmp.unlink()
        except (ValueError, RecursionError):  # not UTF-8, not JSON, nested too deeply
            raise UsageError(f"{marker} is not valid JSON") from None
        except OSError as exc:
            raise _translate_error(exc, f"store {self.root}") from None
        self._remove_stale_temporaries()

    def _remove_stale_temporaries(self) -> None:
        """Temp files of writers killed long ago: never visible, only clutter."""
        cutoff = time.time() - _STALE_TMP_SECONDS
        try:
            with os.scandir(self.root / "tmp") as it:
                for entry in it:
                    try:
                        if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                            os.unlink(entry.path)
                    except OSError:
                        pass
        except OSError:
            pass

    def _path(self, kind: Kind, object_id: ObjectId) -> str:
        hexid = bytes.hex(check_id(object_id))
        return f"{self._root_str}/{Kind(kind).value}/{hexid[:2]}/{hexid}"

    def _ref_path(self, name: str) -> Path:
        return self.root / "refs" / validate_ref_name(name)

    async def _run(self, func: Callable[[], T], what: str) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._io_threads, thread_name_prefix="cas-store")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, func)
        except CasError:
            raise  # already typed (ObjectNotFound is also an OSError)
        except OSError as exc:
            raise _translate_error(exc, what, self.root) from None

    def _stage(self, final: str, data: bytes) -> _Staged:
        """Write `data` where no reader can see it yet.

        Linux: an unnamed `O_TMPFILE` in the final directory, later linked
        into place with `linkat`: no temp name to create and unlink, which
        profiling showed to be a large share of a put's kernel time.
        Elsewhere: a named temp file in `tmp/`.
        """
        parent = os.path.dirname(final)
        if parent not in self._ready_dirs:
            os.makedirs(parent, exist_ok=True)
            self._ready_dirs.add(parent)
        if self._tmpfile_ok:
            try:
                fd = os.open(parent, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o444)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                    raise
                self._tmpfile_ok = False
            else:
                staged = _Staged(final, fd, None)
                self._fill(staged, data)
                return staged
        tmp = f"{self._tmp_str}/{os.path.basename(final)}.{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
        staged = _Staged(final, fd, tmp)
        self._fill(staged, data)
        return staged

    def _fill(self, staged: _Staged, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(staged.fd, view) :]
        except BaseException:
            self._discard(staged)
            raise

    def _make_durable(self, batch: list[_Staged]) -> None:
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

    def _publish(self, staged: _Staged) -> bool:
        """Give a staged object its name; False if the name was taken."""
        try:
            if staged.tmp is None:
                # linkat(procfd, "N", ..., AT_SYMLINK_FOLLOW): plain link() would
                # try to hard-link the /proc symlink itself.
                os.link(
                    str(staged.fd), staged.final, src_dir_fd=self._proc_fd(), follow_symlinks=True
                )
            else:
                os.link(staged.tmp, staged.final)
        except FileExistsError:
            return False
        finally:
            self._discard(staged)
        return True

    def _discard(self, staged: _Staged) -> None:
        if staged.fd >= 0:
            os.close(staged.fd)
            staged.fd = -1
        if staged.tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged.tmp)
            staged.tmp = None

    def _write_exclusive(self, final: str, data: bytes) -> bool:
        """Create `final` holding `data`, never overwriting; False if it existed."""
        staged = self._stage(final, data)
        try:
            self._make_durable([staged])
        except BaseException:
            self._discard(staged)
            raise
        return self._publish(staged)

    def _put_batch(self, kind: Kind, items: Sequence[tuple[ObjectId, bytes]]) -> list[bool]:
        created = [False] * len(items)
        staged: list[tuple[int, _Staged]] = []
        try:
            for index, (object_id, data) in enumerate(items):
                final = self._path(kind, object_id)
                if not os.path.exists(final):
                    staged.append((index, self._stage(final, data)))
            self._make_durable([s for _, s in staged])
            for index, item in staged:
                created[index] = self._publish(item)
        finally:
            for _, item in staged:
                self._discard(item)
        return created

    def _proc_fd(self) -> int:
        if self._proc_fd_cache is None:
            self._proc_fd_cache = os.open(f"/proc/{os.getpid()}/fd", os.O_RDONLY | os.O_CLOEXEC)
        return self._proc_fd_cache

    def _put_sync(self, kind: Kind, object_id: ObjectId, data: bytes) -> bool:
        final = self._path(kind, object_id)
        if os.path.exists(final):
            return False
        return self._write_exclusive(final, data)

    def begin_upload(self, kind: Kind, spool_dir: str | None = None) -> Upload:
        """Spool inside the store itself, so `finish` only links the file to its name."""
        return _LocalUpload(self, kind)

    def _link_spooled(self, fd: int, tmp: str | None, kind: Kind, object_id: ObjectId) -> bool:
        final = self._path(kind, object_id)
        parent = os.path.dirname(final)
        if parent not in self._ready_dirs:
            os.makedirs(parent, exist_ok=True)
            self._ready_dirs.add(parent)
        staged = _Staged(final, fd, tmp)
        try:
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            self._discard(staged)
            raise
        return self._publish(staged)

    # ------------------------------------------------------------ objects

    async def put_if_absent(self, kind: Kind, object_id: ObjectId, data: bytes) -> bool:
        """Create-only write via temp file + link."""
        return await self._run(lambda: self._put_sync(kind, object_id, data), f"{kind} {object_id}")

    async def put_many(self, kind: Kind, items: Sequence[tuple[ObjectId, bytes]]) -> list[bool]:
        """All writes of a batch in one thread hop: local writes are cheap, hops are not."""
        for object_id, _ in items:
            check_id(object_id)
        return await self._run(lambda: self._put_batch(kind, items), f"{kind} batch")

    def _get_sync(self, kind: Kind, object_id: ObjectId, max_size: int) -> bytes:
        try:
            fd = os.open(self._path(kind, object_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ObjectNotFound(
                f"{kind} {object_id} not found", kind=kind, object_id=str(object_id)
            ) from None
        with os.fdopen(fd, "rb", buffering=0) as f:
            size = os.fstat(fd).st_size
            if size > max_size:
                raise IntegrityError(
                    str(kind), str(object_id), f"stored size {size} exceeds {max_size}"
                )
            return f.readall()

    async def get(self, kind: Kind, object_id: ObjectId, *, max_size: int) -> bytes:
        """Read one object whole, refusing files larger than `max_size`."""
        check_id(object_id)
        return await self._run(
            lambda: self._get_sync(kind, object_id, max_size), f"{kind} {object_id}"
        )

    async def get_many(
        self, kind: Kind, ids: Sequence[ObjectId], *, max_size: int
    ) -> dict[ObjectId, bytes]:
        """All reads of a batch in one thread hop."""
        for object_id in ids:
            check_id(object_id)
        return await self._run(
            lambda: {i: self._get_sync(kind, i, max_size) for i in ids}, f"{kind} batch"
        )

    def _read_range_sync(self, kind: Kind, object_id: ObjectId, offset: int, length: int) -> bytes:
        try:
            fd = os.open(self._path(kind, object_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ObjectNotFound(
                f"{kind} {object_id} not found", kind=kind, object_id=str(object_id)
            ) from None
        try:
            size = os.fstat(fd).st_size
            if offset + length > size:  # checked first: never allocate for a hostile length
                raise range_past_end(kind, object_id, offset, length, size)
            data = os.pread(fd, length, offset)
            while len(data) < length:  # only if the file shrank under us, or a huge read
                more = os.pread(fd, length - len(data), offset + len(data))
                if not more:
                    raise range_past_end(kind, object_id, offset, length, offset + len(data))
                data += more
            return data
        finally:
            os.close(fd)

    async def get_range(self, kind: Kind, object_id: ObjectId, offset: int, length: int) -> bytes:
        """One open, pread and close in the I/O threads."""
        check_id(object_id)
        check_range(offset, length)
        return await self._run(
            lambda: self._read_range_sync(kind, object_id, offset, length), f"{kind} {object_id}"
        )

    async def stat(self, kind: Kind, object_id: ObjectId) -> ObjectInfo:
        """Size and mtime from the file system."""
        path = self._path(kind, object_id)
        st = await self._run(lambda: os.stat(path), f"{kind} {object_id}")
        return ObjectInfo(Kind(kind), object_id, st.st_size, _mtime(st))

    async def missing(self, kind: Kind, ids: object) -> set[ObjectId]:
        """One thread call for the whole batch: `exists` is cheap locally."""
        checked = [check_id(i) for i in ids]  # type: ignore[attr-defined]

        def work() -> set[ObjectId]:
            return {i for i in checked if not os.path.exists(self._path(kind, i))}

        return await self._run(work, f"{kind} batch")

    async def list(self, kind: Kind, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Walk the shard directories; temp files live elsewhere and never show."""
        base = self.root / Kind(kind).value
        if prefix and not all(c in "0123456789abcdef" for c in prefix):
            raise UsageError(f"list prefix must be lower-case hex: {prefix!r}")

        def shards() -> list[str]:
            try:
                with os.scandir(base) as it:
                    return sorted(
                        e.name for e in it if len(e.name) == 2 and e.name.startswith(prefix[:2])
                    )
            except FileNotFoundError:  # a namespace added after the store was created
                return []

        def scan(shard: str) -> list[ObjectInfo]:
            out = []
            try:
                with os.scandir(base / shard) as it:
                    for entry in it:
                        if not is_object_id(entry.name) or not entry.name.startswith(prefix):
                            continue
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        out.append(
                            ObjectInfo(
                                Kind(kind), ObjectId.parse(entry.name), st.st_size, _mtime(st)
                            )
                        )
            except FileNotFoundError:
                pass
            return out

        for shard in await self._run(shards, f"{kind} listing"):
            for info in await self._run(functools.partial(scan, shard), f"{kind} listing"):
                yield info

    async def delete(self, kind: Kind, object_id: ObjectId) -> None:
        """Unlink; absent is fine."""
        path = self._path(kind, object_id)

        def work() -> None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

        await self._run(work, f"{kind} {object_id}")

    async def delete_many(self, kind: Kind, ids: Sequence[ObjectId]) -> None:
        """All unlinks of a batch in one thread hop."""
        paths = [self._path(kind, i) for i in ids]

        def work() -> None:
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

        await self._run(work, f"{kind} batch delete")

    async def aclose(self) -> None:
        """Stop the I/O threads."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._proc_fd_cache is not None:
            os.close(self._proc_fd_cache)
            self._proc_fd_cache = None

    # ------------------------------------------------------------ refs

    async def create_ref(self, name: str, target: ObjectId) -> None:
        """Create-only, via the same temp file + link as objects."""
        path = self._ref_path(name)
        check_id(target)

        def work() -> bool:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise UsageError(f"ref {name!r} conflicts with an existing ref prefix") from None
            if path.is_dir():
                raise UsageError(f"ref {name!r} is a prefix of existing refs")
            return self._write_exclusive(str(path), (str(target) + "\n").encode())

        if not await self._run(work, f"ref {name}"):
            raise AlreadyExists(f"ref {name!r} already exists")

    async def read_ref(self, name: str) -> ObjectId:
        """Parse the ref file."""
        path = self._ref_path(name)

        def work() -> str:
            if path.is_dir():
                raise ObjectNotFound(f"ref {name!r} not found")
            try:
                return path.read_text().strip()
            except NotADirectoryError:  # a shorter ref is a file where a directory would be
                raise ObjectNotFound(f"ref {name!r} not found") from None

        try:
            text = await self._run(work, f"ref {name!r}")
        except ObjectNotFound:
            raise ObjectNotFound(f"ref {name!r} not found") from None
        if not is_object_id(text):
            raise IntegrityError("ref", name, "does not hold a valid id")
        return ObjectId.parse(text)

    async def list_refs(self, prefix: str = "") -> AsyncIterator[RefInfo]:
        """Walk `refs/`, in name order."""
        base = self.root / "refs"

        def work() -> list[RefInfo]:
            out = []
            for dirpath, dirnames, filenames in os.walk(base):
                dirnames.sort()
                for filename in sorted(filenames):
                    full = Path(dirpath) / filename
                    name = full.relative_to(base).as_posix()
                    if not name.startswith(prefix):
                        continue
                    try:
                        text = full.read_text().strip()
                        st = full.stat()
                    except FileNotFoundError:
                        continue
                    if is_object_id(text):
                        out.append(RefInfo(name, ObjectId.parse(text), _mtime(st)))
            return sorted(out, key=lambda r: r.name)

        for info in await self._run(work, "refs listing"):
            yield info

    async def delete_ref(self, name: str) -> None:
        """Unlink the ref file; absent is fine."""
        path = self._ref_path(name)

        def work() -> None:
            # Not a directory: a shorter ref is a file on the way; is a directory:
            # only longer refs exist under this name. Either way this ref is absent.
            with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
                os.unlink(path)

        await self._run(work, f"ref {name}")


class _LocalUpload(Upload):
    """An unnamed file in the store's own tree (`O_TMPFILE`; else a temp name in `tmp/`)."""

    def __init__(self, store: LocalStore, kind: Kind) -> None:
        self.store = store
        self.kind = kind
        self.size = 0
        self._local = store
        self._tmp: str | None = None
        self._fd = -1
        if store._tmpfile_ok:
            try:
                self._fd = os.open(store._tmp_str, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o444)
            except OSError:
                self._fd = -1
        if self._fd < 0:
            self._tmp = f"{store._tmp_str}/upload.{secrets.token_hex(8)}"
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            try:
                self._fd = os.open(self._tmp, flags, 0o444)
            except OSError as exc:
                raise _translate_error(exc, f"a new {kind}", store.root) from None

    @property
    def fd(self) -> int:
        """The spooled file's descriptor."""
        return self._fd

    def write_error(self, exc: OSError) -> CasError:
        """A failed write, naming the store (full, read-only, ...)."""
        return _translate_error(exc, f"writing a new {self.kind}", self._local.root)

    async def finish(self, object_id: ObjectId) -> bool:
        """Make the file durable and link it to its name; False if the name was taken."""
        check_id(object_id)
        fd, tmp = self._fd, self._tmp
        self._fd = -1  # _publish closes it (and removes a temp name)
        return await self._local._run(
            lambda: self._local._link_spooled(fd, tmp, self.kind, object_id),
            f"{self.kind} {object_id}",
        )

    def abort(self) -> None:
        """Close and forget the file (an unnamed one vanishes with its descriptor)."""
        if self._fd >= 0:
            self._local._discard(_Staged("", self._fd, self._tmp))
            self._fd = -1
