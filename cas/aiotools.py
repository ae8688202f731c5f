"""One asyncio helper the engines and backends share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import Any


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
