"""A real store wrapper that fails on purpose (kopia FaultyStorage, borg ChunkerFailing)."""

from __future__ import annotations

from collections import Counter

from cas.errors import StoreUnavailable
from cas.ids import ObjectId
from cas.store.base import Kind, Store


class FaultyStore(Store):
    """Delegates to `inner`, but the Nth call of a named method raises `StoreUnavailable`."""

    def __init__(self, inner: Store, fail_on: dict[str, int]) -> None:
        self.inner = inner
        self.fail_on = dict(fail_on)
        self.calls: Counter[str] = Counter()
        self.capabilities = inner.capabilities

    def _tick(self, method: str) -> None:
        self.calls[method] += 1
        if self.calls[method] == self.fail_on.get(method):
            raise StoreUnavailable(f"injected failure on {method} call {self.calls[method]}")

    async def put_if_absent(self, kind: Kind, object_id: ObjectId, data: bytes) -> bool:
        self._tick("put_if_absent")
        return await self.inner.put_if_absent(kind, object_id, data)

    async def get(self, kind, object_id, *, max_size):
        self._tick("get")
        return await self.inner.get(kind, object_id, max_size=max_size)

    async def get_range(self, kind, object_id, offset, length):
        self._tick("get_range")
        return await self.inner.get_range(kind, object_id, offset, length)

    async def stat(self, kind, object_id):
        self._tick("stat")
        return await self.inner.stat(kind, object_id)

    async def missing(self, kind, ids):
        self._tick("missing")
        return await self.inner.missing(kind, ids)

    def list(self, kind, prefix=""):
        return self.inner.list(kind, prefix)

    async def delete(self, kind, object_id):
        self._tick("delete")
        await self.inner.delete(kind, object_id)

    async def create_ref(self, name, target):
        self._tick("create_ref")
        await self.inner.create_ref(name, target)

    async def read_ref(self, name):
        return await self.inner.read_ref(name)

    def list_refs(self, prefix=""):
        return self.inner.list_refs(prefix)

    async def delete_ref(self, name):
        await self.inner.delete_ref(name)
