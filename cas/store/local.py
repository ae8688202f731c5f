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
import functools
import os
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from cas.errors import (
    AlreadyExists,
    CasError,
    IntegrityError,
    ObjectName,
    ObjectNotFound,
)
from cas.ids import ObjectId, check_list_prefix, is_object_id
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
)
from cas.store.localerrors import translate_error
from cas.store.locallayout import open_layout
from cas.store.localrefs import LocalRefs, stat_mtime
from cas.store.localwrite import ExclusiveWriter, Staged
from cas.store.mounts import on_network_filesystem

T = TypeVar("T")


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
        self.files = ExclusiveWriter(self._tmp_str, fsync)
        self.refs = LocalRefs(self.root / "refs", self.files)
        # Few threads on purpose: each blocking call releases and retakes the GIL,
        # and more threads contending for it made many-small-object puts slower.
        self._io_threads = io_threads
        self._executor: ThreadPoolExecutor | None = None
        self.url = f"file://{self.root}"
        self.fsync = fsync
        self.created = open_layout(self.root, create)
        self.capabilities = Capabilities(
            max_concurrency=16,
            atomic_create=True,
            remote=on_network_filesystem(self._root_str),
        )

    def opener(self) -> Callable[[], Store]:
        """The same directory, opened with the same durability, in another process."""
        return functools.partial(LocalStore, self.root, create=False, fsync=self.fsync)

    # ------------------------------------------------------------ layout

    def path_of(self, kind: Kind, object_id: ObjectId) -> str:
        """Where an object lives (or would)."""
        hexid = bytes.hex(check_id(object_id))
        return f"{self._root_str}/{Kind(kind).value}/{hexid[:2]}/{hexid}"

    async def _run(self, func: Callable[[], T], what: str, name: ObjectName | None = None) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._io_threads, thread_name_prefix="cas-store")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, func)
        except CasError:
            raise  # already typed (ObjectNotFound is also an OSError)
        except OSError as exc:
            raise translate_error(exc, what, self.root, name) from None

    async def _run_on(self, func: Callable[[], T], kind: Kind, object_id: ObjectId) -> T:
        """`_run` on one object: a missing file is an `ObjectNotFound` naming it."""
        return await self._run(func, f"{kind} {object_id}", ObjectName(str(kind), str(object_id)))

    def _put_sync(self, kind: Kind, object_id: ObjectId, data: bytes) -> bool:
        final = self.path_of(kind, object_id)
        if os.path.exists(final):
            return False
        return self.files.write_exclusive(final, data)

    def begin_upload(self, kind: Kind, spool_dir: str | None = None) -> Upload:
        """Spool inside the store itself, so `finish` only links the file to its name."""
        return _LocalUpload(self, kind)

    # ------------------------------------------------------------ objects

    async def put_if_absent(self, kind: Kind, object_id: ObjectId, data: bytes) -> bool:
        """Create-only write via temp file + link."""
        return await self._run_on(lambda: self._put_sync(kind, object_id, data), kind, object_id)

    async def put_many(self, kind: Kind, items: Sequence[tuple[ObjectId, bytes]]) -> list[bool]:
        """All writes of a batch in one thread hop: local writes are cheap, hops are not."""
        for object_id, _ in items:
            check_id(object_id)
        finals = [(self.path_of(kind, object_id), data) for object_id, data in items]
        return await self._run(lambda: self.files.put_batch(finals), f"{kind} batch")

    def _open_object(self, kind: Kind, object_id: ObjectId) -> int:
        try:
            return os.open(self.path_of(kind, object_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ObjectNotFound(
                f"{kind} {object_id} not found", kind=kind, object_id=str(object_id)
            ) from None

    def _get_sync(self, kind: Kind, object_id: ObjectId, max_size: int) -> bytes:
        fd = self._open_object(kind, object_id)
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
        return await self._run_on(
            lambda: self._get_sync(kind, object_id, max_size), kind, object_id
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
        fd = self._open_object(kind, object_id)
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
        return await self._run_on(
            lambda: self._read_range_sync(kind, object_id, offset, length), kind, object_id
        )

    async def stat(self, kind: Kind, object_id: ObjectId) -> ObjectInfo:
        """Size and mtime from the file system."""
        path = self.path_of(kind, object_id)
        st = await self._run_on(lambda: os.stat(path), kind, object_id)
        return ObjectInfo(Kind(kind), object_id, st.st_size, stat_mtime(st))

    async def missing(self, kind: Kind, ids: object) -> set[ObjectId]:
        """One thread call for the whole batch: `exists` is cheap locally."""
        checked = [check_id(i) for i in ids]  # type: ignore[attr-defined]

        def work() -> set[ObjectId]:
            return {i for i in checked if not os.path.exists(self.path_of(kind, i))}

        return await self._run(work, f"{kind} batch")

    async def list(self, kind: Kind, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Walk the shard directories; temp files live elsewhere and never show."""
        base = self.root / Kind(kind).value
        check_list_prefix(prefix)

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
                                Kind(kind), ObjectId.parse(entry.name), st.st_size, stat_mtime(st)
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
        path = self.path_of(kind, object_id)

        def work() -> None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

        await self._run_on(work, kind, object_id)

    async def delete_many(self, kind: Kind, ids: Sequence[ObjectId]) -> None:
        """All unlinks of a batch in one thread hop."""
        paths = [self.path_of(kind, i) for i in ids]

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
        self.files.close()

    # ------------------------------------------------------------ refs

    async def create_ref(self, name: str, target: ObjectId) -> None:
        """Create-only, via the same temp file + link as objects."""
        check_id(target)
        if not await self._run(lambda: self.refs.create(name, target), f"ref {name}"):
            raise AlreadyExists(f"ref {name!r} already exists")

    async def read_ref(self, name: str) -> ObjectId:
        """Parse the ref file."""
        try:
            text = await self._run(lambda: self.refs.read(name), f"ref {name!r}")
        except ObjectNotFound:
            raise ObjectNotFound(f"ref {name!r} not found") from None
        if not is_object_id(text):
            raise IntegrityError("ref", name, "does not hold a valid id")
        return ObjectId.parse(text)

    async def list_refs(self, prefix: str = "") -> AsyncIterator[RefInfo]:
        """Walk `refs/`, in name order."""
        for info in await self._run(lambda: self.refs.list(prefix), "refs listing"):
            yield info

    async def delete_ref(self, name: str) -> None:
        """Unlink the ref file; absent is fine."""
        await self._run(lambda: self.refs.delete(name), f"ref {name}")


class _LocalUpload(Upload):
    """An unnamed file in the store's own tree (`O_TMPFILE`; else a temp name in `tmp/`)."""

    store: LocalStore

    def __init__(self, store: LocalStore, kind: Kind) -> None:
        self.store = store
        self.kind = kind
        self.size = 0
        self._tmp: str | None = None
        self._fd = -1
        if store.files.tmpfile_ok:
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
                raise translate_error(exc, f"a new {kind}", store.root) from None

    @property
    def fd(self) -> int:
        """The spooled file's descriptor."""
        return self._fd

    def write_error(self, exc: OSError) -> CasError:
        """A failed write, naming the store (full, read-only, ...)."""
        return translate_error(exc, f"writing a new {self.kind}", self.store.root)

    async def finish(self, object_id: ObjectId) -> bool:
        """Make the file durable and link it to its name; False if the name was taken."""
        check_id(object_id)
        fd, tmp = self._fd, self._tmp
        self._fd = -1  # publishing closes it (and removes a temp name)
        return await self.store._run_on(
            lambda: self.store.files.link_spooled(
                fd, tmp, self.store.path_of(self.kind, object_id)
            ),
            self.kind,
            object_id,
        )

    def abort(self) -> None:
        """Close and forget the file (an unnamed one vanishes with its descriptor)."""
        if self._fd >= 0:
            self.store.files.discard(Staged("", self._fd, self._tmp))
            self._fd = -1
