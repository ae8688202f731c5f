"""The one store interface every backend implements.

Guarantees every backend must give (the conformance suite checks each):

1. **No overwrite.** `put_if_absent` and `create_ref` never replace an
   existing object or ref; concurrent creators of one name see exactly one
   success. Refs are the only mutable names and are still create-only.
2. **Atomic visibility.** An object is either absent or whole: readers and
   `list` never see a partial upload or a temporary file.
3. **Read-after-write.** Once `put_if_absent` returns, `get`, `stat`,
   `missing` and `list` see the object from any client.
4. **Times do not go backwards.** `ObjectInfo.mtime` is when the object was
   created (or last refreshed with `touch`), which garbage collection's grace
   period relies on.

Backends only move bytes under names. They never hash, compress or verify
content: the `Repository` above them does, for every backend alike. Ids,
ref names and byte ranges are validated before any I/O.

Store format 2 has four namespaces (`Kind`): packs, pack indexes,
manifests and gc records. Chunks and trees live inside packs and are read
with `get_range`, one frame at a time.
"""

from __future__ import annotations

import asyncio
import builtins
import errno
import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final

from cas.errors import CasError, IntegrityError, StoreUnavailable, UsageError
from cas.ids import ObjectId


class Kind(StrEnum):
    """The store namespaces of format 2; backends treat every one alike.

    Chunks and trees never reach a store on their own: they live inside
    packs (`cas.pack.ObjectKind` names them there).
    """

    PACK = "pack"
    """Packs of chunk and tree frames (cas/pack.py), read by byte range."""
    INDEX = "index"
    """Per-manifest pack indexes (cas/packindex.py)."""
    MANIFEST = "manifest"
    GC = "gc"
    """Records of garbage-collection runs (docs/gc.md): start, heartbeat, done."""


@dataclass(frozen=True)
class ObjectInfo:
    """What `stat` and `list` report about one stored object."""

    kind: Kind
    id: ObjectId
    size: int
    mtime: datetime


@dataclass(frozen=True)
class RefInfo:
    """A named pointer to a manifest."""

    name: str
    target: ObjectId
    mtime: datetime


@dataclass(frozen=True)
class Capabilities:
    """What a backend is good at, so callers can size their concurrency."""

    max_concurrency: int = 8
    atomic_create: bool = True
    native_missing: bool = False
    remote: bool = True
    """Reads cross a network, so a local chunk cache in front of the store pays off."""


_REF_SEGMENT: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+@=-]*")
MAX_REF_BYTES: Final = 512


def validate_ref_name(name: str) -> str:
    """Check a ref name: `/`-separated segments of `[A-Za-z0-9._+@=-]`, none empty or dotted.

    A segment may not start with `.` or `-` so names can never mean `..`,
    a hidden file or an option.
    """
    # surrogatepass: a name from argv that is not UTF-8 (surrogate-escaped) is
    # refused by the segment check below, not by an encoding error.
    if (
        not isinstance(name, str)
        or not name
        or len(name.encode("utf-8", "surrogatepass")) > MAX_REF_BYTES
    ):
        raise UsageError(f"invalid ref name {name!r}: empty or longer than {MAX_REF_BYTES} bytes")
    for segment in name.split("/"):
        if not _REF_SEGMENT.fullmatch(segment):
            raise UsageError(
                f"invalid ref name {name!r}: segments are [A-Za-z0-9._+@=-], "
                "non-empty, not starting with '.' or '-'"
            )
    return name


def check_id(object_id: ObjectId) -> ObjectId:
    """Refuse anything that is not an `ObjectId` before it reaches a path or URL."""
    if not isinstance(object_id, ObjectId):
        raise UsageError(f"expected an ObjectId, got {type(object_id).__name__}")
    return object_id


def check_range(offset: int, length: int) -> None:
    """Refuse a byte range no caller should ask for, before any I/O."""
    for name, value, least in (("offset", offset, 0), ("length", length, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise UsageError(f"range {name} must be an integer >= {least}, got {value!r}")


def range_past_end(
    kind: Kind, object_id: ObjectId, offset: int, length: int, size: int | None = None
) -> IntegrityError:
    """The error for a range beyond a stored object: an index said the bytes were there."""
    where = f"is only {size} bytes long" if size is not None else "ends before that"
    return IntegrityError(
        str(kind), str(object_id), f"bytes {offset}-{offset + length - 1} asked, but it {where}"
    )


class Store(ABC):
    """A place that keeps immutable objects under their ids, plus create-only refs."""

    capabilities: Capabilities = Capabilities()
    url: str = ""
    created: bool = False
    """True when opening it made a new, empty store (a put to a mistyped path does)."""
    local_root: str | None = None
    """The directory holding the store, for a store on this machine: a put of a tree
    that contains it leaves it out."""

    @abstractmethod
    async def put_if_absent(self, kind: Kind, object_id: ObjectId, data: bytes) -> bool:
        """Store `data` under `object_id` unless present: True if created, False if it was there."""

    @abstractmethod
    async def get(self, kind: Kind, object_id: ObjectId, *, max_size: int) -> bytes:
        """Return the stored bytes; raise `ObjectNotFound`, or `IntegrityError` past `max_size`."""

    @abstractmethod
    async def get_range(self, kind: Kind, object_id: ObjectId, offset: int, length: int) -> bytes:
        """Exactly `length` stored bytes from `offset` (a pack frame named by an index).

        Raise `ObjectNotFound` for an absent object, `IntegrityError` for a
        range that ends past the object (an index pointing outside its pack
        means corruption), `UsageError` for offset < 0 or length < 1.
        """

    @abstractmethod
    async def stat(self, kind: Kind, object_id: ObjectId) -> ObjectInfo:
        """Size and creation time; raise `ObjectNotFound`."""

    @abstractmethod
    def list(self, kind: Kind, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every complete object whose hex id starts with `prefix`, in no set order."""

    @abstractmethod
    async def delete(self, kind: Kind, object_id: ObjectId) -> None:
        """Remove an object; removing an absent one is not an error."""

    @abstractmethod
    async def create_ref(self, name: str, target: ObjectId) -> None:
        """Create a ref; raise `AlreadyExists` if the name is taken, whatever its target."""

    @abstractmethod
    async def read_ref(self, name: str) -> ObjectId:
        """The target of a ref; raise `ObjectNotFound`."""

    @abstractmethod
    def list_refs(self, prefix: str = "") -> AsyncIterator[RefInfo]:
        """Refs whose name starts with `prefix`."""

    @abstractmethod
    async def delete_ref(self, name: str) -> None:
        """Remove a ref; removing an absent one is not an error."""

    async def missing(self, kind: Kind, ids: Collection[ObjectId]) -> set[ObjectId]:
        """The subset of `ids` not in the store.

        The default asks `stat` for each, `capabilities.max_concurrency` at a
        time; backends with a batch call (the HTTP server) override it.
        """
        from cas.errors import ObjectNotFound

        for object_id in ids:
            check_id(object_id)
        limit = asyncio.Semaphore(max(1, self.capabilities.max_concurrency))
        absent: set[ObjectId] = set()

        async def probe(object_id: ObjectId) -> None:
            async with limit:
                try:
                    await self.stat(kind, object_id)
                except ObjectNotFound:
                    absent.add(object_id)

        await asyncio.gather(*(probe(i) for i in set(ids)))
        return absent

    async def put_many(
        self, kind: Kind, items: Sequence[tuple[ObjectId, bytes]]
    ) -> builtins.list[bool]:
        """`put_if_absent` for each item, in order; same guarantees per object.

        The default runs up to `capabilities.max_concurrency` at a time;
        backends override it when one call can carry many objects.
        """
        limit = asyncio.Semaphore(max(1, self.capabilities.max_concurrency))

        async def one(object_id: ObjectId, data: bytes) -> bool:
            async with limit:
                return await self.put_if_absent(kind, object_id, data)

        return list(await asyncio.gather(*(one(i, d) for i, d in items)))

    async def get_many(
        self, kind: Kind, ids: Sequence[ObjectId], *, max_size: int
    ) -> dict[ObjectId, bytes]:
        """`get` for each id; `ObjectNotFound` if any is absent.

        The default runs up to `capabilities.max_concurrency` at a time.
        """
        limit = asyncio.Semaphore(max(1, self.capabilities.max_concurrency))

        async def one(object_id: ObjectId) -> tuple[ObjectId, bytes]:
            async with limit:
                return object_id, await self.get(kind, object_id, max_size=max_size)

        return dict(await asyncio.gather(*(one(i) for i in dict.fromkeys(ids))))

    async def delete_many(self, kind: Kind, ids: Sequence[ObjectId]) -> None:
        """`delete` for each id; absent ones are fine.

        The default runs up to `capabilities.max_concurrency` at a time;
        backends with a batch delete override it.
        """
        for object_id in ids:
            check_id(object_id)
        limit = asyncio.Semaphore(max(1, self.capabilities.max_concurrency))

        async def one(object_id: ObjectId) -> None:
            async with limit:
                await self.delete(kind, object_id)

        await asyncio.gather(*(one(i) for i in dict.fromkeys(ids)))

    def begin_upload(self, kind: Kind, spool_dir: str | None = None) -> Upload:
        """An object written piece by piece and named when complete (a pack being built).

        The default spools to an unnamed temporary file in `spool_dir` and
        uploads it with `put_if_absent` at `finish`, so memory holds no
        partial object; the local store overrides it to name the spooled
        file in place, without a copy.
        """
        return Upload(self, kind, spool_dir)

    def opener(self) -> Callable[[], Store] | None:
        """A picklable way to open this same store in another process, or None.

        put hands batches of small files to worker processes only for stores
        that have one; wrappers and test doubles keep the default so that
        every call goes through them.
        """
        return None

    async def aclose(self) -> None:  # noqa: B027 (optional hook, not abstract)
        """Release connections and files."""

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class Upload:
    """A create-only object written in pieces: `write`, then `finish` (or `abort`)."""

    def __init__(self, store: Store, kind: Kind, spool_dir: str | None) -> None:
        self.store = store
        self.kind = kind
        self.size = 0
        # Unnamed where the platform allows; closed by `finish` or `abort`.
        self._file = tempfile.TemporaryFile(dir=spool_dir, buffering=0)  # noqa: SIM115

    @property
    def fd(self) -> int:
        """The spool's descriptor (for writes that release the interpreter lock)."""
        return self._file.fileno()

    def write(self, parts: Sequence[bytes]) -> None:
        """Append `parts` (one `writev`, retried until all is written)."""
        views = [memoryview(p) for p in parts if len(p)]
        while views:
            try:
                done = os.writev(self.fd, views)
            except OSError as exc:
                raise self.write_error(exc) from None
            self.size += done
            while views and done >= len(views[0]):
                done -= len(views[0])
                views.pop(0)
            if views and done:
                views[0] = views[0][done:]

    def write_error(self, exc: OSError) -> CasError:
        """A failed spool write, in the user's terms (the local store names itself)."""
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        problem = "the disk is full" if full else (exc.strerror or str(exc))
        return StoreUnavailable(f"spooling a new {self.kind} before upload: {problem}")

    async def finish(self, object_id: ObjectId) -> bool:
        """Name the object `object_id` (create-only): True if created, False if it existed."""
        try:
            data = await asyncio.to_thread(self._read_all)
            return await self.store.put_if_absent(self.kind, object_id, data)
        finally:
            self.abort()

    def _read_all(self) -> bytes:
        return os.pread(self.fd, self.size, 0) if self.size else b""

    def abort(self) -> None:
        """Drop what was written."""
        self._file.close()
