"""Decoded trees by id, fetched once and kept within a byte cap.

Every tree comes through `Repository.get_trees` (verified against its id,
strictly parsed, names checked); chunk lengths are checked against the
manifest's maximum here, once per tree, as `cas get` checks them before
writing. Trees are kept in a byte-capped LRU so the mount's memory does not
grow with the number of directories browsed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from dataclasses import dataclass
from typing import Final

from cas.batching import batch_by_size
from cas.errors import CasError
from cas.get.browse import check_chunks
from cas.ids import ObjectId
from cas.lru import ByteLRU
from cas.mount.relocation import Relocation
from cas.objects import Entry, FileEntry, Tree
from cas.packindex import Location
from cas.repo import Repository

DEFAULT_TREE_BYTES: Final = 32 << 20
_WARM_READ_BYTES: Final = 512 << 10
"""Stored bytes of trees per read ahead: ~40 ms at 100 Mbit, so a lookup is never far behind."""
_WARM_IN_FLIGHT: Final = 2
_WARM_SHARE: Final = 0.75
"""Reading ahead stops when the LRU is this full: it must not evict what was asked for."""
log = logging.getLogger("cas.mount")


@dataclass(frozen=True)
class Listing:
    """One directory's entries in stored order, and their positions by name."""

    entries: tuple[Entry, ...]
    positions: dict[str, int]

    def find(self, name: str) -> Entry | None:
        """The entry called `name`, or None."""
        at = self.positions.get(name)
        return None if at is None else self.entries[at]

    @functools.cached_property
    def chunked(self) -> tuple[int, ...]:
        """Positions of the files with chunks (the ones a read needs the store for)."""
        return tuple(
            at for at, e in enumerate(self.entries) if isinstance(e, FileEntry) and e.chunks
        )


def _footprint(entries: tuple[Entry, ...]) -> int:
    """A rough size in memory of a decoded tree (objects, names, chunk lists, inline data)."""
    total = 256
    for entry in entries:
        total += 300 + len(entry.name)
        if isinstance(entry, FileEntry):
            total += 120 * len(entry.chunks) + len(entry.inline or b"")
    return total


class TreeSource:
    """Listings of trees, each fetched from the repository at most once at a time.

    A directory being looked up is read alone (no neighbours along), so the
    first answer never waits for every tree of a large manifest; `warm`
    reads the rest in pack order in the background, into the same LRU,
    while it has room.
    """

    def __init__(
        self,
        repo: Repository,
        max_chunk: int,
        *,
        capacity: int = DEFAULT_TREE_BYTES,
        relocation: Relocation,
    ) -> None:
        self.repo = repo
        self.relocation = relocation
        self.max_chunk = max_chunk
        self._lru: ByteLRU[ObjectId, Listing] = ByteLRU(capacity)
        self._inflight: dict[ObjectId, asyncio.Task[Listing]] = {}
        self.fetched = 0
        """Trees fetched and decoded (cache misses of this LRU)."""

    async def listing(self, tree_id: ObjectId, where: str) -> Listing:
        """The listing of `tree_id`, the directory at `where` (named in errors).

        The read is a task of its own that every caller waits on: a caller
        cancelled (a walk read ahead that stopped) leaves it to the others.
        """
        cached = self._lru.get(tree_id)
        if cached is not None:
            return cached
        pending = self._inflight.get(tree_id)
        if pending is None:
            pending = self._inflight[tree_id] = asyncio.ensure_future(self._read(tree_id, where))
            pending.add_done_callback(functools.partial(self._settled, tree_id))
        return await asyncio.shield(pending)

    async def _read(self, tree_id: ObjectId, where: str) -> Listing:
        return (await self._read_many({tree_id: where}))[tree_id]

    async def _read_many(self, wanted: dict[ObjectId, str]) -> dict[ObjectId, Listing]:
        """Trees read exactly (one merged read), checked, kept; `wanted` maps id -> where."""
        ids = list(wanted)
        what = f"tree {ids[0]}" if len(ids) == 1 else f"{len(ids)} trees"
        read = await self.relocation.read(lambda: self.repo.get_trees(ids, ahead=False), what)
        out = {}
        for tree_id, where in wanted.items():
            out[tree_id] = listing = _checked_listing(read[tree_id], self.max_chunk, where)
            self._keep(tree_id, listing, _footprint(listing.entries))
        return out

    def _settled(self, tree_id: ObjectId, read: asyncio.Future[Listing]) -> None:
        if self._inflight.get(tree_id) is read:
            del self._inflight[tree_id]
        if not read.cancelled():
            read.exception()  # retrieved: its waiters raise it, if any are left

    async def close(self) -> None:
        """Stop the reads still running (unmounting)."""
        reads = list(self._inflight.values())
        for read in reads:
            read.cancel()
        await asyncio.gather(*reads, return_exceptions=True)

    async def listings(self, wanted: dict[ObjectId, str]) -> dict[ObjectId, Listing]:
        """Many listings (tree id -> where), the missing ones in one merged read."""
        out = {i: held for i in wanted if (held := self._lru.get(i)) is not None}
        missing = {i: w for i, w in wanted.items() if i not in out and i not in self._inflight}
        if missing:
            out.update(await self._read_many(missing))
        for tree_id in wanted:
            if tree_id not in out:  # being read by a lookup: wait for it
                out[tree_id] = await self.listing(tree_id, wanted[tree_id])
        return out

    async def warm(self, trees: dict[ObjectId, Location]) -> int:
        """Read `trees` in pack order, two batches in flight, while the LRU has room.

        Demand reads do not wait for it (they read their tree alone), so on a
        slow link it only shares bandwidth with them. A failure stops it
        quietly: the directory's own read reports it, with its path.
        """
        order = sorted(trees, key=lambda i: (trees[i].pack, trees[i].offset))
        room = int(self._lru.capacity * _WARM_SHARE)
        warmed = 0
        flying: deque[asyncio.Future[dict[ObjectId, Listing]]] = deque()
        batches = iter(
            batch_by_size(
                order,
                lambda i: trees[i].stored,
                max_bytes=_WARM_READ_BYTES,
                max_items=len(order),
                alone_from=_WARM_READ_BYTES,
            )
        )
        try:
            while True:
                while len(flying) < _WARM_IN_FLIGHT and (batch := next(batches, None)):
                    flying.append(asyncio.ensure_future(self._read_ahead(batch)))
                if not flying:
                    return warmed
                try:
                    listings = await flying.popleft()
                except CasError as exc:
                    log.debug("reading trees ahead stopped: %s", exc)
                    return warmed
                for tree_id, listing in listings.items():
                    size = _footprint(listing.entries)
                    if self._lru.size + size > room:
                        return warmed
                    if tree_id not in self._lru:
                        self._keep(tree_id, listing, size, cold=True)
                        warmed += 1
        finally:
            for pending in flying:
                pending.cancel()
            await asyncio.gather(*flying, return_exceptions=True)

    async def _read_ahead(self, batch: list[ObjectId]) -> dict[ObjectId, Listing]:
        batch = [i for i in batch if i not in self._lru and i not in self._inflight]
        if not batch:
            return {}
        got = await self.relocation.read(
            lambda: self.repo.get_trees(batch, ahead=False), f"{len(batch)} trees read ahead"
        )
        return await asyncio.to_thread(_listings, got, self.max_chunk)

    def _keep(self, tree_id: ObjectId, listing: Listing, size: int, *, cold: bool = False) -> None:
        self.fetched += 1
        self._lru.put(tree_id, listing, size, cold=cold)


def _checked_listing(tree: Tree, max_chunk: int, where: str) -> Listing:
    """A tree's listing, its chunk lengths checked as `cas get` checks them before writing."""
    for entry in tree.entries:
        if isinstance(entry, FileEntry):
            check_chunks(entry, max_chunk, f"{where}/{entry.name}")
    return Listing(tree.entries, {e.name: i for i, e in enumerate(tree.entries)})


def _listings(trees: dict[ObjectId, Tree], max_chunk: int) -> dict[ObjectId, Listing]:
    """Listings of the trees read ahead; one that fails its checks is left to its own read."""
    out = {}
    for tree_id, tree in trees.items():
        try:
            out[tree_id] = _checked_listing(tree, max_chunk, f"tree {tree_id}")
        except CasError:
            continue
    return out
