"""Merge many small concurrent requests into a few batch calls.

A put asks the store the same two questions thousands of times ("is this
chunk there?", "store this tree"); on a remote store each call is a round
trip. Callers submit one item and await its answer; items that arrive
within a few milliseconds of each other travel in one batch call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
R = TypeVar("R")


class Coalescer(Generic[K, V, R]):
    """Collects `(key, value)` submissions and answers them from one `resolve` call per batch.

    A key submitted again while its batch is pending shares the pending
    answer. A failing batch fails every submission in it.
    """

    def __init__(
        self,
        resolve: Callable[[dict[K, V]], Awaitable[dict[K, R]]],
        *,
        max_items: int = 1000,
        wait: float = 0.002,
    ) -> None:
        self._resolve = resolve
        self._max_items = max_items
        self._wait = wait
        self._pending: dict[K, tuple[V, asyncio.Future[R]]] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit_many(self, items: dict[K, V]) -> dict[K, R]:
        """The answers for `items`, batched with whatever else is being submitted."""
        loop = asyncio.get_running_loop()
        futures: dict[K, asyncio.Future[R]] = {}
        for key, value in items.items():
            pending = self._pending.get(key)
            if pending is None:
                pending = self._pending[key] = (value, loop.create_future())
            futures[key] = pending[1]
            if len(self._pending) >= self._max_items:
                self._flush_now()
        if self._flusher is None and self._pending:
            self._flusher = asyncio.create_task(self._flush_soon())
        answers = await asyncio.gather(*futures.values())
        return dict(zip(futures, answers, strict=True))

    async def submit(self, key: K, value: V) -> R:
        """The answer for one item."""
        return (await self.submit_many({key: value}))[key]

    async def _flush_soon(self) -> None:
        await asyncio.sleep(self._wait)
        self._flusher = None
        self._flush_now()

    def _flush_now(self) -> None:
        batch, self._pending = self._pending, {}
        if batch:
            task = asyncio.create_task(self._answer(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer(self, batch: dict[K, tuple[V, asyncio.Future[R]]]) -> None:
        try:
            answers = await self._resolve({key: value for key, (value, _) in batch.items()})
        except BaseException as exc:  # every waiter must learn of the failure
            for _, future in batch.values():
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for key, (_, future) in batch.items():
            if not future.done():
                future.set_result(answers[key])
