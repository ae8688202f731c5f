"""Moving frames between packs: repacking sparse packs, and salvaging damaged ones.

A pack is deleted only when no kept index names it. Packs from many puts
stay named as long as one live chunk of them is, so they slowly fill with
dead frames. A collection therefore copies the live frames of every kept
pack whose live bytes are below `GcOptions.repack_below` of its size into
new packs (frames are copied as they are, each verified first), writes a
relocated copy of every kept index that named such a pack, and deletes the
old index. The old packs are left alone in this run: a get or put that read
the old index just before may still read them. Unnamed now, they are
deleted by the next collection.

A put that adopted an old index while this ran names the old packs in its
own index; the next collection then sees them named and keeps them (and may
repack them again), so nothing a completed manifest needs is ever deleted.

`cas verify --repair` moves frames the same way out of packs that hold a
corrupt frame (`FrameMover.move(..., salvage=True)`): intact frames are
copied, corrupt ones dropped, and the relocated indexes leave the dropped
objects out, so the next put of a source holding them uploads them again.
A new pack never takes the name of a pack being salvaged (`avoid`): see
`_seal_apart`.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Final

from cas.errors import IntegrityError, ObjectNotFound
from cas.ids import ObjectId, hash_bytes
from cas.indexbook import read_index
from cas.pack import (
    ENTRY,
    FOOTER,
    HEAD_MAGIC,
    MAX_ENTRIES,
    TARGET_PACK_BYTES,
    ObjectKind,
    PackBuilder,
    PackEntry,
    SealedPack,
    decode_frame,
    encode_frames,
)
from cas.packindex import Location, PackIndex
from cas.packreads import merge_ranges
from cas.store.base import Kind, Store
from cas.store.encoded import write_index

_PACK_OVERHEAD = len(HEAD_MAGIC) + FOOTER.size
_MOVED_PER_PACK: Final = MAX_ENTRIES - 1
"""Frames a new pack takes at most, so that a filler frame always fits (`_seal_apart`)."""
_FILLER_BYTES: Final = 32

Members = dict[int, tuple[ObjectKind, ObjectId, Location]]
"""The frames of one pack that indexes name: offset -> (kind, id, location)."""
Frame = tuple[ObjectId, int]
"""A frame by where it lies: (pack, offset)."""


@dataclass
class Marks:
    """What a collection's mark phase knows of the packs it keeps."""

    live: dict[ObjectId, Members]
    """Per pack: the frames some kept index names."""
    pack_sizes: dict[ObjectId, int]
    marked_indexes: dict[ObjectId, set[ObjectId]]
    """Per kept index: the packs it names."""


@dataclass
class Repacked:
    """What a repack did (or, in a dry run, would do)."""

    pack_sizes: list[int] = field(default_factory=list)
    """Sizes of the packs whose live frames were copied out."""
    written: list[int] = field(default_factory=list)
    """Sizes of the new packs."""
    unreadable: list[tuple[ObjectId, str]] = field(default_factory=list)
    indexes_rewritten: int = 0


def sparse_packs(marks: Marks, below: float) -> list[ObjectId]:
    """Kept packs whose live frames fill less than `below` of them."""
    out = []
    for pack, size in marks.pack_sizes.items():
        frames = marks.live.get(pack, {})
        # What the live frames would take in a pack of their own, trailer included,
        # so that a pack of tiny frames that are all live does not look sparse.
        live = sum(loc.stored + ENTRY.size for _, _, loc in frames.values()) + _PACK_OVERHEAD
        if live < below * size:
            out.append(pack)
    return sorted(out)


class FrameMover:
    """Copies verified frames into new packs and remembers where each one went.

    An object whose frames lie in several of the moved packs is copied once
    and every one of its old places is relocated to the copy. No new pack
    takes a name in `avoid` (the damaged packs a salvage replaces).
    """

    def __init__(
        self,
        store: Store,
        on_written: Callable[[int], None],
        avoid: Collection[ObjectId] = (),
    ) -> None:
        self.store = store
        self._avoid = frozenset(avoid)
        self.relocated: dict[Frame, Location] = {}
        self.dropped: set[Frame] = set()
        """Frames that did not verify (salvage only): no relocated index names them."""
        self._on_written = on_written
        self._builder = PackBuilder()
        self._waiting: list[Frame] = []
        self._first_copy: dict[tuple[str, ObjectId], Frame] = {}
        self._duplicates: dict[Frame, Frame] = {}

    async def move(self, pack: ObjectId, members: Members, *, salvage: bool = False) -> None:
        """Copy `members` of `pack`; a frame that does not verify fails it, unless `salvage`."""
        for offset, entry, frame in await _read_frames(self.store, pack, members, salvage):
            if frame is None:
                self.dropped.add((pack, offset))
                continue
            earlier = self._first_copy.get((str(entry.kind), entry.id))
            if earlier is not None:
                self._duplicates[pack, offset] = earlier
                continue
            self._first_copy[str(entry.kind), entry.id] = (pack, offset)
            if self._builder.entries and (
                self._builder.full(TARGET_PACK_BYTES - len(frame))
                or len(self._builder.entries) >= _MOVED_PER_PACK
            ):
                await self._seal()
            self._builder.add(entry.kind, entry.id, entry.raw, frame)
            self._waiting.append((pack, offset))

    async def finish(self) -> None:
        """Store the last pack; every moved frame has its new place from now on."""
        await self._seal()
        for origin, copy in self._duplicates.items():
            self.relocated[origin] = self.relocated[copy]

    async def _seal(self) -> None:
        if not self._builder.entries:
            return
        sealed = await asyncio.to_thread(_seal_apart, self._builder, self._avoid)
        if await self.store.put_if_absent(Kind.PACK, sealed.id, sealed.data):
            self._on_written(len(sealed.data))
        moved = sealed.entries[: len(self._waiting)]  # a filler frame, if any, comes last
        for origin, entry in zip(self._waiting, moved, strict=True):
            self.relocated[origin] = Location(sealed.id, entry.offset, entry.stored, entry.raw)
        self._builder, self._waiting = PackBuilder(), []

    async def relocate_index(
        self,
        name: ObjectId,
        before_delete: Callable[[], None],
        leave_out: Collection[ObjectId] = (),
    ) -> bool:
        """Write index `name` again with moved frames at their new places, then drop the old one.

        Entries of dropped frames, and any still in a pack of `leave_out`,
        are left out. `before_delete` raises if the old index may not be
        deleted now (a lapsed lease). False if nothing changed.
        """
        try:
            old = await read_index(self.store, name, reads=1)
        except ObjectNotFound:
            return False
        new = PackIndex(old.manifest)
        for kind, object_id, loc in old.items():
            where = (loc.pack, loc.offset)
            moved = self.relocated.get(where, loc)
            if where in self.dropped or moved.pack in leave_out:
                continue
            new.table(kind)[object_id] = moved
        new_name, _ = await write_index(self.store, new, replacing=name)
        if new_name == name:
            return False
        before_delete()
        await self.store.delete(Kind.INDEX, name)
        return True


def _seal_apart(builder: PackBuilder, avoid: frozenset[ObjectId]) -> SealedPack:
    """Seal `builder` into a pack whose name is not in `avoid`.

    Packs are named by their bytes, and a salvage can lay out a damaged
    pack's exact bytes again: when only its trailer was damaged (every frame
    is copied, in order), or when its lost frames came back from copies in
    other damaged packs in the same order. Under that name the store keeps
    the damaged bytes (it is create-only, and "already there" is what it
    answers), so the relocated indexes would name the damage and the damaged
    pack could never be deleted. Such a pack gets one more frame, last: a
    chunk of random bytes that no index names. Its bytes, and so its name,
    are then new; as after any salvage, the damaged pack is deleted only
    once the copy is stored and the indexes name it, so no crash can leave
    a frame with no copy. Another frame order would not do for a pack of
    one frame; a filler works for every pack (`move` leaves it room within
    `MAX_ENTRIES`), and costs 49 bytes of trailer and a frame of ~40 bytes.
    """
    first = sealed = builder.seal()
    while sealed.id in avoid:
        again = PackBuilder()
        for e in first.entries:
            again.add(e.kind, e.id, e.raw, first.data[e.offset : e.offset + e.stored])
        filler = secrets.token_bytes(_FILLER_BYTES)
        [(filler_id, raw, frame)] = encode_frames([(hash_bytes(filler), filler)])
        again.add(ObjectKind.CHUNK, filler_id, raw, frame)
        sealed = again.seal()
    return sealed


async def repack(
    store: Store,
    marks: Marks,
    *,
    below: float,
    dry_run: bool,
    before_delete: Callable[[], None],
) -> Repacked:
    """Copy live frames out of sparse packs and relocate the indexes that name them."""
    done = Repacked()
    sparse = sparse_packs(marks, below)
    if dry_run or not sparse:
        done.pack_sizes = [marks.pack_sizes[pack] for pack in sparse]
        return done
    mover = FrameMover(store, done.written.append)
    moved: set[ObjectId] = set()
    for pack in sparse:
        try:
            await mover.move(pack, marks.live.get(pack, {}))
        except (IntegrityError, ObjectNotFound) as exc:
            done.unreadable.append((pack, f"not repacked: {exc}"))
            continue
        moved.add(pack)
        done.pack_sizes.append(marks.pack_sizes[pack])
    await mover.finish()
    for name, packs in sorted(marks.marked_indexes.items()):
        if packs & moved and await mover.relocate_index(name, before_delete):
            done.indexes_rewritten += 1
    return done


async def _read_frames(
    store: Store, pack: ObjectId, members: Members, salvage: bool
) -> list[tuple[int, PackEntry, bytes | None]]:
    """The frames of `members`, read in merged ranges, each verified.

    With `salvage`, a frame that does not verify (or a range that cannot be
    read) comes back as None instead of failing the pack.
    """
    entries = {
        offset: PackEntry(kind, object_id, offset, loc.stored, loc.raw)
        for offset, (kind, object_id, loc) in members.items()
    }
    located = [(ObjectId(bytes(32)), loc) for _, _, loc in members.values()]
    out: list[tuple[int, PackEntry, bytes | None]] = []
    for _, start, length, group in merge_ranges(located):
        try:
            blob = await store.get_range(Kind.PACK, pack, start, length)
        except (IntegrityError, ObjectNotFound):
            if not salvage:
                raise
            blob = None
        for _, loc in group:
            entry = entries[loc.offset]
            frame = (
                blob[loc.offset - start : loc.offset - start + loc.stored]
                if blob is not None
                else await _read_alone(store, pack, loc)
            )
            try:
                if frame is None:
                    raise IntegrityError(str(entry.kind), str(entry.id), "unreadable")
                await asyncio.to_thread(decode_frame, entry, frame)
            except IntegrityError:
                if not salvage:
                    raise
                frame = await _read_again(store, pack, loc, entry) if blob is not None else None
            out.append((loc.offset, entry, frame))
    return out


async def _read_again(
    store: Store, pack: ObjectId, loc: Location, entry: PackEntry
) -> bytes | None:
    """A frame that did not verify, read once more by itself before salvage drops it.

    One damaged answer (a flipped or cut read) is not a damaged frame, and a
    dropped frame is lost for good.
    """
    frame = await _read_alone(store, pack, loc)
    if frame is None:
        return None
    try:
        await asyncio.to_thread(decode_frame, entry, frame)
    except IntegrityError:
        return None
    return frame


async def _read_alone(store: Store, pack: ObjectId, loc: Location) -> bytes | None:
    """One frame by itself, after the range around it could not be read."""
    try:
        return await store.get_range(Kind.PACK, pack, loc.offset, loc.stored)
    except (IntegrityError, ObjectNotFound):
        return None
