"""Listing a whole namespace fast: the 16 hex prefixes side by side, in bounded batches.

A collection, `cas verify --all` and repair list every object of a kind;
one listing per id prefix runs in parallel (16 requests at once on a
bucket), and a bounded queue of batches keeps memory flat however many
objects the store holds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Final

from cas.aiotools import for_each
from cas.errors import CasError
from cas.store.base import Kind, ObjectInfo, Store

_HEX: Final = "0123456789abcdef"
_BATCH: Final = 1000


async def list_concurrently(
    store: Store, kind: Kind, concurrency: int
) -> AsyncIterator[list[ObjectInfo]]:
    """Every object of `kind` in batches, listing the 16 hex prefixes side by side.

    A bounded queue of batches keeps memory flat whatever the store holds.
    The first listing to fail cancels the others and is the error raised.
    """
    queue: asyncio.Queue[list[ObjectInfo] | None] = asyncio.Queue(maxsize=2 * len(_HEX))

    async def one(prefix: str) -> None:
        batch: list[ObjectInfo] = []
        async for info in store.list(kind, prefix):
            batch.append(info)
            if len(batch) >= _BATCH:
                await queue.put(batch)
                batch = []
        if batch:
            await queue.put(batch)

    async def all_prefixes() -> None:
        try:
            await for_each(_HEX, one, min(concurrency, len(_HEX)))
        except asyncio.CancelledError:
            raise  # the reader has left: no end mark, the queue may stay full for good
        except BaseException:
            await queue.put(None)  # the reader re-raises the error from `await producer`
            raise
        await queue.put(None)

    producer = asyncio.create_task(all_prefixes())
    try:
        while (batch := await queue.get()) is not None:
            yield batch
        await producer  # re-raise a listing failure: never sweep on a partial listing
    finally:
        if not producer.done():
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError, CasError):
                await producer
