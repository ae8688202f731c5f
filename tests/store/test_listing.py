"""Listing a whole namespace by its 16 hex prefixes side by side (cas.store.listing).

A collection, `cas verify --all` and repair read every object of a kind this
way: each object must come once, and a failed listing must stop the whole
listing (never a sweep on a partial one) without leaving the others running.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from cas.errors import StoreUnavailable
from cas.store.base import Kind
from cas.store.listing import list_concurrently
from cas.store.local import LocalStore
from tests.store.stored import stored

HEX = "0123456789abcdef"


async def filled(tmp_path, count: int) -> LocalStore:
    store = LocalStore(tmp_path / "store", fsync=False)
    for i in range(count):
        object_id, data = stored(Kind.MANIFEST, b"manifest %d" % i)
        await store.put_if_absent(Kind.MANIFEST, object_id, data)
    return store


class WatchedListings:
    """A real store's listings, each watched: which started, were cancelled, still run.

    Prefix `failing` (if set) raises once every prefix has started; `stall`
    makes the other listings wait after their last object, as a slow bucket
    listing does, until cancelled; `endless` lists the whole store over and
    over, as the listings of a store holding millions of objects go on.
    """

    def __init__(
        self, inner: LocalStore, *, failing: str = "", stall: bool = False, endless: bool = False
    ) -> None:
        self.inner = inner
        self.failing = failing
        self.stall = stall
        self.endless = endless
        self.yielded = 0
        self.error = StoreUnavailable(f"listing of prefix {failing!r} failed")
        self.started: set[str] = set()
        self.cancelled: set[str] = set()
        self.running: set[str] = set()
        self._all_started = asyncio.Event()

    async def list(self, kind: Kind, prefix: str = ""):
        self.started.add(prefix)
        self.running.add(prefix)
        if self.started >= set(HEX):
            self._all_started.set()
        try:
            if prefix == self.failing:
                await self._all_started.wait()
                raise self.error
            if self.endless:
                infos = [info async for info in self.inner.list(kind)]
                while True:
                    for info in infos:
                        self.yielded += 1
                        yield info
                    await asyncio.sleep(0)
            async for info in self.inner.list(kind, prefix):
                yield info
            if self.stall:
                await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.add(prefix)
            raise
        finally:
            self.running.discard(prefix)


@pytest.mark.parametrize("concurrency", [1, 3, 16, 100])
async def test_every_object_is_listed_once(tmp_path, concurrency):
    store = await filled(tmp_path, 60)
    expected = {info.id async for info in store.list(Kind.MANIFEST)}
    watched = WatchedListings(store)
    listed = [
        info.id
        async for batch in list_concurrently(watched, Kind.MANIFEST, concurrency)
        for info in batch
    ]
    assert len(listed) == len(expected) == 60 and set(listed) == expected
    assert watched.started == set(HEX) and watched.running == set()
    await store.aclose()


async def test_a_failing_listing_cancels_the_others_and_is_the_error_raised(tmp_path):
    store = await filled(tmp_path, 60)
    watched = WatchedListings(store, failing="7", stall=True)
    with pytest.raises(StoreUnavailable) as raised:
        async for _ in list_concurrently(watched, Kind.MANIFEST, 16):
            pass
    assert raised.value is watched.error
    assert watched.cancelled == set(HEX) - {"7"}
    assert watched.running == set()
    await store.aclose()


async def test_a_reader_that_stops_early_stops_the_listings(tmp_path):
    """Closing the listing while its queue of batches is full ends it, and its listings."""
    store = await filled(tmp_path, 60)
    watched = WatchedListings(store, endless=True)
    listing = list_concurrently(watched, Kind.MANIFEST, 16)
    await anext(listing)
    seen = -1
    while seen != watched.yielded:  # until every listing waits for room in the full queue
        seen = watched.yielded
        await asyncio.sleep(0.05)
    started = time.monotonic()
    await asyncio.wait_for(listing.aclose(), timeout=5)  # (a hang is cut off at 5 s)
    assert time.monotonic() - started < 4
    await asyncio.sleep(0.1)  # the store's listings close as their generators are dropped
    assert watched.running == set()
    assert asyncio.all_tasks() == {asyncio.current_task()}
    await store.aclose()
