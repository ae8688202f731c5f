"""The put side of safe garbage collection: settle a manifest against concurrent runs.

A put decides "already stored, do not upload" for chunks and trees, in its
own process and in its worker processes. A collection running at the same
time may have found those very objects unreachable and deleted them. The
put cannot lock the store, so after writing its manifest it looks at the
collection records instead (docs/gc.md has the argument):

1. `begin`, before the put asks the store about any object, notes which
   runs have already finished.
2. `settle`, after the manifest (and its ref) are written, lists the
   records again. A run that is visible now and had not finished at `begin`
   may have deleted something the manifest needs: the put waits until each
   such run has finished (its done record, or a lapsed lease) or has written
   two more heartbeats (before each, a run re-lists its roots and marks what
   new manifests reach), checks that everything the manifest reaches exists,
   and uploads again what is missing. A run that is not visible now started after the manifest
   existed: it marks the manifest as a root and never sweeps past a tree it
   cannot read, so it deletes nothing the manifest reaches.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Final

from cas.errors import ConcurrentGcError
from cas.gc.records import RunTracker
from cas.store.base import Store

RECORD_KEEP_SECONDS: Final = 7 * 86400
"""Records of finished runs are kept this long; a longer put always re-checks."""
_SLACK: Final = 1.0
_REPAIRS: Final = 3
"""Repairs a put attempts before it gives up on settling."""


class GcFence:
    """One put's view of the collection runs, from its first store call to its manifest."""

    def __init__(self, store: Store, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._tracker = RunTracker(store)
        self._seen: dict[str, bool] = {}
        """The runs visible at `begin`: run id -> whether it had finished."""
        self._since = time.monotonic()
        self.rounds = 0
        """How many times the put had to wait for a run and re-check its manifest."""

    async def begin(self) -> None:
        """Snapshot: the runs that have finished before this put relies on anything."""
        if not self.enabled:
            return
        self._since = time.monotonic()
        await self._snapshot()

    async def _snapshot(self) -> None:
        runs = await self._tracker.refresh()
        now = time.monotonic()
        self._seen = {r.run: r.finished(now, _SLACK) for r in runs.values()}

    def runs_seen(self) -> dict[str, bool] | None:
        """The runs visible at `begin` (run id -> finished); None when the fence is off."""
        return dict(self._seen) if self.enabled else None

    async def settle(
        self,
        complete: Callable[[], Awaitable[bool]],
        repair: Callable[[], Awaitable[None]],
    ) -> None:
        """Return once no collection can still remove what the written manifest reaches.

        `complete` checks that every object the manifest reaches exists;
        `repair` uploads the missing ones again (and raises if it cannot).
        Runs that start after the manifest exists mark it (and never sweep
        past a tree they cannot read), so only the runs visible now matter.
        """
        if not self.enabled:
            return
        runs = await self._tracker.refresh()
        risky = {r.run: r.seq for r in runs.values() if not self._seen.get(r.run, False)}
        if not risky and time.monotonic() - self._since < RECORD_KEEP_SECONDS:
            return
        self.rounds += 1
        await self._wait_covered(risky)
        for _ in range(_REPAIRS):
            if await complete():
                return
            await repair()
            # The repair wrote a new index of the manifest. Runs that marked the
            # manifest before it existed mark it at their next beats (they list
            # new indexes): wait for two, as for the manifest itself.
            self.rounds += 1
            runs = await self._tracker.refresh()
            now = time.monotonic()
            await self._wait_covered(
                {r.run: r.seq for r in runs.values() if not r.finished(now, _SLACK)}
            )
        if not await complete():
            raise ConcurrentGcError(
                "garbage collection removed objects this put relied on and they could not "
                "be uploaded again; run the put again"
            )

    async def _wait_covered(self, runs: dict[str, int]) -> None:
        """Until each run has finished, or written two heartbeats after the manifest existed.

        The first new beat was written after this put's listing began; the
        second began with a re-listing after that, which saw the manifest,
        marked what it reaches, and let every earlier delete finish.
        """
        while True:
            state = await self._tracker.refresh()
            now = time.monotonic()
            waiting = [
                r
                for r, seen in runs.items()
                if r in state  # a run whose records are gone was removed long after it finished
                and not state[r].finished(now, _SLACK)
                and state[r].seq < seen + 2
            ]
            if not waiting:
                return
            poll = min(1.0, max(0.05, min(state[r].lease for r in waiting) / 16))
            await asyncio.sleep(poll)
