"""The repository: the one layer that hashes, compresses, verifies, packs and caches.

Backends only move bytes. Chunks and trees live in packs (`cas.pack`); a
manifest's index (`cas.packindex`) says where. Everything read through a
`Repository` is decompressed within a size cap and checked against its id
before anyone sees it, whether it came from the store or from the local
cache; a mismatch is an `IntegrityError` naming the object. Reads of
neighbouring frames of one pack are merged into one ranged read. CPU work
(zstd, BLAKE3) runs in threads: both libraries release the GIL.

Writes go through a `PackWriter` (`cas.put.packwriter`), opened per put with
`Repository.writer`: it is the only code that packs and uploads chunks and
trees, for threads and worker processes alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from cas.aiotools import fail
from cas.caches.chunks import ChunkCache
from cas.codec import decode_object, stored_size_bound
from cas.errors import IntegrityError
from cas.ids import ObjectId, hash_bytes
from cas.indexbook import IndexBook
from cas.names import resolve_name
from cas.objects import MAX_MANIFEST_BYTES, MAX_TREE_BYTES, Manifest, Tree
from cas.pack import (
    FOOTER,
    ObjectKind,
    PackEntry,
    parse_footer,
    parse_trailer,
)
from cas.packindex import Location, PackIndex
from cas.packreads import PackReader, ReadCounts, read_twice
from cas.store.base import Kind, Store
from cas.store.encoded import write_index, write_object

DEFAULT_MAX_CHUNK: Final = 16 << 20


class Repository:
    """Typed objects over a `Store`, with an optional shared `ChunkCache`."""

    def __init__(self, store: Store, cache: ChunkCache | None = None, *, level: int = 3) -> None:
        self.store = store
        self.cache = cache
        self.level = level
        self._inflight: dict[tuple[ObjectKind, ObjectId], asyncio.Future[bytes]] = {}
        located: dict[ObjectKind, dict[ObjectId, Location]] = {k: {} for k in ObjectKind}
        self.counts = ReadCounts()
        """What was read, from the store or the cache (summaries read it directly)."""
        self.reader = PackReader(store, cache, located, self.counts)
        self.indexes = IndexBook(store, located, self._plan_trees)

    def _plan_trees(self, index: PackIndex) -> None:
        self.reader.plan[ObjectKind.TREE].update(dict.fromkeys(index.trees))  # a walk reads them

    # ------------------------------------------------------------ indexes (cas.indexbook)

    async def indexes_of(self, manifest_id: ObjectId) -> list[PackIndex]:
        """Every readable index of a manifest, newest first."""
        return await self.indexes.indexes_of(manifest_id)

    async def index(self, manifest_id: ObjectId) -> PackIndex:
        """The index a reader uses: the newest one whose packs all exist."""
        return await self.indexes.index(manifest_id)

    async def reload_index(self, manifest_id: ObjectId) -> bool:
        """Read a manifest's indexes again; True if the one now chosen names other packs."""
        return await self.indexes.reload_index(manifest_id)

    def expect(self, manifest_id: ObjectId) -> None:
        """Load `manifest_id`'s index before the next object that is not located yet."""
        self.indexes.expect(manifest_id)

    async def locate(self, kind: ObjectKind, ids: Iterable[ObjectId]) -> dict[ObjectId, Location]:
        """Locations of `ids`; `ObjectNotFound` for one that no index read so far lists."""
        return await self.indexes.locate(kind, ids)

    def adopt(self, index: PackIndex) -> None:
        """Make an index's locations readable (a put's own, before its manifest exists)."""
        self.indexes.adopt(index)

    # ------------------------------------------------------------ reading packs (cas.packreads)

    def plan(self, ids: Iterable[ObjectId]) -> None:
        """Chunks this run will fetch: a ranged read also keeps their neighbours for later."""
        self.reader.plan[ObjectKind.CHUNK].update(dict.fromkeys(ids))

    async def read_located(
        self,
        kind: ObjectKind,
        locations: dict[ObjectId, Location],
        max_size: int,
        *,
        ahead: bool = True,
    ) -> dict[ObjectId, bytes]:
        """Fetch, decompress and verify objects at known locations, merging neighbours."""
        return await self.reader.read_located(kind, locations, max_size, ahead=ahead)

    # ------------------------------------------------------------ chunks

    async def get_chunk(self, object_id: ObjectId, max_size: int) -> bytes:
        """Verified chunk bytes, from the cache if there, else from the store."""
        return (await self.get_chunks([object_id], max_size))[object_id]

    async def get_chunks(
        self,
        ids: Sequence[ObjectId],
        max_size: int,
        local: Callable[[list[ObjectId]], dict[ObjectId, bytes]] | None = None,
    ) -> dict[ObjectId, bytes]:
        """Verified bytes of many chunks, with one thread hop per source.

        Sources in order: the cache (hits decoded and verified in the hop that
        reads them; a damaged entry is dropped), frames read ahead earlier,
        then `local` (a callable run in a thread that returns only chunks it
        verified itself), then the store in merged ranged reads, verified and
        added to the cache. A chunk another call is already fetching is
        awaited, not fetched twice.
        """
        return await self._get_objects(ObjectKind.CHUNK, ids, max_size, local)

    async def _get_objects(
        self,
        kind: ObjectKind,
        ids: Sequence[ObjectId],
        max_size: int,
        local: Callable[[list[ObjectId]], dict[ObjectId, bytes]] | None = None,
        *,
        ahead: bool = True,
    ) -> dict[ObjectId, bytes]:
        wanted = list(dict.fromkeys(ids))
        along = self.reader.ahead
        claims = {along[kind, i] for i in wanted if (kind, i) in along}
        if claims:  # another read is bringing some along: wait for it, not fetch twice
            await asyncio.gather(*(claim.wait() for claim in claims))
        found: dict[ObjectId, bytes] = {}
        if self.cache is not None and wanted:
            found = await asyncio.to_thread(self._from_cache, wanted, max_size, kind)
        rest = [i for i in wanted if i not in found]
        if rest and self.reader.has_staged:
            found.update(await asyncio.to_thread(self.reader.take_staged, kind, rest, max_size))
            rest = [i for i in rest if i not in found]
        if rest and local is not None:
            found.update(await asyncio.to_thread(local, rest))
            rest = [i for i in rest if i not in found]
        waiting = {i: self._inflight[kind, i] for i in rest if (kind, i) in self._inflight}
        mine = [i for i in rest if i not in waiting]
        if mine:
            found.update(await self._fetch_shared(kind, mine, max_size, ahead=ahead))
        for object_id, future in waiting.items():
            found[object_id] = await asyncio.shield(future)
        return found

    async def _fetch_shared(
        self, kind: ObjectKind, ids: list[ObjectId], max_size: int, *, ahead: bool = True
    ) -> dict[ObjectId, bytes]:
        """One merged read of the store that concurrent callers can wait on per id."""
        loop = asyncio.get_running_loop()
        futures = {i: loop.create_future() for i in ids}
        for object_id, future in futures.items():
            self._inflight[kind, object_id] = future
        try:
            locations = await self.locate(kind, ids)
            data = await self.read_located(kind, locations, max_size, ahead=ahead)
        except BaseException as exc:
            for future in futures.values():
                fail(future, exc)
            raise
        finally:
            for object_id in ids:
                if self._inflight.get((kind, object_id)) is futures[object_id]:
                    del self._inflight[kind, object_id]
        for object_id, future in futures.items():
            future.set_result(data[object_id])
        return data

    def _from_cache(
        self, ids: list[ObjectId], max_size: int, kind: ObjectKind = ObjectKind.CHUNK
    ) -> dict[ObjectId, bytes]:
        """Cached objects among `ids`, verified; a damaged entry is dropped (only a miss)."""
        assert self.cache is not None
        out = {}
        for object_id, blob in self.cache.get_many(ids).items():
            try:
                out[object_id] = decode_object(str(kind), object_id, blob, max_size)
            except IntegrityError:
                self.cache.discard(object_id)
                continue
            if kind is ObjectKind.CHUNK:
                with self.counts.lock:
                    self.counts.chunks_from_cache += 1
                    self.counts.bytes_from_cache += len(blob)
        return out

    # ------------------------------------------------------------ trees, manifests

    async def get_tree(self, object_id: ObjectId, *, ahead: bool = True) -> Tree:
        """Fetch, verify and strictly parse a tree."""
        return (await self.get_trees([object_id], ahead=ahead))[object_id]

    async def get_trees(
        self, ids: Sequence[ObjectId], *, ahead: bool = True
    ) -> dict[ObjectId, Tree]:
        """Many trees: merged ranged reads and one thread hop to parse them.

        `ahead=False` reads exactly these (no planned neighbours along): a
        reader waiting on one directory should not wait for all of them.
        """
        data = await self._get_objects(ObjectKind.TREE, ids, MAX_TREE_BYTES, ahead=ahead)

        def parse() -> dict[ObjectId, Tree]:
            return {i: Tree.from_bytes(data[i], where=f"tree {i}") for i in dict.fromkeys(ids)}

        if sum(len(d) for d in data.values()) < 64 << 10:  # cheaper than a thread hop
            return parse()
        return await asyncio.to_thread(parse)

    async def put_manifest(self, manifest: Manifest, index: PackIndex) -> ObjectId:
        """Store a put's index, then its manifest: the last writes, after every pack."""
        data = manifest.to_bytes()
        if index.manifest != hash_bytes(data):
            raise ValueError("index built for another manifest")
        await write_index(self.store, index, self.level)
        object_id, _ = await write_object(self.store, Kind.MANIFEST, data, self.level)
        self.adopt(index)
        return object_id

    async def put_index(self, index: PackIndex) -> None:
        """Store another index of a manifest that is already stored (a put's repair)."""
        await write_index(self.store, index, self.level)
        self.adopt(index)

    async def resolve(self, name: str) -> ObjectId:
        """A manifest id from 64 hex characters, a ref name, or a unique id prefix."""
        return await resolve_name(self.store, name)

    async def get_manifest(self, object_id: ObjectId) -> Manifest:
        """Fetch, verify and strictly parse a manifest (never from the cache).

        Its index is read the first time one of its trees or chunks is.
        """

        async def read() -> bytes:
            blob = await self.store.get(
                Kind.MANIFEST, object_id, max_size=stored_size_bound(MAX_MANIFEST_BYTES)
            )
            return await asyncio.to_thread(
                decode_object, "manifest", object_id, blob, MAX_MANIFEST_BYTES
            )

        data = await read_twice(read)
        manifest = Manifest.from_bytes(data, where=f"manifest {object_id}")
        self.expect(object_id)
        return manifest


async def read_pack_entries(store: Store, pack_id: ObjectId, size: int) -> list[PackEntry]:
    """A pack's entries from its footer and trailer: two ranged reads, not the whole pack."""
    footer = await store.get_range(Kind.PACK, pack_id, size - FOOTER.size, FOOTER.size)
    trailer_len, _ = parse_footer(pack_id, footer, size)
    if trailer_len == 0:
        return []
    start = size - FOOTER.size - trailer_len
    trailer = await store.get_range(Kind.PACK, pack_id, start, trailer_len)
    return parse_trailer(pack_id, trailer, size, max_chunk=DEFAULT_MAX_CHUNK)
