"""Following a kept manifest whose objects a collection moved to new packs.

`cas gc` rewrites mostly dead packs: it copies their live frames into new
packs, writes a relocated index for each manifest that names them, and
deletes the old packs at its next run. A mount that outlives that reads
locations from the index it loaded at start and finds the old pack gone;
before answering EIO it reloads the manifest's index once and retries. A
manifest that was collected has no index left: the read fails as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from cas.errors import CasError, ObjectNotFound
from cas.ids import ObjectId
from cas.mount.deadline import within
from cas.repo import Repository

T = TypeVar("T")
_FRESH_SECONDS: Final = 2.0
"""Reads failing together share one reload."""
log = logging.getLogger("cas.mount")


class Relocation:
    """Reloads one manifest's index when its packs go missing."""

    def __init__(self, repo: Repository, manifest_id: ObjectId, timeout: float) -> None:
        self.repo = repo
        self.manifest_id = manifest_id
        self.timeout = timeout
        self._lock = asyncio.Lock()
        self._last = -1e9
        self._moved = False
        self.reloads = 0

    async def read(self, read: Callable[[], Awaitable[T]], what: str) -> T:
        """`read()` within the deadline; once more after a reload if its pack was gone."""
        try:
            return await within(read(), self.timeout, what)
        except ObjectNotFound:
            if not await self.moved():
                raise
            return await within(read(), self.timeout, what)

    async def moved(self) -> bool:
        """Whether the manifest's objects now lie elsewhere (worth one more try)."""
        async with self._lock:
            if time.monotonic() - self._last < _FRESH_SECONDS:
                return self._moved
            try:
                what = f"index of manifest {self.manifest_id}"
                self._moved = await within(
                    self.repo.reload_index(self.manifest_id), self.timeout, what
                )
            except CasError as exc:
                log.debug("reloading the index of %s: %s", self.manifest_id, exc)
                self._moved = False
            self._last = time.monotonic()
            self.reloads += 1
            if self._moved:
                log.info("manifest %s was repacked: reading its new index", self.manifest_id)
            return self._moved
