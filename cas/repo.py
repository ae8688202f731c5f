"""The repository: the one layer that hashes, compresses, verifies and caches.

Backends only move bytes. Everything read through a `Repository` is
decompressed within a size cap and checked against its id before anyone sees
it, whether it came from the store or from the local cache; a mismatch is an
`IntegrityError` naming the object. CPU work (zstd, BLAKE3) runs in threads:
both libraries release the GIL.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from cas import codec
from cas.cache import ChunkCache
from cas.errors import IntegrityError, ObjectNotFound
from cas.ids import ObjectId, hash_bytes, is_object_id, verify
from cas.objects import MAX_MANIFEST_BYTES, MAX_TREE_BYTES, Manifest, Tree
from cas.store.base import Kind, Store, validate_ref_name

DEFAULT_MAX_CHUNK: Final = 16 << 20
_INLINE_ENCODE_MAX: Final = 64 << 10


def stored_size_bound(max_size: int) -> int:
    """The largest blob a zstd frame of `max_size` content can be (zstd's compress bound)."""
    return max_size + (max_size >> 7) + 4096


def encode_object(data: bytes | memoryview, level: int) -> tuple[ObjectId, bytes]:
    """Hash then compress: the id is always of the uncompressed bytes."""
    return hash_bytes(data), codec.encode(data, level)


def decode_object(kind: Kind, object_id: ObjectId, blob: bytes, max_size: int) -> bytes:
    """Decompress within `max_size` and verify the id."""
    data = codec.decode(blob, max_size, kind=str(kind), object_id=str(object_id))
    verify(str(kind), object_id, data)
    return data


class Repository:
    """Typed objects over a `Store`, with an optional shared `ChunkCache`."""

    def __init__(self, store: Store, cache: ChunkCache | None = None, *, level: int = 3) -> None:
        self.store = store
        self.cache = cache
        self.level = level
        self._inflight: dict[ObjectId, asyncio.Future[bytes]] = {}
        self.bytes_from_store = 0
        self.bytes_from_cache = 0
        self.chunks_from_store = 0
        self.chunks_from_cache = 0
        self._counter_lock = threading.Lock()

    # ------------------------------------------------------------ chunks

    async def put_encoded(self, kind: Kind, object_id: ObjectId, blob: bytes) -> bool:
        """Upload an already encoded object; True if it was new."""
        return await self.store.put_if_absent(kind, object_id, blob)

    async def get_chunk(self, object_id: ObjectId, max_size: int) -> bytes:
        """Verified chunk bytes, from the cache if there, else from the store.

        Concurrent requests for one id share one fetch.
        """
        pending = self._inflight.get(object_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._inflight[object_id] = future
        try:
            data = await self._load(Kind.CHUNK, object_id, max_size)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        else:
            future.set_result(data)
            return data
        finally:
            del self._inflight[object_id]

    async def _load(self, kind: Kind, object_id: ObjectId, max_size: int) -> bytes:
        cache = self.cache
        if cache is not None:
            blob = await asyncio.to_thread(cache.get, object_id)
            if blob is not None:
                try:
                    data = await asyncio.to_thread(decode_object, kind, object_id, blob, max_size)
                except IntegrityError:
                    # A damaged cache entry is only a miss: drop it, the store decides.
                    await asyncio.to_thread(cache.discard, object_id)
                else:
                    if kind is Kind.CHUNK:
                        self.chunks_from_cache += 1
                        self.bytes_from_cache += len(blob)
                    return data
        blob = await self.store.get(kind, object_id, max_size=stored_size_bound(max_size))
        data = await asyncio.to_thread(decode_object, kind, object_id, blob, max_size)
        if kind is Kind.CHUNK:
            self.chunks_from_store += 1
            self.bytes_from_store += len(blob)
        if cache is not None:
            await asyncio.to_thread(cache.put, object_id, blob)
        return data

    async def get_chunks(
        self,
        ids: Sequence[ObjectId],
        max_size: int,
        local: Callable[[list[ObjectId]], dict[ObjectId, bytes]] | None = None,
    ) -> dict[ObjectId, bytes]:
        """Verified bytes of many chunks, with one thread hop per source.

        Sources in order: the cache (hits decoded and verified in the hop that
        reads them; a damaged entry is dropped), then `local` (a callable run
        in a thread that returns only chunks it verified itself), then the
        store in one batch, verified and added to the cache. A chunk another
        call is already fetching from the store is awaited, not fetched twice.
        """
        wanted = list(dict.fromkeys(ids))
        found: dict[ObjectId, bytes] = {}
        if self.cache is not None and wanted:
            found = await asyncio.to_thread(self._from_cache, wanted, max_size)
        rest = [i for i in wanted if i not in found]
        if rest and local is not None:
            found.update(await asyncio.to_thread(local, rest))
            rest = [i for i in rest if i not in found]
        waiting = {i: self._inflight[i] for i in rest if i in self._inflight}
        mine = [i for i in rest if i not in waiting]
        if mine:
            found.update(await self._fetch_shared(mine, max_size))
        for object_id, future in waiting.items():
            found[object_id] = await asyncio.shield(future)
        return found

    async def _fetch_shared(self, ids: list[ObjectId], max_size: int) -> dict[ObjectId, bytes]:
        """One batched store read that concurrent callers can wait on per id."""
        loop = asyncio.get_running_loop()
        futures = {i: loop.create_future() for i in ids}
        self._inflight.update(futures)
        try:
            blobs = await self.store.get_many(Kind.CHUNK, ids, max_size=stored_size_bound(max_size))
            data = await asyncio.to_thread(self._verify_and_keep, blobs, max_size)
        except BaseException as exc:
            for future in futures.values():
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(exc)
                    future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            for object_id in ids:
                if self._inflight.get(object_id) is futures[object_id]:
                    del self._inflight[object_id]
        for object_id, future in futures.items():
            if object_id in data:
                future.set_result(data[object_id])
            else:
                future.set_exception(ObjectNotFound(f"chunk {object_id} not found"))
                future.exception()
        return data

    def _from_cache(
        self, ids: list[ObjectId], max_size: int, kind: Kind = Kind.CHUNK
    ) -> dict[ObjectId, bytes]:
        """Cached objects among `ids`, verified; a damaged entry is dropped (only a miss)."""
        assert self.cache is not None
        out = {}
        for object_id, blob in self.cache.get_many(ids).items():
            try:
                out[object_id] = decode_object(kind, object_id, blob, max_size)
            except IntegrityError:
                self.cache.discard(object_id)
                continue
            if kind is Kind.CHUNK:
                with self._counter_lock:
                    self.chunks_from_cache += 1
                    self.bytes_from_cache += len(blob)
        return out

    def _verify_and_keep(
        self, blobs: dict[ObjectId, bytes], max_size: int, kind: Kind = Kind.CHUNK
    ) -> dict[ObjectId, bytes]:
        """Verify objects fetched from the store and add them to the cache."""
        out = {i: decode_object(kind, i, b, max_size) for i, b in blobs.items()}
        if kind is Kind.CHUNK:
            with self._counter_lock:
                self.chunks_from_store += len(blobs)
                self.bytes_from_store += sum(len(b) for b in blobs.values())
        if self.cache is not None and blobs:
            self.cache.put_many(blobs.items())
        return out

    # ------------------------------------------------------------ trees, manifests

    async def put_tree(self, tree: Tree) -> ObjectId:
        """Store a tree; its chunks and subtrees must already be stored (write order)."""
        data = tree.to_bytes()
        object_id = hash_bytes(data)
        await self.put_tree_batch({object_id: data})
        return object_id

    async def put_tree_batch(
        self,
        trees: dict[ObjectId, bytes],
        missing: Callable[[Kind, list[ObjectId]], Awaitable[set[ObjectId]]] | None = None,
    ) -> dict[ObjectId, bool]:
        """Store encoded trees (id -> canonical bytes) with one `missing` and one `put_many`.

        The store is asked before compressing: on a re-put most trees already
        exist, and compressing them was the largest cost of an unchanged put.
        `missing` replaces the store's own check (put's known-present cache).
        Answers True for the trees this call created.
        """
        absent = await (missing or self.store.missing)(Kind.TREE, list(trees))
        if not absent:
            return dict.fromkeys(trees, False)
        raw = [(object_id, trees[object_id]) for object_id in trees if object_id in absent]
        if sum(len(data) for _, data in raw) < _INLINE_ENCODE_MAX:  # cheaper than a thread hop
            blobs = [(i, codec.encode(data, self.level)) for i, data in raw]
        else:
            blobs = await asyncio.to_thread(
                lambda: [(i, codec.encode(data, self.level)) for i, data in raw]
            )
        created = await self.store.put_many(Kind.TREE, blobs)
        answers = dict.fromkeys(trees, False)
        answers.update(
            (object_id, made) for (object_id, _), made in zip(blobs, created, strict=True)
        )
        return answers

    async def get_tree(self, object_id: ObjectId) -> Tree:
        """Fetch, verify and strictly parse a tree."""
        data = await self._load(Kind.TREE, object_id, MAX_TREE_BYTES)
        return Tree.from_bytes(data, where=f"tree {object_id}")

    async def get_trees(self, ids: Sequence[ObjectId]) -> dict[ObjectId, Tree]:
        """Many trees: one batched store read and one thread hop to verify and parse them.

        A walk of thousands of small trees spent most of its time in two
        thread hops per tree.
        """
        wanted = list(dict.fromkeys(ids))
        data: dict[ObjectId, bytes] = {}
        if self.cache is not None:
            data = await asyncio.to_thread(self._from_cache, wanted, MAX_TREE_BYTES, Kind.TREE)
        rest = [i for i in wanted if i not in data]
        fetched: dict[ObjectId, bytes] = {}
        if rest:
            bound = stored_size_bound(MAX_TREE_BYTES)
            fetched = await self.store.get_many(Kind.TREE, rest, max_size=bound)

        def parse() -> dict[ObjectId, Tree]:
            data.update(self._verify_and_keep(fetched, MAX_TREE_BYTES, Kind.TREE))
            return {i: Tree.from_bytes(data[i], where=f"tree {i}") for i in wanted}

        return await asyncio.to_thread(parse)

    async def put_manifest(self, manifest: Manifest) -> ObjectId:
        """Store a manifest: the last write of a put, after everything it names."""
        data = manifest.to_bytes()
        object_id, blob = encode_object(data, self.level)
        await self.store.put_if_absent(Kind.MANIFEST, object_id, blob)
        return object_id

    async def get_manifest(self, object_id: ObjectId) -> Manifest:
        """Fetch, verify and strictly parse a manifest (never from the cache)."""
        blob = await self.store.get(
            Kind.MANIFEST, object_id, max_size=stored_size_bound(MAX_MANIFEST_BYTES)
        )
        data = await asyncio.to_thread(
            decode_object, Kind.MANIFEST, object_id, blob, MAX_MANIFEST_BYTES
        )
        return Manifest.from_bytes(data, where=f"manifest {object_id}")

    async def resolve(self, name: str) -> ObjectId:
        """A manifest id from 64 hex characters or a ref name."""
        if is_object_id(name):
            return ObjectId.parse(name)
        validate_ref_name(name)
        try:
            return await self.store.read_ref(name)
        except ObjectNotFound:
            raise ObjectNotFound(f"no manifest id or ref named {name!r}") from None
