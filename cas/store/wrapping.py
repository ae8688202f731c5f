"""A store that forwards every call to another: the base of the behaviour wrappers.

Retries and concurrency caps are layers around a backend rather than code
inside each backend, so every backend gets the same policy and the
conformance suite can check the layers themselves.
"""

from __future__ import annotations

import builtins
import functools
from collections.abc import AsyncIterator, Callable, Collection, Sequence

from cas.ids import ObjectId
from cas.store.base import Kind, ObjectInfo, RefInfo, Store


def _reopen(rewrap: Callable[[Store], Store], open_inner: Callable[[], Store]) -> Store:
    return rewrap(open_inner())


class WrappingStore(Store):
    """Forwards to `inner`; subclasses override the calls they change."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.capabilities = inner.capabilities
        self.url = inner.url
        self.created = inner.created
        self.local_root = inner.local_root

    def rewrap(self) -> Callable[[Store], Store]:
        """A picklable function that puts this same layer around another store."""
        raise NotImplementedError

    def opener(self) -> Callable[[], Store] | None:
        """Worker processes get the same layers around their own connection."""
        open_inner = self.inner.opener()
        if open_inner is None:
            return None
        try:
            rewrap = self.rewrap()
        except NotImplementedError:
            return None
        return functools.partial(_reopen, rewrap, open_inner)

    async def put_if_absent(self, kind: Kind, object_id: ObjectId, data: bytes) -> bool:
        return await self.inner.put_if_absent(kind, object_id, data)

    async def get(self, kind: Kind, object_id: ObjectId, *, max_size: int) -> bytes:
        return await self.inner.get(kind, object_id, max_size=max_size)

    async def get_range(self, kind: Kind, object_id: ObjectId, offset: int, length: int) -> bytes:
        return await self.inner.get_range(kind, object_id, offset, length)

    async def stat(self, kind: Kind, object_id: ObjectId) -> ObjectInfo:
        return await self.inner.stat(kind, object_id)

    def list(self, kind: Kind, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        return self.inner.list(kind, prefix)

    async def delete(self, kind: Kind, object_id: ObjectId) -> None:
        await self.inner.delete(kind, object_id)

    async def delete_many(self, kind: Kind, ids: Sequence[ObjectId]) -> None:
        await self.inner.delete_many(kind, ids)

    async def create_ref(self, name: str, target: ObjectId) -> None:
        await self.inner.create_ref(name, target)

    async def read_ref(self, name: str) -> ObjectId:
        return await self.inner.read_ref(name)

    def list_refs(self, prefix: str = "") -> AsyncIterator[RefInfo]:
        return self.inner.list_refs(prefix)

    async def delete_ref(self, name: str) -> None:
        await self.inner.delete_ref(name)

    async def missing(self, kind: Kind, ids: Collection[ObjectId]) -> set[ObjectId]:
        return await self.inner.missing(kind, ids)

    async def put_many(
        self, kind: Kind, items: Sequence[tuple[ObjectId, bytes]]
    ) -> builtins.list[bool]:
        return await self.inner.put_many(kind, items)

    async def get_many(
        self, kind: Kind, ids: Sequence[ObjectId], *, max_size: int
    ) -> dict[ObjectId, bytes]:
        return await self.inner.get_many(kind, ids, max_size=max_size)

    async def aclose(self) -> None:
        await self.inner.aclose()
