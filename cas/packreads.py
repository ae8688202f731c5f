"""Reading frames out of packs: merged ranged reads, verified, neighbours read ahead.

Frames of one pack closer than `MERGE_GAP` are read together. A read also
takes along planned objects of the same packs (`PackReader.plan`), kept in
the chunk cache or in bounded memory for when they are asked for; a read
that brings one along is awaited by whoever asks for it meanwhile, so it
is never fetched twice. Every frame is decompressed within its declared
size and checked against its id before anyone sees it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, TypeVar

from cas.caches.chunks import ChunkCache
from cas.codec import decode_object
from cas.errors import IntegrityError, ObjectNotFound
from cas.ids import ObjectId
from cas.pack import ObjectKind, PackEntry, decode_frame
from cas.packindex import Location
from cas.store.base import Kind, Store

T = TypeVar("T")
log = logging.getLogger("cas.repo")

MERGE_GAP: Final = 256 << 10
"""Frames of one pack closer than this are read together (the gap is read and dropped)."""
MAX_READ: Final = 16 << 20
"""No merged ranged read is longer."""
_STAGED_MAX: Final = 64 << 20
"""Read-ahead frames kept in memory when there is no chunk cache."""
_AHEAD_MAX: Final = 32 << 20
"""Stored bytes of planned chunks one read may add to what was asked for."""


@dataclass
class ReadCounts:
    """What a repository read, and from where (chunk counts and stored bytes)."""

    chunks_from_store: int = 0
    bytes_from_store: int = 0
    chunks_from_cache: int = 0
    bytes_from_cache: int = 0
    reads: int = 0
    """Ranged reads of packs issued."""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)


class PackReader:
    """Ranged reads of the packs of one store, for one repository."""

    def __init__(
        self,
        store: Store,
        cache: ChunkCache | None,
        located: dict[ObjectKind, dict[ObjectId, Location]],
        counts: ReadCounts,
    ) -> None:
        self.store = store
        self.cache = cache
        self.located = located
        """Where each object lies, as the indexes read so far say (shared with them)."""
        self.counts = counts
        self.plan: dict[ObjectKind, dict[ObjectId, None]] = {k: {} for k in ObjectKind}
        """Objects expected to be read: a ranged read takes those in the same pack along."""
        self.ahead: dict[tuple[ObjectKind, ObjectId], asyncio.Event] = {}
        """Objects a read in flight brings along (not asked for): set when it ends."""
        self._staged: dict[tuple[ObjectKind, ObjectId], bytes] = {}
        self._staged_bytes = 0

    @property
    def has_staged(self) -> bool:
        """Whether any read-ahead frame waits in memory."""
        return bool(self._staged)

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
                self.ahead[key] = claim
            try:
                return await self._read_ranges(kind, locations, merge_ranges(members))
            except (IntegrityError, ObjectNotFound):
                pass  # a neighbour read along may be what is damaged: read just what was asked
            finally:
                for key in along:
                    if self.ahead.get(key) is claim:
                        del self.ahead[key]
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
        with self.counts.lock:
            self.counts.reads += len(ranges)

        def cut_and_verify() -> dict[ObjectId, bytes]:
            out: dict[ObjectId, bytes] = {}
            frames: list[tuple[ObjectId, memoryview]] = []
            along: list[tuple[ObjectId, bytes]] = []
            for (_, start, _, members), blob in zip(ranges, blobs, strict=True):
                view = memoryview(blob)
                for object_id, loc in members:
                    frame = view[loc.offset - start : loc.offset - start + loc.stored]
                    entry = PackEntry(kind, object_id, loc.offset, loc.stored, loc.raw)
                    if object_id in locations:
                        out[object_id] = decode_frame(entry, frame)
                        frames.append((object_id, frame))
                    else:
                        along.append((object_id, bytes(frame)))  # a copy: frees the read
            if kind is ObjectKind.CHUNK:
                with self.counts.lock:
                    self.counts.chunks_from_store += len(frames)
                    self.counts.bytes_from_store += sum(len(f) for _, f in frames)
            if self.cache is not None:
                # One hand-over per read; frames read along first, as this get asks for them next.
                self.cache.put_many([*along, *((i, bytes(f)) for i, f in frames)])
            else:
                self._stage(kind, along)
            return out

        return await asyncio.to_thread(cut_and_verify)

    def _with_planned(
        self, kind: ObjectKind, locations: dict[ObjectId, Location]
    ) -> list[tuple[ObjectId, Location]]:
        """The requested frames plus planned objects in the same packs (read ahead once)."""
        members = list(locations.items())
        plan = self.plan[kind]
        if not plan:
            return members
        for object_id in locations:
            plan.pop(object_id, None)
        packs = {loc.pack for loc in locations.values()}
        table = self.located[kind]
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

    def _stage(self, kind: ObjectKind, frames: list[tuple[ObjectId, bytes]]) -> None:
        """Keep read-ahead frames in bounded memory (there is no chunk cache); drop the rest."""
        with self.counts.lock:
            for object_id, frame in frames:
                if self._staged_bytes + len(frame) <= _STAGED_MAX:
                    self._staged[kind, object_id] = frame
                    self._staged_bytes += len(frame)

    def take_staged(
        self, kind: ObjectKind, ids: list[ObjectId], max_size: int
    ) -> dict[ObjectId, bytes]:
        """Read-ahead frames among `ids`, decoded and verified (each is taken once)."""
        out = {}
        for object_id in ids:
            with self.counts.lock:
                frame = self._staged.pop((kind, object_id), None)
                if frame is None:
                    continue
                self._staged_bytes -= len(frame)
            out[object_id] = decode_object(str(kind), object_id, frame, max_size)
            if kind is ObjectKind.CHUNK:
                with self.counts.lock:
                    self.counts.chunks_from_store += 1
                    self.counts.bytes_from_store += len(frame)
        return out


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
