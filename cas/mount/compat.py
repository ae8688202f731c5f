"""pyfuse3 on asyncio, with its fd wait made safe at unmount.

`pyfuse3.asyncio.wait_readable` resolves its future from a reader callback,
and `notify_closing` (called by `pyfuse3.terminate` on SIGTERM) fails the
same future: when both happen in one loop iteration, the second raises
`InvalidStateError`, logged by asyncio as an "Exception in callback" on
every clean unmount. These replacements do the same, once.
"""

from __future__ import annotations

import asyncio
from typing import Any


def enable() -> None:
    """Switch pyfuse3 to asyncio mode, with the guarded fd wait."""
    import pyfuse3.asyncio as compat

    compat.enable()
    waiting: dict[int, set[asyncio.Future[Any]]] = compat._read_futures

    async def wait_readable(fd: int) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        waiting[fd].add(future)

        def ready() -> None:
            if not future.done():
                future.set_result(None)

        try:
            loop.add_reader(fd, ready)
            future.add_done_callback(lambda _: loop.remove_reader(fd))
            await future
        finally:
            waiting[fd].discard(future)
            if not waiting[fd]:
                del waiting[fd]

    def notify_closing(fd: int) -> None:
        for future in waiting.get(fd, ()):
            if not future.done():
                future.set_exception(compat.ClosedResourceError())

    compat.wait_readable = wait_readable
    compat.notify_closing = notify_closing
