"""Cap the calls in flight to a store.

Callers such as get fan out one task per chunk; a remote store wants a few
dozen requests at once, not thousands of sockets. Each call (a batch call
counts as one) holds a slot until it returns.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Collection, Sequence

from cas.ids import ObjectId
from cas.store.base import Kind, ObjectInfo, Store
from cas.store.wrapping import WrappingStore


class LimitedStore(WrappingStore):
    """At most `max_in_flight` calls reach `inner` at a time (per event loop)."""

    def __init__(self, inner: Store, max_in_flight: int | None = None) -> None:
        super().__init__(inner)
        self.max_in_flight = max(1, max_in_flight or inner.capabilities.max_concurrency)
        self._slots: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}

    def rewrap(self) -> Callable[[Store], Store]:
        return functools.partial(LimitedStore, max_in_flight=self.max_in_flight)

    def _slot(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        slot = self._slots.get(loop)
        if slot is None:
            self._slots = {k: v for k, v in self._slots.items() if not k.is_closed()}
            slot = self._slots[loop] = asyncio.Semaphore(self.max_in_flight)
        return slot

    async def put_if_absent(self, kind: Kind, object_id: ObjectId, data: bytes) -> bool:
        async with self._slot():
            return await self.inner.put_if_absent(kind, object_id, data)

    async def get(self, kind: Kind, object_id: ObjectId, *, max_size: int) -> bytes:
        async with self._slot():
            return await self.inner.get(kind, object_id, max_size=max_size)

    async def get_range(self, kind: Kind, object_id: ObjectId, offset: int, length: int) -> bytes:
        async with self._slot():
            return await self.inner.get_range(kind, object_id, offset, length)

    async def stat(self, kind: Kind, object_id: ObjectId) -> ObjectInfo:
        async with self._slot():
            return await self.inner.stat(kind, object_id)

    async def delete(self, kind: Kind, object_id: ObjectId) -> None:
        async with self._slot():
            await self.inner.delete(kind, object_id)

    async def delete_many(self, kind: Kind, ids: Sequence[ObjectId]) -> None:
        async with self._slot():
            await self.inner.delete_many(kind, ids)

    async def create_ref(self, name: str, target: ObjectId) -> None:
        async with self._slot():
            await self.inner.create_ref(name, target)

    async def read_ref(self, name: str) -> ObjectId:
        async with self._slot():
            return await self.inner.read_ref(name)

    async def delete_ref(self, name: str) -> None:
        async with self._slot():
            await self.inner.delete_ref(name)

    async def missing(self, kind: Kind, ids: Collection[ObjectId]) -> set[ObjectId]:
        async with self._slot():
            return await self.inner.missing(kind, ids)

    async def put_many(self, kind: Kind, items: Sequence[tuple[ObjectId, bytes]]) -> list[bool]:
        async with self._slot():
            return await self.inner.put_many(kind, items)

    async def get_many(
        self, kind: Kind, ids: Sequence[ObjectId], *, max_size: int
    ) -> dict[ObjectId, bytes]:
        async with self._slot():
            return await self.inner.get_many(kind, ids, max_size=max_size)
