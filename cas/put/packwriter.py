"""One put's writer: encoded chunks and trees in, sealed packs uploaded, locations out.

The only code that packs and writes chunks and trees. Reader threads and
worker processes compress; their frames come here, on the event loop, and
are appended to the open pack. A pack is sealed once it holds
`TARGET_PACK_BYTES` and uploaded (create-only) while the next one fills; at
most `uploads` sealed packs wait or travel at a time, which bounds memory.

"Is it stored?" is answered from what the writer knows, never by asking the
store per chunk: the locations of the parent manifest's index (checked once
that its packs exist) and the frames this put packed itself. The index a put
writes names only packs that were uploaded before it (`close` waits for
them), so an interrupted put leaves nothing that names a missing pack.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from cas.errors import IntegrityError
from cas.ids import ObjectId, new_hasher
from cas.pack import (
    FOOTER,
    HEAD_MAGIC,
    MAX_ENTRIES,
    TAIL_MAGIC,
    TARGET_PACK_BYTES,
    ObjectKind,
    PackEntry,
    entries_from_trailer,
    trailer_bytes,
)
from cas.packindex import Location, PackIndex
from cas.store.base import Kind, Store, Upload

DEFAULT_UPLOADS: Final = 2
MAX_CHUNK_LIMIT: Final = 16 << 20
"""The largest chunk any manifest may declare (`cas.chunking`)."""


@dataclass
class WriterStats:
    """What the writer stored."""

    packs: int = 0
    bytes_uploaded: int = 0
    objects: int = 0


class PackWriter:
    """Packs frames and uploads packs for one put."""

    def __init__(
        self,
        store: Store,
        *,
        target: int = TARGET_PACK_BYTES,
        uploads: int = DEFAULT_UPLOADS,
        spool_dir: str | None = None,
    ) -> None:
        self.store = store
        self.target = target
        self._located: dict[ObjectKind, dict[ObjectId, Location]] = {
            ObjectKind.CHUNK: {},
            ObjectKind.TREE: {},
        }
        self._pending: dict[ObjectKind, set[ObjectId]] = {
            ObjectKind.CHUNK: set(),
            ObjectKind.TREE: set(),
        }
        self._open: dict[ObjectKind, _OpenPack] = {}
        """One open pack per kind: trees apart from chunks, so that a reader finds all
        the trees of a manifest side by side (a few ranged reads) instead of
        scattered between the chunks."""
        self._lock = asyncio.Lock()
        self.spool_dir = spool_dir
        self._slots = asyncio.Semaphore(max(1, uploads))
        self._uploads: set[asyncio.Task[None]] = set()
        self._failure: BaseException | None = None
        self.stats = WriterStats()
        self.on_stored: Callable[[ObjectId, list[PackEntry]], None] | None = None
        """Called for each sealed pack just before it is stored (a put's journal, so a
        re-run can reuse it)."""

    # ------------------------------------------------------------ what is known

    async def adopt(self, index: PackIndex) -> int:
        """Reuse what an earlier index locates, minus packs the store no longer holds.

        Returns the number of objects adopted.
        """
        packs = index.packs()
        gone = await self.store.missing(Kind.PACK, list(packs)) if packs else set()
        adopted = 0
        for kind in ObjectKind:
            table = self._located[kind]
            for object_id, loc in index.table(kind).items():
                if loc.pack not in gone and object_id not in table:
                    table[object_id] = loc
                    adopted += 1
        return adopted

    async def adopt_packs(self, trailers: dict[ObjectId, bytes]) -> int:
        """Reuse packs an interrupted put stored (their trailers), those the store still holds."""
        if not trailers:
            return 0
        gone = await self.store.missing(Kind.PACK, list(trailers))
        adopted = 0
        for pack, trailer in trailers.items():
            if pack in gone:
                continue
            try:
                entries = entries_from_trailer(pack, trailer, max_chunk=MAX_CHUNK_LIMIT)
            except IntegrityError:
                continue  # a damaged journal entry is only a lost hint
            for entry in entries:
                table = self._located[entry.kind]
                if entry.id not in table:
                    table[entry.id] = Location(pack, entry.offset, entry.stored, entry.raw)
                    adopted += 1
        return adopted

    def known_chunks(self) -> frozenset[ObjectId]:
        """Chunk ids already located (sent to worker processes so they skip compressing them)."""
        return frozenset(self._located[ObjectKind.CHUNK])

    def has(self, kind: ObjectKind, object_id: ObjectId) -> bool:
        """Located, or packed by this put and on its way."""
        return object_id in self._located[kind] or object_id in self._pending[kind]

    def missing(self, kind: ObjectKind, ids: Iterable[ObjectId]) -> set[ObjectId]:
        """The ids neither located nor packed by this put."""
        return {i for i in ids if not self.has(kind, i)}

    def location(self, kind: ObjectKind, object_id: ObjectId) -> Location:
        """Where an object is stored (after `close`, for every object this put packed)."""
        return self._located[kind][object_id]

    def index(
        self, manifest_id: ObjectId, chunk_ids: Iterable[ObjectId], tree_ids: Iterable[ObjectId]
    ) -> PackIndex:
        """The index of a manifest reaching exactly these objects (call after `close`)."""
        index = PackIndex(manifest_id)
        chunks, trees = self._located[ObjectKind.CHUNK], self._located[ObjectKind.TREE]
        for object_id in chunk_ids:
            index.chunks[object_id] = chunks[object_id]
        for object_id in tree_ids:
            index.trees[object_id] = trees[object_id]
        return index

    # ------------------------------------------------------------ writing

    async def add(
        self, kind: ObjectKind, items: Sequence[tuple[ObjectId, int, bytes]]
    ) -> list[bool]:
        """Append encoded objects `(id, raw length, frame)`; True for each one packed now."""
        self._raise_failure()
        async with self._lock:  # one pack fills at a time, whatever awaits a seal
            added = []
            frames: list[bytes] = []
            for object_id, raw, frame in items:
                if self.has(kind, object_id):
                    added.append(False)
                    continue
                pack = self._open.get(kind)
                if pack is not None and pack.entries and pack.full(self.target - len(frame)):
                    self._write(pack, frames)
                    frames = []
                    await self._seal(kind)
                pack = self._pack(kind)
                pack.add(kind, object_id, raw, frame)
                frames.append(frame)
                self._pending[kind].add(object_id)
                self.stats.objects += 1
                added.append(True)
            pack = self._open.get(kind)
            if pack is not None and frames:
                self._write(pack, frames)
            if pack is not None and pack.full(self.target):
                await self._seal(kind)
        return added

    def _pack(self, kind: ObjectKind) -> _OpenPack:
        pack = self._open.get(kind)
        if pack is None:
            pack = self._open[kind] = _OpenPack(self.store.begin_upload(Kind.PACK, self.spool_dir))
        return pack

    def _write(self, pack: _OpenPack, frames: list[bytes]) -> None:
        """Frames go to the pack's spool at once: memory never holds a pack."""
        if frames:
            pack.upload.write(frames)
            for frame in frames:
                pack.hasher.update(frame)

    async def close(self) -> None:
        """Seal the open pack and wait until every pack is stored."""
        async with self._lock:
            for kind in list(self._open):
                if self._open[kind].entries:
                    await self._seal(kind)
        if self._uploads:
            await asyncio.gather(*self._uploads, return_exceptions=True)
        self._raise_failure()

    async def abort(self) -> None:
        """Stop uploading (a failed put): cancel what travels, drop what is open."""
        for task in self._uploads:
            task.cancel()
        await asyncio.gather(*self._uploads, return_exceptions=True)
        for pack in self._open.values():
            pack.upload.abort()
        self._open.clear()

    async def _seal(self, kind: ObjectKind) -> None:
        pack = self._open.pop(kind, None)
        if pack is None:
            return
        await self._slots.acquire()
        try:
            trailer = trailer_bytes(pack.entries)
            tail = [trailer, FOOTER.pack(len(trailer), len(pack.entries), TAIL_MAGIC)]
            self._write(pack, tail)
            pack_id = ObjectId(pack.hasher.digest())
        except BaseException:
            self._slots.release()
            pack.upload.abort()
            raise
        if self.on_stored is not None:
            # Noted before it is named, so a put killed in between still finds it
            # (a pack never stored is simply not found when the journal is read).
            self.on_stored(pack_id, pack.entries)
        task = asyncio.create_task(self._upload(pack, pack_id))
        self._uploads.add(task)
        task.add_done_callback(self._uploads.discard)
        # Its failure is raised from `_failure` (by `add` or `close`); a task leaving
        # the set before anyone awaits it would otherwise log "never retrieved" too.
        task.add_done_callback(_retrieve)

    async def _upload(self, pack: _OpenPack, pack_id: ObjectId) -> None:
        size = pack.upload.size
        try:
            await pack.upload.finish(pack_id)
        except BaseException as exc:
            if self._failure is None and not isinstance(exc, asyncio.CancelledError):
                self._failure = exc
            pack.upload.abort()
            raise
        finally:
            self._slots.release()
        self.stats.packs += 1
        self.stats.bytes_uploaded += size
        for entry in pack.entries:
            self._located[entry.kind][entry.id] = Location(
                pack_id, entry.offset, entry.stored, entry.raw
            )
            self._pending[entry.kind].discard(entry.id)

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


class _OpenPack:
    """A pack being written: its spool, running hash and entries."""

    def __init__(self, upload: Upload) -> None:
        self.upload = upload
        self.hasher = new_hasher()
        self.hasher.update(HEAD_MAGIC)
        upload.write([HEAD_MAGIC])
        self.entries: list[PackEntry] = []
        self.size = len(HEAD_MAGIC)

    def full(self, target: int) -> bool:
        return self.size >= target or len(self.entries) >= MAX_ENTRIES

    def add(self, kind: ObjectKind, object_id: ObjectId, raw: int, frame: bytes) -> None:
        self.entries.append(PackEntry(kind, object_id, self.size, len(frame), raw))
        self.size += len(frame)
