"""A bound on every store wait of a mount: a stalled store is an error, never a hang.

A process blocked in a read of a FUSE file cannot be interrupted by its
user, so the mount must answer every request in bounded time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from cas.errors import StoreUnavailable

T = TypeVar("T")


async def within(awaitable: Awaitable[T], seconds: float, what: str) -> T:
    """`awaitable`'s result, or `StoreUnavailable` naming `what` after `seconds`."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        raise StoreUnavailable(f"{what}: the store did not answer within {seconds:g} s") from None
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # this request itself is cancelled (unmounting)
        # A read shared with another caller was abandoned by it (its own deadline).
        raise StoreUnavailable(f"{what}: a shared read of it was abandoned") from None
