"""Marking: every index and pack the roots of a collection reach, and what they hold.

The mark phase of `cas.gc.collector`: for each root manifest, every index of
it (all count: a repaired put leaves two, and a forged one can only keep
more), every pack those indexes name, and each pack's live frames (for
repacking). A root whose manifest or index reads damaged is remembered as
unread, so its indexes are kept and no pack is swept. Objects a root reaches
whose pack is gone are "homeless": a put may be uploading them again.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from cas.errors import UNREADABLE, IntegrityError, ObjectNotFound, read_failure
from cas.gc.idset import IdSet
from cas.ids import ObjectId
from cas.indexbook import read_index
from cas.pack import ObjectKind
from cas.packindex import Location, PackIndex, index_prefix
from cas.repo import Repository
from cas.store.base import Kind
from cas.store.listing import list_concurrently


class Marker:
    """The marks of one collection, kept in `reachable` (on disk) and in memory."""

    def __init__(
        self,
        repo: Repository,
        concurrency: int,
        reachable: IdSet,
        unreadable: list[tuple[Kind, ObjectId, str]],
    ) -> None:
        self.repo = repo
        self.store = repo.store
        self.concurrency = concurrency
        self.reachable = reachable
        self.unreadable = unreadable
        """Roots whose manifest or index could not be read (the collection's report)."""
        self.live: dict[ObjectId, dict[int, tuple[ObjectKind, ObjectId, Location]]] = {}
        """Per marked pack: offset -> (kind, id, location) of each frame a root reaches."""
        self.marked_indexes: dict[ObjectId, set[ObjectId]] = {}
        """Per marked index name: the packs it names."""
        self.homeless: set[tuple[str, bytes]] = set()
        """(kind, id) reachable but indexed only in packs that are gone."""
        self.unread_roots: set[bytes] = set()
        """First 16 bytes of roots whose manifest or indexes could not be read: a damaged
        read (a flipped or cut answer) is no proof that they reach nothing, so every
        index named after them is kept, and no pack is swept."""
        self._marked_prefixes: dict[bytes, ObjectId] = {}
        """First 16 bytes of each marked manifest id (an index name starts with them)."""
        self._checked_packs: set[ObjectId] = set()

    async def mark(self, roots: list[ObjectId]) -> None:
        """Every index of `roots` and every pack they name into the mark set.

        All indexes of a manifest count (a repaired put leaves two, and a
        forged one can only keep more), so no pack any of them needs is lost.
        """
        reachable = self.reachable
        fresh_roots = reachable.new_of(Kind.MANIFEST.value, roots)
        limit = asyncio.Semaphore(self.concurrency)

        async def one(manifest_id: ObjectId) -> None:
            async with limit:
                try:
                    await self.repo.get_manifest(manifest_id)
                except UNREADABLE as exc:
                    self.unreadable.append((Kind.MANIFEST, manifest_id, read_failure(exc)))
                    if not isinstance(exc, ObjectNotFound):  # a damaged read proves nothing
                        self.unread_roots.add(bytes(manifest_id)[:16])
                    return
                indexes, damaged = await self._indexes_of(manifest_id)
                self._marked_prefixes[bytes(manifest_id)[:16]] = manifest_id
                if damaged is not None or not indexes:
                    problem = "missing" if damaged is None else f"corrupt: {damaged}"
                    self.unreadable.append((Kind.INDEX, manifest_id, problem))
                    self.unread_roots.add(bytes(manifest_id)[:16])
                for index in indexes:
                    self._add_index(index)

        await asyncio.gather(*(one(m) for m in fresh_roots))
        await self.find_homeless()

    async def _indexes_of(
        self, manifest_id: ObjectId
    ) -> tuple[list[PackIndex], IntegrityError | None]:
        """Every readable index of a root, and the error of one that read damaged.

        `Repository.indexes_of` passes over a damaged index when another one
        reads; here that one must still count: a root with two indexes (a
        repaired put) whose older, complete one came back damaged would lose
        that index and the packs only it names.
        """
        found: list[PackIndex] = []
        damaged: IntegrityError | None = None
        async for info in self.store.list(Kind.INDEX, index_prefix(manifest_id)):
            try:
                index = await read_index(self.store, info.id, reads=1)
            except ObjectNotFound:
                continue  # replaced by a collection since the listing
            except IntegrityError as exc:
                damaged = damaged or exc
                continue
            if index.manifest != manifest_id:
                damaged = damaged or IntegrityError(
                    "index", str(info.id), f"serves {index.manifest}"
                )
                continue
            found.append(index)
        return found, damaged

    async def find_homeless(self) -> None:
        """Objects roots reach whose indexed pack is gone: a put may be uploading them again.

        A put that repairs its manifest after a collection stores the missing
        objects in new packs that no index names yet; the sweep keeps any
        pack holding one of these (the format 1 rule "a mark of a missing
        object spares its re-upload", for packs).
        """
        unchecked = [p for p in self.live if p not in self._checked_packs]
        if not unchecked:
            return
        gone = await self.store.missing(Kind.PACK, unchecked)
        self._checked_packs.update(unchecked)
        for pack in gone:
            for kind, object_id, _ in self.live[pack].values():
                self.homeless.add((str(kind), bytes(object_id)))

    async def mark_late_indexes(self, started: datetime) -> None:
        """Indexes written for manifests already marked: a put's repair, another run's repack.

        They appear after their manifest, so listing the roots again does not
        find them; they are listed here before each beat (only those newer than
        this run's start), so a put that waits two beats after writing one
        knows it is marked (docs/gc.md).
        """
        late: list[tuple[ObjectId, ObjectId]] = []
        async for listed in list_concurrently(self.store, Kind.INDEX, self.concurrency):
            for info in listed:
                manifest = self._marked_prefixes.get(bytes(info.id)[:16])
                if manifest is not None and info.mtime >= started:
                    late.append((manifest, info.id))
        fresh = set(self.reachable.new_of(Kind.INDEX.value, [name for _, name in late]))
        for manifest_id, name in late:
            if name not in fresh:
                continue
            try:
                index = await read_index(self.store, name, reads=1)
            except ObjectNotFound:
                continue
            except IntegrityError:
                continue  # a forged index can only add marks; a damaged one adds none
            if index.manifest == manifest_id:
                self._add_index(index)
        await self.find_homeless()

    def _add_index(self, index: PackIndex) -> None:
        packs = index.packs()
        self.reachable.add_many(Kind.PACK.value, sorted(packs))
        for kind, object_id, loc in index.items():
            self.live.setdefault(loc.pack, {})[loc.offset] = (kind, object_id, loc)
        assert index.name is not None
        self.marked_indexes[index.name] = packs
        self.reachable.add_many(Kind.INDEX.value, [index.name])
