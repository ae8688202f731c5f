"""The indexes a repository has read: which one a reader uses, and where objects lie.

A manifest may have several indexes (a repaired put, a relocated copy
after a repack); a reader takes the newest whose packs all exist. An index
is read lazily, the first time an object of its manifest is not located
yet, and a damaged one is read twice before it is passed over.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Final, Literal

from cas.errors import IntegrityError, ObjectNotFound
from cas.ids import ObjectId
from cas.pack import ObjectKind
from cas.packindex import Location, PackIndex, decode_index, index_prefix
from cas.packreads import read_twice
from cas.store.base import Kind, Store

MAX_INDEX_BLOB: Final = 64 << 20
"""Stored (compressed) size limit of an index."""


async def read_index(store: Store, name: ObjectId, *, reads: Literal[1, 2] = 2) -> PackIndex:
    """One index by name, decoded off the event loop; `ObjectNotFound` if it is gone.

    With `reads=2` an answer that does not verify is read once more before
    the index is called damaged (`read_twice`: a damaged answer is not a
    damaged object). Marking reads once: there one damaged read already keeps
    every index of its root and is reported, so a second read has nothing to save.
    """

    async def once() -> PackIndex:
        blob = await store.get(Kind.INDEX, name, max_size=MAX_INDEX_BLOB)
        return await asyncio.to_thread(decode_index, name, blob)

    return await (read_twice(once) if reads == 2 else once())


class IndexBook:
    """Indexes read from one store, and the locations they give (`located`, shared)."""

    def __init__(
        self,
        store: Store,
        located: dict[ObjectKind, dict[ObjectId, Location]],
        on_load: Callable[[PackIndex], None],
    ) -> None:
        self.store = store
        self.located = located
        self.chosen: dict[ObjectId, PackIndex] = {}
        """The index a reader uses, per manifest."""
        self._on_load = on_load
        self._pending: dict[ObjectId, None] = {}
        self._lock = asyncio.Lock()

    async def indexes_of(self, manifest_id: ObjectId) -> list[PackIndex]:
        """Every readable index of a manifest, newest first (one listing, one read each)."""
        listed = [info async for info in self.store.list(Kind.INDEX, index_prefix(manifest_id))]
        listed.sort(key=lambda info: info.mtime, reverse=True)
        found = []
        damaged: IntegrityError | None = None
        for info in listed:
            try:
                index = await self.read(info.id)
                if index.manifest != manifest_id:
                    raise IntegrityError("index", str(info.id), f"serves {index.manifest}")
            except ObjectNotFound:
                continue  # replaced by a collection since the listing
            except IntegrityError as exc:
                damaged = damaged or exc  # another index of the manifest may do
                continue
            found.append(index)
        if not found and damaged is not None:
            raise damaged
        return found

    async def read(self, name: ObjectId) -> PackIndex:
        """One index by name, read a second time before it is called damaged."""
        return await read_index(self.store, name)

    async def index(self, manifest_id: ObjectId) -> PackIndex:
        """The index a reader uses: the newest one whose packs all exist."""
        cached = self.chosen.get(manifest_id)
        if cached is not None:
            return cached
        candidates = await self.indexes_of(manifest_id)
        if not candidates:
            raise ObjectNotFound(f"manifest {manifest_id} has no index (an interrupted put?)")
        chosen = candidates[0]
        if len(candidates) > 1:
            for candidate in candidates:
                if not await self.store.missing(Kind.PACK, list(candidate.packs())):
                    chosen = candidate
                    break
        self.chosen[manifest_id] = chosen
        for kind in ObjectKind:
            self.located[kind].update(chosen.table(kind))
        self._on_load(chosen)
        return chosen

    async def reload_index(self, manifest_id: ObjectId) -> bool:
        """Read a manifest's indexes again; True if the one now chosen names other packs.

        A collection that repacks a kept manifest writes a relocated index and
        deletes the old packs at its next run, so a long-lived reader (`cas
        mount`) that finds a pack gone reloads the index before it gives up.
        """
        old = self.chosen.pop(manifest_id, None)
        try:
            new = await self.index(manifest_id)
        except BaseException:
            if old is not None:  # no readable index now: keep the locations known so far
                self.chosen[manifest_id] = old
            raise
        return old is None or set(new.packs()) != set(old.packs())

    def expect(self, manifest_id: ObjectId) -> None:
        """Load `manifest_id`'s index before the next object that is not located yet."""
        if manifest_id not in self.chosen:
            self._pending[manifest_id] = None

    async def locate(self, kind: ObjectKind, ids: Iterable[ObjectId]) -> dict[ObjectId, Location]:
        """Locations of `ids`; `ObjectNotFound` for one that no index read so far lists."""
        table = self.located[kind]
        wanted = list(dict.fromkeys(ids))
        if any(i not in table for i in wanted) and self._pending:
            async with self._lock:
                while self._pending:
                    manifest_id = next(iter(self._pending))
                    await self.index(manifest_id)
                    del self._pending[manifest_id]
        out = {}
        for object_id in wanted:
            loc = table.get(object_id)
            if loc is None:
                raise ObjectNotFound(f"{kind} {object_id} not found (in no index read)")
            out[object_id] = loc
        return out

    def adopt(self, index: PackIndex) -> None:
        """Make an index's locations readable (a put's own, before its manifest exists)."""
        self.chosen[index.manifest] = index
        for kind in ObjectKind:
            self.located[kind].update(index.table(kind))
