"""pyfuse3 on asyncio: imported without trio, with its fd wait made safe at unmount.

pyfuse3 imports trio at import time (~0.1 s of CPU, a third of a local
mount's start) and in asyncio mode never touches it: `enable` replaces the
module's `trio` with its asyncio layer. `import_binding` imports pyfuse3
with an empty stand-in for trio, removed again at once, so nothing else in
the process ever sees it.

`pyfuse3.asyncio.wait_readable` resolves its future from a reader callback,
and `notify_closing` (called by `pyfuse3.terminate` on SIGTERM) fails the
same future: when both happen in one loop iteration, the second raises
`InvalidStateError`, logged by asyncio as an "Exception in callback" on
every clean unmount. These replacements do the same, once.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import types
from typing import Any

_importing = threading.Lock()


def import_binding() -> types.ModuleType:
    """pyfuse3, imported without importing trio (safe from any thread, any number of times).

    Should a pyfuse3 release need more of trio at import than its name (an
    ImportError, or an AttributeError of the empty stand-in), the import is
    made again the ordinary way: slower, never broken. Another thread
    importing trio during those milliseconds would get the stand-in; nothing
    in cas does.
    """
    with _importing:
        if "trio" not in sys.modules and "pyfuse3" not in sys.modules:
            stand_in = sys.modules["trio"] = types.ModuleType("trio")
            try:
                import pyfuse3
            except Exception:  # the plain import below raises what is real
                pass
            finally:
                if sys.modules.get("trio") is stand_in:
                    del sys.modules["trio"]
        import pyfuse3
    return pyfuse3


def enable() -> None:
    """Switch pyfuse3 to asyncio mode, with the guarded fd wait."""
    import_binding()
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
