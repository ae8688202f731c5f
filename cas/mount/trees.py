"""Decoded trees by id, fetched once and kept within a byte cap.

Every tree comes through `Repository.get_trees` (verified against its id,
strictly parsed, names checked); chunk lengths are checked against the
manifest's maximum here, once per tree, as `cas get` checks them before
writing. Trees are kept in a byte-capped LRU so the mount's memory does not
grow with the number of directories browsed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

from cas.errors import ObjectNotFound
from cas.get.browse import check_chunks
from cas.ids import ObjectId
from cas.mount.deadline import fail, within
from cas.mount.lru import ByteLRU
from cas.mount.relocation import Relocation
from cas.objects import Entry, FileEntry
from cas.repo import Repository

DEFAULT_TREE_BYTES: Final = 32 << 20


@dataclass(frozen=True)
class Listing:
    """One directory's entries in stored order, and their positions by name."""

    entries: tuple[Entry, ...]
    positions: dict[str, int]

    def find(self, name: str) -> Entry | None:
        """The entry called `name`, or None."""
        at = self.positions.get(name)
        return None if at is None else self.entries[at]


def _footprint(entries: tuple[Entry, ...]) -> int:
    """A rough size in memory of a decoded tree (objects, names, chunk lists, inline data)."""
    total = 256
    for entry in entries:
        total += 300 + len(entry.name)
        if isinstance(entry, FileEntry):
            total += 120 * len(entry.chunks) + len(entry.inline or b"")
    return total


class TreeSource:
    """Listings of trees, each fetched from the repository at most once at a time."""

    def __init__(
        self,
        repo: Repository,
        max_chunk: int,
        *,
        capacity: int = DEFAULT_TREE_BYTES,
        timeout: float = 60.0,
        relocation: Relocation | None = None,
    ) -> None:
        self.repo = repo
        self.relocation = relocation
        self.max_chunk = max_chunk
        self.timeout = timeout
        self._lru: ByteLRU[ObjectId, Listing] = ByteLRU(capacity)
        self._inflight: dict[ObjectId, asyncio.Future[Listing]] = {}
        self.fetched = 0
        """Trees fetched and decoded (cache misses of this LRU)."""

    async def listing(self, tree_id: ObjectId, where: str) -> Listing:
        """The listing of `tree_id`, the directory at `where` (named in errors)."""
        cached = self._lru.get(tree_id)
        if cached is not None:
            return cached
        pending = self._inflight.get(tree_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Listing] = asyncio.get_running_loop().create_future()
        self._inflight[tree_id] = future
        try:
            what = f"tree {tree_id}"
            try:
                tree = await within(self.repo.get_tree(tree_id), self.timeout, what)
            except ObjectNotFound:
                if self.relocation is None or not await self.relocation.moved():
                    raise
                tree = await within(self.repo.get_tree(tree_id), self.timeout, what)
            for entry in tree.entries:
                if isinstance(entry, FileEntry):
                    check_chunks(entry, self.max_chunk, f"{where}/{entry.name}")
            listing = Listing(tree.entries, {e.name: i for i, e in enumerate(tree.entries)})
        except BaseException as exc:
            fail(future, exc)
            raise
        finally:
            del self._inflight[tree_id]
        self.fetched += 1
        self._lru.put(tree_id, listing, _footprint(tree.entries))
        future.set_result(listing)
        return listing
