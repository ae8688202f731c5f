"""Asyncio helpers the engines, backends and the mount share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


async def gather_or_cancel(awaitables: Iterable[Awaitable[Any]]) -> list[Any]:
    """Like `asyncio.gather`, but the first failure cancels the rest and waits for them.

    A TaskGroup without the ExceptionGroup: callers see the first error as it is,
    and no task is left running behind a failed step.
    """
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def for_each(
    items: Iterable[Any], work: Callable[[Any], Awaitable[None]], in_flight: int
) -> None:
    """Run `work` over `items`, `in_flight` at a time; the first error stops the rest."""
    pending = iter(items)

    async def worker() -> None:
        for item in pending:
            await work(item)

    await gather_or_cancel(worker() for _ in range(max(1, in_flight)))


def fail(future: asyncio.Future[T], exc: BaseException) -> None:
    """Hand `exc` to the waiters of `future` (a cancelled fetch cancels them).

    For a fetch other callers wait on: they get its error, not a hang, and an
    error nobody else waits for is not logged as never retrieved.
    """
    if isinstance(exc, asyncio.CancelledError):
        future.cancel()
    else:
        future.set_exception(exc)
        future.exception()  # retrieved: waiters re-raise it themselves
