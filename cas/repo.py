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
import difflib
import functools
import logging
import re
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Final, TypeVar

from cas import codec
from cas.cache import ChunkCache
from cas.errors import AlreadyExists, IntegrityError, ObjectNotFound, UsageError
from cas.ids import ObjectId, hash_bytes, is_object_id, verify
from cas.objects import MAX_MANIFEST_BYTES, MAX_TREE_BYTES, Manifest, Tree
from cas.pack import (
    FOOTER,
    ObjectKind,
    PackEntry,
    decode_frame,
    parse_footer,
    parse_trailer,
)
from cas.packindex import Location, PackIndex, decode_index, encode_index, index_prefix
from cas.store.base import Kind, Store, validate_ref_name

T = TypeVar("T")
log = logging.getLogger("cas.repo")

DEFAULT_MAX_CHUNK: Final = 16 << 20
MAX_INDEX_BLOB: Final = 64 << 20
"""Stored (compressed) size limit of an index."""
MERGE_GAP: Final = 256 << 10
"""Frames of one pack closer than this are read together (the gap is read and dropped)."""
MAX_READ: Final = 16 << 20
"""No merged ranged read is longer."""


def stored_size_bound(max_size: int) -> int:
    """The largest blob a zstd frame of `max_size` content can be (zstd's compress bound)."""
    return max_size + (max_size >> 7) + 4096


def encode_object(data: bytes | memoryview, level: int) -> tuple[ObjectId, bytes]:
    """Hash then compress: the id is always of the uncompressed bytes."""
    return hash_bytes(data), codec.encode(data, level)


def decode_object(kind: str, object_id: ObjectId, blob: bytes, max_size: int) -> bytes:
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
        self._inflight: dict[tuple[ObjectKind, ObjectId], asyncio.Future[bytes]] = {}
        self._ahead: dict[tuple[ObjectKind, ObjectId], asyncio.Event] = {}
        """Objects a read in flight brings along (not asked for): set when it ends."""
        self._located: dict[ObjectKind, dict[ObjectId, Location]] = {
            ObjectKind.CHUNK: {},
            ObjectKind.TREE: {},
        }
        self._pending_indexes: dict[ObjectId, None] = {}
        self._indexes: dict[ObjectId, PackIndex] = {}
        self._index_lock = asyncio.Lock()
        self._staged: dict[tuple[ObjectKind, ObjectId], bytes] = {}
        self._staged_bytes = 0
        self._plan: dict[ObjectKind, dict[ObjectId, None]] = {k: {} for k in ObjectKind}
        """Objects expected to be read: a ranged read takes those in the same pack along."""
        self.bytes_from_store = 0
        self.bytes_from_cache = 0
        self.chunks_from_store = 0
        self.chunks_from_cache = 0
        self.reads = 0
        """Ranged reads of packs issued."""
        self._counter_lock = threading.Lock()

    # ------------------------------------------------------------ indexes

    async def indexes_of(self, manifest_id: ObjectId) -> list[PackIndex]:
        """Every readable index of a manifest, newest first (one listing, one read each)."""
        listed = [info async for info in self.store.list(Kind.INDEX, index_prefix(manifest_id))]
        listed.sort(key=lambda info: info.mtime, reverse=True)
        found = []
        damaged: IntegrityError | None = None
        for info in listed:
            try:
                index = await read_twice(functools.partial(self._read_index, info.id))
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

    async def _read_index(self, name: ObjectId) -> PackIndex:
        blob = await self.store.get(Kind.INDEX, name, max_size=MAX_INDEX_BLOB)
        return await asyncio.to_thread(decode_index, name, blob)

    async def index(self, manifest_id: ObjectId) -> PackIndex:
        """The index a reader uses: the newest one whose packs all exist."""
        cached = self._indexes.get(manifest_id)
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
        self._indexes[manifest_id] = chosen
        for kind in ObjectKind:
            self._located[kind].update(chosen.table(kind))
        self._plan[ObjectKind.TREE].update(dict.fromkeys(chosen.trees))  # a walk reads them
        return chosen

    async def reload_index(self, manifest_id: ObjectId) -> bool:
        """Read a manifest's indexes again; True if the one now chosen names other packs.

        A collection that repacks a kept manifest writes a relocated index and
        deletes the old packs at its next run, so a long-lived reader (`cas
        mount`) that finds a pack gone reloads the index before it gives up.
        """
        old = self._indexes.pop(manifest_id, None)
        try:
            new = await self.index(manifest_id)
        except BaseException:
            if old is not None:  # no readable index now: keep the locations known so far
                self._indexes[manifest_id] = old
            raise
        return old is None or set(new.packs()) != set(old.packs())

    def expect(self, manifest_id: ObjectId) -> None:
        """Load `manifest_id`'s index before the next object that is not located yet."""
        if manifest_id not in self._indexes:
            self._pending_indexes[manifest_id] = None

    async def locate(self, kind: ObjectKind, ids: Iterable[ObjectId]) -> dict[ObjectId, Location]:
        """Locations of `ids`; `ObjectNotFound` for one that no index read so far lists."""
        table = self._located[kind]
        wanted = list(dict.fromkeys(ids))
        if any(i not in table for i in wanted) and self._pending_indexes:
            async with self._index_lock:
                while self._pending_indexes:
                    manifest_id = next(iter(self._pending_indexes))
                    await self.index(manifest_id)
                    del self._pending_indexes[manifest_id]
        out = {}
        for object_id in wanted:
            loc = table.get(object_id)
            if loc is None:
                raise ObjectNotFound(f"{kind} {object_id} not found (in no index read)")
            out[object_id] = loc
        return out

    def adopt(self, index: PackIndex) -> None:
        """Make an index's locations readable (a put's own, before its manifest exists)."""
        self._indexes[index.manifest] = index
        for kind in ObjectKind:
            self._located[kind].update(index.table(kind))

    # ------------------------------------------------------------ reading packs

    def plan(self, ids: Iterable[ObjectId]) -> None:
        """Chunks this run will fetch: a ranged read also keeps their neighbours for later."""
        self._plan[ObjectKind.CHUNK].update(dict.fromkeys(ids))

    async def read_located(
        self,
        kind: ObjectKind,
        locations: dict[ObjectId, Location],
        max_size: int,
        *,
        ahead: bool = True,
    ) -> dict[ObjectId, bytes]:
        """Fetch, decompress and verify objects at known locations, merging neighbours.

        With `ahead`, planned objects in the same packs are read along and
        kept for later; without, exactly `locations` are read (verification
        of one index's locations).
        """
        for object_id, loc in locations.items():
            if loc.raw > max_size:
                raise IntegrityError(
                    str(kind), str(object_id), f"declares {loc.raw} bytes, more than {max_size}"
                )
        members = self._with_planned(kind, locations) if ahead else list(locations.items())
        if len(members) > len(locations):
            claim = asyncio.Event()
            along = [(kind, i) for i, _ in members[len(locations) :]]
            for key in along:
                self._ahead[key] = claim
            try:
                return await self._read_ranges(kind, locations, merge_ranges(members))
            except (IntegrityError, ObjectNotFound):
                pass  # a neighbour read along may be what is damaged: read just what was asked
            finally:
                for key in along:
                    if self._ahead.get(key) is claim:
                        del self._ahead[key]
                claim.set()
        exact = merge_ranges(list(locations.items()))
        return await read_twice(lambda: self._read_ranges(kind, locations, exact))

    async def _read_ranges(
        self,
        kind: ObjectKind,
        locations: dict[ObjectId, Location],
        ranges: list[tuple[ObjectId, int, int, list[tuple[ObjectId, Location]]]],
    ) -> dict[ObjectId, bytes]:
        limit = asyncio.Semaphore(max(1, self.store.capabilities.max_concurrency))

        async def read(
            pack: ObjectId, start: int, length: int, members: list[tuple[ObjectId, Location]]
        ) -> bytes:
            named = next((i for i, _ in members if i in locations), members[0][0])
            try:
                async with limit:
                    return await self.store.get_range(Kind.PACK, pack, start, length)
            except ObjectNotFound:
                raise ObjectNotFound(
                    f"{kind} {named} not found: its pack {pack} is missing"
                ) from None
            except IntegrityError as exc:
                raise IntegrityError(
                    str(kind), str(named), f"in pack {pack}: {exc.detail}"
                ) from None

        blobs = await asyncio.gather(*(read(p, s, n, m) for p, s, n, m in ranges))
        with self._counter_lock:
            self.reads += len(ranges)

        def cut_and_verify() -> dict[ObjectId, bytes]:
            out: dict[ObjectId, bytes] = {}
            frames: list[tuple[ObjectId, memoryview]] = []
            for (_, start, _, members), blob in zip(ranges, blobs, strict=True):
                view = memoryview(blob)
                for object_id, loc in members:
                    frame = view[loc.offset - start : loc.offset - start + loc.stored]
                    entry = PackEntry(kind, object_id, loc.offset, loc.stored, loc.raw)
                    if object_id in locations:
                        out[object_id] = decode_frame(entry, frame)
                        frames.append((object_id, frame))
                    else:
                        self._stage(kind, object_id, bytes(frame))  # a copy: frees the read
            if kind is ObjectKind.CHUNK:
                with self._counter_lock:
                    self.chunks_from_store += len(frames)
                    self.bytes_from_store += sum(len(f) for _, f in frames)
            if self.cache is not None and frames:
                self.cache.put_many((i, bytes(f)) for i, f in frames)
            return out

        return await asyncio.to_thread(cut_and_verify)

    def _with_planned(
        self, kind: ObjectKind, locations: dict[ObjectId, Location]
    ) -> list[tuple[ObjectId, Location]]:
        """The requested frames plus planned objects in the same packs (read ahead once)."""
        members = list(locations.items())
        plan = self._plan[kind]
        if not plan:
            return members
        for object_id in locations:
            plan.pop(object_id, None)
        packs = {loc.pack for loc in locations.values()}
        table = self._located[kind]
        nearby = sorted(
            (loc.pack, loc.offset, object_id, loc)
            for object_id in plan
            if (loc := table.get(object_id)) is not None
            and loc.pack in packs
            and (kind, object_id) not in self._staged
        )
        # In pack order, not the order they will be asked for: neighbours merge
        # into long ranged reads (a pack's order is the put's, not the get's).
        ahead = []
        budget = _AHEAD_MAX
        for _, _, object_id, loc in nearby:
            budget -= loc.stored
            if budget < 0:
                break
            ahead.append((object_id, loc))
        for object_id, _ in ahead:
            del plan[object_id]  # claimed by this read: no other read takes it
        return members + ahead

    def _stage(self, kind: ObjectKind, object_id: ObjectId, frame: bytes) -> None:
        """Keep a read-ahead frame: in the cache if there is one, else in bounded memory."""
        if self.cache is not None:
            self.cache.put_many([(object_id, frame)])
            return
        with self._counter_lock:
            if self._staged_bytes + len(frame) <= _STAGED_MAX:
                self._staged[kind, object_id] = frame
                self._staged_bytes += len(frame)

    def _take_staged(
        self, kind: ObjectKind, ids: list[ObjectId], max_size: int
    ) -> dict[ObjectId, bytes]:
        out = {}
        for object_id in ids:
            with self._counter_lock:
                frame = self._staged.pop((kind, object_id), None)
                if frame is None:
                    continue
                self._staged_bytes -= len(frame)
            out[object_id] = decode_object(str(kind), object_id, frame, max_size)
            if kind is ObjectKind.CHUNK:
                with self._counter_lock:
                    self.chunks_from_store += 1
                    self.bytes_from_store += len(frame)
        return out

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
    ) -> dict[ObjectId, bytes]:
        wanted = list(dict.fromkeys(ids))
        claims = {self._ahead[kind, i] for i in wanted if (kind, i) in self._ahead}
        if claims:  # another read is bringing some along: wait for it, not fetch twice
            await asyncio.gather(*(claim.wait() for claim in claims))
        found: dict[ObjectId, bytes] = {}
        if self.cache is not None and wanted:
            found = await asyncio.to_thread(self._from_cache, wanted, max_size, kind)
        rest = [i for i in wanted if i not in found]
        if rest and self._staged:
            found.update(self._take_staged(kind, rest, max_size))
            rest = [i for i in rest if i not in found]
        if rest and local is not None:
            found.update(await asyncio.to_thread(local, rest))
            rest = [i for i in rest if i not in found]
        waiting = {i: self._inflight[kind, i] for i in rest if (kind, i) in self._inflight}
        mine = [i for i in rest if i not in waiting]
        if mine:
            found.update(await self._fetch_shared(kind, mine, max_size))
        for object_id, future in waiting.items():
            found[object_id] = await asyncio.shield(future)
        return found

    async def _fetch_shared(
        self, kind: ObjectKind, ids: list[ObjectId], max_size: int
    ) -> dict[ObjectId, bytes]:
        """One merged read of the store that concurrent callers can wait on per id."""
        loop = asyncio.get_running_loop()
        futures = {i: loop.create_future() for i in ids}
        for object_id, future in futures.items():
            self._inflight[kind, object_id] = future
        try:
            data = await self.read_located(kind, await self.locate(kind, ids), max_size)
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
                with self._counter_lock:
                    self.chunks_from_cache += 1
                    self.bytes_from_cache += len(blob)
        return out

    # ------------------------------------------------------------ trees, manifests

    async def get_tree(self, object_id: ObjectId) -> Tree:
        """Fetch, verify and strictly parse a tree."""
        return (await self.get_trees([object_id]))[object_id]

    async def get_trees(self, ids: Sequence[ObjectId]) -> dict[ObjectId, Tree]:
        """Many trees: merged ranged reads and one thread hop to parse them."""
        data = await self._get_objects(ObjectKind.TREE, ids, MAX_TREE_BYTES)

        def parse() -> dict[ObjectId, Tree]:
            return {i: Tree.from_bytes(data[i], where=f"tree {i}") for i in dict.fromkeys(ids)}

        if sum(len(d) for d in data.values()) < 64 << 10:  # cheaper than a thread hop
            return parse()
        return await asyncio.to_thread(parse)

    async def put_manifest(self, manifest: Manifest, index: PackIndex) -> ObjectId:
        """Store a put's index, then its manifest: the last writes, after every pack."""
        data = manifest.to_bytes()
        object_id, blob = encode_object(data, self.level)
        if index.manifest != object_id:
            raise ValueError("index built for another manifest")
        name, index_blob = await asyncio.to_thread(encode_index, index, self.level)
        await self.store.put_if_absent(Kind.INDEX, name, index_blob)
        await self.store.put_if_absent(Kind.MANIFEST, object_id, blob)
        self.adopt(index)
        return object_id

    async def put_index(self, index: PackIndex) -> None:
        """Store another index of a manifest that is already stored (a put's repair)."""
        name, blob = await asyncio.to_thread(encode_index, index, self.level)
        await self.store.put_if_absent(Kind.INDEX, name, blob)
        self.adopt(index)

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

    async def resolve(self, name: str) -> ObjectId:
        """A manifest id from 64 hex characters, a ref name, or a unique id prefix.

        A name that is both a ref and a hex prefix means the ref (as in git).
        """
        if is_object_id(name):
            return ObjectId.parse(name)
        prefix = name if _ID_PREFIX_RE.fullmatch(name) else None
        validate_ref_name(name)
        try:
            return await self.store.read_ref(name)
        except ObjectNotFound:
            pass
        if prefix is not None:
            found = [info.id async for info in self.store.list(Kind.MANIFEST, prefix)]
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                shown = ", ".join(str(i) for i in sorted(found)[:10])
                more = f" and {len(found) - 10} more" if len(found) > 10 else ""
                raise UsageError(
                    f"id prefix {name!r} is ambiguous: {len(found)} manifests match ({shown}{more})"
                )
        raise ObjectNotFound(f"no manifest id or ref named {name!r}{await self._suggest(name)}")

    async def _suggest(self, name: str) -> str:
        """The "did you mean" tail of a not-found error: close ref names, or where to look."""
        refs = [ref.name async for ref in self.store.list_refs("")]
        close = difflib.get_close_matches(name, refs, n=3, cutoff=0.6)
        if close:
            return f"; did you mean {' or '.join(repr(c) for c in close)}? (cas refs lists them)"
        return " (cas refs lists the refs)" if refs else ""

    async def create_ref_once(self, name: str, target: ObjectId) -> bool:
        """Create a ref; False if the name is taken."""
        try:
            await self.store.create_ref(name, target)
        except AlreadyExists:
            return False
        return True


_ID_PREFIX_RE: Final = re.compile(r"[0-9a-f]{8,63}")
"""A unique prefix of a manifest id is accepted from 8 hex characters on (as git and restic)."""
_STAGED_MAX: Final = 64 << 20
"""Read-ahead frames kept in memory when there is no chunk cache."""
_AHEAD_MAX: Final = 32 << 20
"""Stored bytes of planned chunks one read may add to what was asked for."""


async def read_twice(read: Callable[[], Awaitable[T]]) -> T:
    """A read whose bytes do not verify is made once more before the object is called corrupt.

    A damaged answer (a flipped bit or a cut body past the transport's own
    checks, a proxy's fault) is not a damaged object; as restic does, one
    more read tells them apart. The retry layer repeats only unavailability.
    """
    try:
        return await read()
    except IntegrityError as exc:
        log.info("%s; reading it again", exc)
        return await read()


def merge_ranges(
    members: list[tuple[ObjectId, Location]],
) -> list[tuple[ObjectId, int, int, list[tuple[ObjectId, Location]]]]:
    """(pack, start, length, frames) reads covering `members`, neighbours merged."""
    by_pack: dict[ObjectId, list[tuple[ObjectId, Location]]] = {}
    for object_id, loc in members:
        by_pack.setdefault(loc.pack, []).append((object_id, loc))
    out = []
    for pack, items in by_pack.items():
        items.sort(key=lambda item: item[1].offset)
        start = end = -1
        group: list[tuple[ObjectId, Location]] = []
        for object_id, loc in items:
            stop = loc.offset + loc.stored
            if group and loc.offset - end <= MERGE_GAP and stop - start <= MAX_READ:
                group.append((object_id, loc))
                end = max(end, stop)
                continue
            if group:
                out.append((pack, start, end - start, group))
            start, end, group = loc.offset, stop, [(object_id, loc)]
        if group:
            out.append((pack, start, end - start, group))
    return out


async def read_pack_entries(store: Store, pack_id: ObjectId, size: int) -> list[PackEntry]:
    """A pack's entries from its footer and trailer: two ranged reads, not the whole pack."""
    footer = await store.get_range(Kind.PACK, pack_id, size - FOOTER.size, FOOTER.size)
    trailer_len, _ = parse_footer(pack_id, footer, size)
    if trailer_len == 0:
        return []
    start = size - FOOTER.size - trailer_len
    trailer = await store.get_range(Kind.PACK, pack_id, start, trailer_len)
    return parse_trailer(pack_id, trailer, size, max_chunk=DEFAULT_MAX_CHUNK)
