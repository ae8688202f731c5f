"""Repacking: reclaim the space of packs that are mostly dead.

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
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from cas.errors import IntegrityError, ObjectNotFound
from cas.ids import ObjectId
from cas.pack import (
    ENTRY,
    FOOTER,
    HEAD_MAGIC,
    TARGET_PACK_BYTES,
    PackBuilder,
    PackEntry,
    SealedPack,
    decode_frame,
)
from cas.packindex import Location, PackIndex, decode_index, encode_index
from cas.repo import MAX_INDEX_BLOB, merge_ranges
from cas.store.base import Kind

if TYPE_CHECKING:
    from cas.gc import Collector

_PACK_OVERHEAD = len(HEAD_MAGIC) + FOOTER.size


def sparse_packs(collector: Collector) -> list[ObjectId]:
    """Kept packs whose live frames fill less than the threshold."""
    below = collector.options.repack_below
    out = []
    for pack, size in collector.pack_sizes.items():
        frames = collector.live.get(pack, {})
        # What the live frames would take in a pack of their own, trailer included,
        # so that a pack of tiny frames that are all live does not look sparse.
        live = sum(loc.stored + ENTRY.size for _, _, loc in frames.values()) + _PACK_OVERHEAD
        if live < below * size:
            out.append(pack)
    return sorted(out)


async def repack(collector: Collector) -> None:
    """Copy live frames out of sparse packs and relocate the indexes that name them."""
    sparse = sparse_packs(collector)
    report = collector.report
    if not sparse:
        return
    if collector.options.dry_run:
        for pack in sparse:
            report.repacked.add(collector.pack_sizes[pack])
        return
    store = collector.store
    relocated: dict[tuple[ObjectId, int], Location] = {}
    builder = PackBuilder()
    waiting: list[tuple[ObjectId, int]] = []
    done: set[ObjectId] = set()
    first_copy: dict[tuple[str, ObjectId], tuple[ObjectId, int]] = {}
    duplicates: dict[tuple[ObjectId, int], tuple[ObjectId, int]] = {}
    """Frames of one object in several sparse packs: copied once, all relocated to the copy."""

    async def seal() -> None:
        nonlocal builder, waiting
        if not builder.entries:
            return
        sealed: SealedPack = await asyncio.to_thread(builder.seal)
        if await store.put_if_absent(Kind.PACK, sealed.id, sealed.data):
            report.repack_written.add(len(sealed.data))
        for origin, entry in zip(waiting, sealed.entries, strict=True):
            relocated[origin] = Location(sealed.id, entry.offset, entry.stored, entry.raw)
        builder, waiting = PackBuilder(), []

    for pack in sparse:
        try:
            frames = await _live_frames(collector, pack)
        except (IntegrityError, ObjectNotFound) as exc:
            report.unreadable.append((Kind.PACK, pack, f"not repacked: {exc}"))
            continue
        for offset, entry, frame in frames:
            earlier = first_copy.get((str(entry.kind), entry.id))
            if earlier is not None:
                duplicates[pack, offset] = earlier
                continue
            first_copy[str(entry.kind), entry.id] = (pack, offset)
            if builder.entries and builder.full(TARGET_PACK_BYTES - len(frame)):
                await seal()
            builder.add(entry.kind, entry.id, entry.raw, frame)
            waiting.append((pack, offset))
        done.add(pack)
        report.repacked.add(collector.pack_sizes[pack])
    await seal()
    for origin, copy in duplicates.items():
        relocated[origin] = relocated[copy]
    for name, packs in sorted(collector.marked_indexes.items()):
        if packs & done:
            await _relocate_index(collector, name, relocated)


async def _live_frames(collector: Collector, pack: ObjectId) -> list[tuple[int, PackEntry, bytes]]:
    """The live frames of one pack, read in merged ranges, each verified."""
    members = {
        offset: PackEntry(kind, object_id, offset, loc.stored, loc.raw)
        for offset, (kind, object_id, loc) in collector.live.get(pack, {}).items()
    }
    located = [(ObjectId(bytes(32)), loc) for _, _, loc in collector.live.get(pack, {}).values()]
    out = []
    for _, start, length, group in merge_ranges(located):
        blob = await collector.store.get_range(Kind.PACK, pack, start, length)
        for _, loc in group:
            entry = members[loc.offset]
            frame = blob[loc.offset - start : loc.offset - start + loc.stored]
            await asyncio.to_thread(decode_frame, entry, frame)
            out.append((loc.offset, entry, frame))
    return out


async def _relocate_index(
    collector: Collector, name: ObjectId, relocated: dict[tuple[ObjectId, int], Location]
) -> None:
    """Write the index again with moved frames at their new places, then drop the old one."""
    store = collector.store
    try:
        old = decode_index(name, await store.get(Kind.INDEX, name, max_size=MAX_INDEX_BLOB))
    except ObjectNotFound:
        return
    new = PackIndex(old.manifest)
    for kind, object_id, loc in old.items():
        new.table(kind)[object_id] = relocated.get((loc.pack, loc.offset), loc)
    new_name, blob = await asyncio.to_thread(encode_index, new)
    if new_name == name:
        return
    await store.put_if_absent(Kind.INDEX, new_name, blob)
    if collector._lease is not None:
        collector._lease.check()
    await store.delete(Kind.INDEX, name)
    collector.report.indexes_rewritten += 1
