"""Reading ahead across files when a reader walks the tree (`cp -r`, `tar`, a test runner).

A sequential reader of a mounted tree opens one file after another, and
each open of a file whose chunks are not here costs a round trip to the
store: on a 30 ms link, a thousand directories of small files wait half a
minute for latency alone, while `cas get` streams. Once three opens in a
row are neighbouring files of one directory, the walk is predicted the way
`os.walk` goes (the rest of the directory's files, its subdirectories,
then what follows it in each parent) and the leading chunks of the next
files are fetched ahead of the reader: 256 KiB at first, twice as far each
time the reader opens a predicted file, up to `budget`. It continues while
the opens land on predicted files and stops after `_MISSES` that do not,
so a job opening a file here and there fetches (almost) only what it reads.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Final

from cas.errors import CasError
from cas.ids import ObjectId
from cas.mount.trees import Listing, TreeSource
from cas.objects import ChunkRef, DirEntry, FileEntry

DEFAULT_BUDGET: Final = 4 << 20
"""Chunk bytes fetched ahead of the reader's position in the walk."""
DEFAULT_PER_FILE: Final = 1 << 20
"""Leading bytes of each next file: a large file's own readahead does the rest."""
CACHED_BUDGET: Final = 32 << 20
"""With a chunk cache the walk fetches into the cache (on disk), so it can run further
ahead, whole files: the link streams while the reader spends CPU on small files."""
_FIRST_BATCH: Final = 64 << 10
_BATCH: Final = 1 << 20
"""Chunks fetched together: neighbours in a pack become one ranged read (first ones sooner)."""
_NEIGHBOURS: Final = 2
"""Neighbouring opens in a row (three files) that make a walk: two happen by chance."""
_FIRST_LEAD: Final = 256 << 10
_DIRECTORY_COST: Final = 4096
"""What entering a directory counts toward the lead: a run of directories with no
chunked files (inline files only, or empty) cannot make the walk read trees unbounded."""
_MAX_DEPTH: Final = 32
_MISSES: Final = 2
"""Opens off the predicted path in a row that end a walk."""
_READERS: Final = 8
"""Reading processes whose walks are followed at once (the least recent is dropped)."""
log = logging.getLogger("cas.mount")

FileKey = tuple[ObjectId, str]
"""A file as (the tree listing it, its name)."""


@dataclass(frozen=True)
class Step:
    """One directory on the way from the mount root to an opened file."""

    tree: ObjectId
    child: str
    """The entry of `tree` the walk is in (the file, or the directory leading to it)."""
    where: str


class WalkAhead:
    """Watches file opens; while a reader's opens look like a walk, fetches its next files.

    Each reading process (by pid) has its walk, so parallel test workers
    walking different directories are each recognised; at most `_READERS`
    are followed, and the budget is shared among those walking.
    """

    def __init__(
        self,
        trees: TreeSource,
        fetch: Callable[[list[ChunkRef], str], None],
        budget: int = DEFAULT_BUDGET,
        per_file: int = DEFAULT_PER_FILE,
    ) -> None:
        self.trees = trees
        self.fetch = fetch
        """Starts a background fetch (`ChunkReader.fetch_ahead` or `fetch_into_cache`)."""
        self.budget = budget
        self.per_file = per_file
        self._walkers: OrderedDict[int, _Walker] = OrderedDict()
        self.walks = 0
        """Walks recognised (for tests and the summary)."""

    def opened(self, listing: Listing, path: list[Step], reader: int = 0) -> None:
        """Process `reader` opened a file: `path[0]` is its directory's step, up to the root's."""
        walker = self._walkers.get(reader)
        if walker is None:
            walker = self._walkers[reader] = _Walker(self)
            while len(self._walkers) > _READERS:
                _, oldest = self._walkers.popitem(last=False)
                oldest.stop()
        else:
            self._walkers.move_to_end(reader)
        walker.opened(listing, path)

    def lead_limit(self) -> int:
        """The budget of one walk: the whole budget shared among the walks running."""
        running = sum(1 for w in self._walkers.values() if w.running)
        return max(_FIRST_LEAD, self.budget // max(1, running))

    def stop(self) -> None:
        """End every walk being followed."""
        for walker in self._walkers.values():
            walker.stop()

    async def close(self) -> None:
        """Stop, and wait until the walks' tasks have ended."""
        walkers = list(self._walkers.values())
        self._walkers.clear()
        for walker in walkers:
            await walker.close()


class _Walker:
    """One reader's walk: its last opens, the files predicted, how far ahead it fetched."""

    def __init__(self, shared: WalkAhead) -> None:
        self.shared = shared
        self._last: tuple[ObjectId, int] | None = None
        self._task: asyncio.Task[None] | None = None
        self._positions: OrderedDict[FileKey, int] = OrderedDict()
        """Predicted files not yet reached, with the walk bytes before each."""
        self._reached = 0
        self._moved = asyncio.Event()
        self._misses = 0
        self._neighbours = 0
        """Opens in a row, each of the file after the one before in its directory."""
        self._lead = _FIRST_LEAD
        """How far ahead of the reader the walk fetches now (grows to the budget)."""

    @property
    def running(self) -> bool:
        """Whether this walk is being followed."""
        return self._task is not None and not self._task.done()

    def opened(self, listing: Listing, path: list[Step]) -> None:
        """A file was opened: `path[0]` is its directory's step, up to the root's."""
        here = path[0]
        index = listing.positions[here.child]
        key = (here.tree, here.child)
        previous, self._last = self._last, (here.tree, index)
        neighbour = (
            previous is not None
            and previous[0] == here.tree
            and _next_file(listing, previous[1]) == index
        )
        self._neighbours = self._neighbours + 1 if neighbour else 0
        if key in self._positions:
            self._advance(key)
            return
        if self._task is not None:
            self._misses += 1
            if self._misses < _MISSES:
                return
            self.stop()
        if self._neighbours >= _NEIGHBOURS:
            self.shared.walks += 1
            self._lead = _FIRST_LEAD
            self._task = asyncio.ensure_future(self._walk(listing, path))

    def stop(self) -> None:
        """End the walk being followed (the reader went elsewhere, or unmounting)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._positions.clear()
        self._reached = 0
        self._misses = 0

    async def close(self) -> None:
        """Stop, and wait until the walk's task has ended."""
        task = self._task
        self.stop()
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    def _advance(self, key: FileKey) -> None:
        self._misses = 0
        self._lead = min(self.shared.lead_limit(), self._lead * 2)
        while self._positions:
            passed, position = self._positions.popitem(last=False)
            if passed == key:
                self._reached = position
                break
        self._moved.set()

    async def _walk(self, listing: Listing, path: list[Step]) -> None:
        scheduled = 0
        batch: list[ChunkRef] = []
        batch_bytes = 0
        limit = _FIRST_BATCH
        where = f"files after {_join(path[0].where, path[0].child)}"

        def flush() -> None:
            nonlocal batch, batch_bytes, limit
            if batch:
                self.shared.fetch(batch, where)
            batch, batch_bytes, limit = [], 0, min(_BATCH, limit * 2)

        try:
            async for holder, entry in self._upcoming(listing, path):
                if scheduled - self._reached >= min(self._lead, self.shared.lead_limit()):
                    flush()
                    while scheduled - self._reached >= min(self._lead, self.shared.lead_limit()):
                        self._moved.clear()
                        await self._moved.wait()
                if entry is None:  # a directory entered: its tree counts, and others get a turn
                    scheduled += _DIRECTORY_COST
                    await asyncio.sleep(0)
                    continue
                self._positions[holder, entry.name] = scheduled
                for ref in _leading(entry.chunks, self.shared.per_file):
                    batch.append(ref)
                    batch_bytes += ref.length
                    scheduled += ref.length
                    if batch_bytes >= limit:  # a large file goes in several fetches
                        flush()
            flush()
        except CasError as exc:  # a tree that does not read: its own lookup reports it
            log.debug("walk ahead stopped: %s", exc)

    async def _upcoming(
        self, listing: Listing, path: list[Step]
    ) -> AsyncIterator[tuple[ObjectId, FileEntry | None]]:
        """The files after `path[0].child` in `os.walk` order, up through the parents.

        Also yields (tree, None) for each directory entered. Each tree is
        entered once (a manifest may name one tree many times: identical
        directories, or a hostile DAG that would expand exponentially), and
        no deeper than `_MAX_DEPTH` below where the walk is.
        """
        seen = {step.tree for step in path}
        here = path[0]
        after = listing.positions[here.child] + 1
        for entry in listing.entries[after:]:
            if isinstance(entry, FileEntry) and entry.chunks:
                yield here.tree, entry
        for entry in listing.entries:
            if isinstance(entry, DirEntry):
                where = _join(here.where, entry.name)
                async for found in self._subtree(entry.tree, where, seen, _MAX_DEPTH):
                    yield found
        for step in path[1:]:
            parent = await self.shared.trees.listing(step.tree, step.where)
            for entry in parent.entries[parent.positions[step.child] + 1 :]:
                if isinstance(entry, DirEntry):
                    where = _join(step.where, entry.name)
                    async for found in self._subtree(entry.tree, where, seen, _MAX_DEPTH):
                        yield found

    async def _subtree(
        self, tree: ObjectId, where: str, seen: set[ObjectId], depth: int
    ) -> AsyncIterator[tuple[ObjectId, FileEntry | None]]:
        if tree in seen or depth <= 0:
            return
        seen.add(tree)
        listing = await self.shared.trees.listing(tree, where)
        yield tree, None
        for entry in listing.entries:
            if isinstance(entry, FileEntry) and entry.chunks:
                yield tree, entry
        for entry in listing.entries:
            if isinstance(entry, DirEntry):
                sub = _join(where, entry.name)
                async for found in self._subtree(entry.tree, sub, seen, depth - 1):
                    yield found


def _next_file(listing: Listing, index: int) -> int | None:
    """The position of the first file with chunks after `index` (inline files need no read).

    A bisection of the listing's chunked positions: a directory of many
    inline files costs each open no scan of them.
    """
    chunked = listing.chunked
    at = bisect.bisect_right(chunked, index)
    return chunked[at] if at < len(chunked) else None


def _leading(chunks: tuple[ChunkRef, ...], limit: int) -> list[ChunkRef]:
    """The first chunks of a file, at least one, up to `limit` bytes."""
    out: list[ChunkRef] = []
    total = 0
    for ref in chunks:
        if out and total + ref.length > limit:
            break
        out.append(ref)
        total += ref.length
    return out


def _join(where: str, name: str) -> str:
    return name if where in ("", ".") else f"{where}/{name}"
