"""Repair what `cas verify` found corrupt, so the next put of the source stores it again.

Writes are create-only, so a re-put cannot replace a damaged object in
place, and a put adopts the locations its parent's index names: a corrupt
frame would be named again by every later manifest. Repair therefore
removes every way to reach the damage:

1. Packs holding a corrupt frame: the intact frames that some index names
   are copied into new packs (each verified first), every index naming the
   damaged pack is written again without the corrupt frames (`FrameMover`,
   as a collection's repack does), the old index is deleted, then the pack.
   A new pack never takes a damaged pack's name, even when it holds that
   pack's exact bytes (`cas.gc.repack._seal_apart`): the store would keep
   the damaged bytes under it.
2. Manifest and index objects that do not verify are deleted.

3. Heal: a manifest missing objects (dropped now, or in packs that are gone)
   gets a new index that adds them where another index locates them in a
   pack that exists, e.g. a second copy stored by another put; it replaces
   the index it extends.

A manifest that still lacks objects reads as incomplete ("missing" in `cas
verify`, `ObjectNotFound` in `cas get`), never as wrong bytes. A put of a
source holding the lost content stores it again, and the next `cas verify
--repair` heals the old manifest from that put's packs (a put with
`--reproducible` of the same tree writes the same manifest, and so heals it
at once). Nothing intact is lost.

Repair runs under a collection's lease and records (`cas.gc.collector.Lease`), so a
put running meanwhile settles as it does against a collection: one that
adopted a damaged pack finds it gone and stores what it needs again
(docs/gc.md). Deleting needs the store's admin scope.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from cas.errors import FormatError, IntegrityError, ObjectNotFound
from cas.gc.collector import DEFAULT_GRACE, DEFAULT_LEASE, Lease
from cas.gc.repack import Frame, FrameMover, Members
from cas.gc.verify import VerifyReport, manifest_complete
from cas.ids import ObjectId
from cas.pack import ObjectKind
from cas.packindex import Location, PackIndex
from cas.repo import Repository
from cas.store.base import Kind
from cas.store.encoded import write_index
from cas.store.listing import list_concurrently


@dataclass
class RepairReport:
    """What a repair changed."""

    packs_replaced: list[ObjectId] = field(default_factory=list)
    frames_copied: int = 0
    frames_dropped: int = 0
    packs_written: int = 0
    bytes_written: int = 0
    indexes_rewritten: int = 0
    indexes_deleted: list[ObjectId] = field(default_factory=list)
    manifests_deleted: list[ObjectId] = field(default_factory=list)
    healed: list[ObjectId] = field(default_factory=list)
    """Manifests made whole by a new index pointing at copies stored elsewhere."""

    @property
    def changed(self) -> bool:
        """Whether anything was written or deleted."""
        return bool(self.packs_replaced or self.indexes_deleted or self.manifests_deleted)


async def repair(
    repo: Repository, found: VerifyReport, *, lease_seconds: float = DEFAULT_LEASE
) -> RepairReport:
    """Remove the damage `found` names; intact frames of damaged packs move to new packs."""
    report = RepairReport()
    damaged = set(found.damaged_packs)
    if found.ok:
        return report
    store = repo.store
    # Deleting a name that cannot exist asks for the admin scope before anything is
    # written, so a token that may only write cannot leave a repair half done.
    await store.delete(Kind.PACK, ObjectId(secrets.token_bytes(32)))
    lease = Lease(store, lease_seconds, DEFAULT_GRACE)
    await lease.start()
    try:
        # One damaged answer in transit is not a damaged object: only what still
        # fails to verify when read again is deleted.
        corrupt_indexes = {
            n for n in found.corrupt_indexes if await _still_corrupt(repo, Kind.INDEX, n)
        }
        corrupt_manifests = {
            m for m in found.corrupt_manifests if await _still_corrupt(repo, Kind.MANIFEST, m)
        }
        lost = _lost_objects(found)
        survey = await _survey(repo, damaged, corrupt_indexes, set().union(*lost.values()))
        members = survey.members

        def written(size: int) -> None:
            report.packs_written += 1
            report.bytes_written += size

        # The copies never take a damaged pack's name, even when they hold its very
        # bytes (only its trailer was damaged, or verify only read it damaged): the
        # indexes then name the copies and every damaged pack can go.
        mover = FrameMover(store, written, avoid=damaged)
        for pack in sorted(damaged):
            await mover.move(pack, members.get(pack, {}), salvage=True)
        await mover.finish()
        report.frames_dropped = len(mover.dropped)
        report.frames_copied = sum(len(m) for m in members.values()) - report.frames_dropped
        for name in sorted(survey.naming):
            if await mover.relocate_index(name, lease.check, leave_out=damaged):
                report.indexes_rewritten += 1
        for name in sorted(corrupt_indexes):
            lease.check()
            await store.delete(Kind.INDEX, name)
            report.indexes_deleted.append(name)
        for manifest_id in sorted(corrupt_manifests):
            lease.check()
            await store.delete(Kind.MANIFEST, manifest_id)
            report.manifests_deleted.append(manifest_id)
        for pack in sorted(damaged):
            lease.check()
            await store.delete(Kind.PACK, pack)
            report.packs_replaced.append(pack)
        report.healed = await _heal(repo, lost, survey.elsewhere, mover, damaged, lease.check)
        await lease.finish(
            {
                "repaired_packs": len(report.packs_replaced),
                "dropped_frames": report.frames_dropped,
                "healed_manifests": len(report.healed),
            }
        )
    finally:
        await lease.stop()
    return report


@dataclass
class _Survey:
    """What one pass over every index of the store found."""

    naming: set[ObjectId] = field(default_factory=set)
    """Indexes naming a damaged pack."""
    members: dict[ObjectId, Members] = field(default_factory=dict)
    """Per damaged pack, the frames those indexes name in it."""
    elsewhere: dict[tuple[ObjectKind, ObjectId], list[Location]] = field(default_factory=dict)
    """Every place an index locates a lost object (before the damaged packs are moved)."""


async def _survey(
    repo: Repository,
    packs: set[ObjectId],
    skip: set[ObjectId],
    lost: set[tuple[ObjectKind, ObjectId]],
) -> _Survey:
    """One pass over every readable index: who names `packs`, and where `lost` objects lie.

    Indexes are read side by side (up to the store's concurrency), each twice
    before it counts as damaged: taking one damaged answer as "locates
    nothing" would let repair delete a pack the index still names.
    """
    survey = _Survey()
    if not packs and not lost:
        return survey
    store = repo.store
    limit = asyncio.Semaphore(max(1, store.capabilities.max_concurrency))

    async def one(name: ObjectId) -> None:
        async with limit:
            index = await _read_index(repo, name)
        for kind, object_id, loc in index.items() if index is not None else ():
            if loc.pack in packs:
                survey.naming.add(name)
                survey.members.setdefault(loc.pack, {})[loc.offset] = (kind, object_id, loc)
            if (kind, object_id) in lost:
                survey.elsewhere.setdefault((kind, object_id), []).append(loc)

    async for listed in list_concurrently(store, Kind.INDEX, store.capabilities.max_concurrency):
        await asyncio.gather(*(one(info.id) for info in listed if info.id not in skip))
    return survey


def _lost_objects(found: VerifyReport) -> dict[ObjectId, set[tuple[ObjectKind, ObjectId]]]:
    """Per manifest that is kept, the chunks and trees verify found missing or corrupt."""
    lost: dict[ObjectId, set[tuple[ObjectKind, ObjectId]]] = {}
    for problem, manifests in found.broken.items():
        if isinstance(problem.kind, ObjectKind):
            for manifest_id in manifests:
                if manifest_id not in found.corrupt_manifests:
                    lost.setdefault(manifest_id, set()).add((problem.kind, problem.id))
    return lost


def _moved(loc: Location, mover: FrameMover, leave_out: set[ObjectId]) -> Location | None:
    """Where a frame lies now that damaged packs were salvaged (as `relocate_index` puts it)."""
    where: Frame = (loc.pack, loc.offset)
    moved = mover.relocated.get(where, loc)
    if where in mover.dropped or moved.pack in leave_out:
        return None
    return moved


async def _heal(
    repo: Repository,
    lost: dict[ObjectId, set[tuple[ObjectKind, ObjectId]]],
    elsewhere: dict[tuple[ObjectKind, ObjectId], list[Location]],
    mover: FrameMover,
    leave_out: set[ObjectId],
    before_delete: Callable[[], None],
) -> list[ObjectId]:
    """New indexes for manifests whose lost objects another index locates in a live pack.

    `elsewhere` was read before the damaged packs were salvaged: each place is
    taken where the salvage moved it, and one in a dropped frame is no copy.
    A healed index holds every entry of the index it extends, which is then
    deleted: left beside it, it could be the one a reader takes (the newest
    by store time, and the relocated index was written just before, within
    a file system's clock tick or ahead on another machine's clock).
    `before_delete` raises if it may not be deleted now (a lapsed lease).
    """
    if not lost:
        return []
    places: dict[tuple[ObjectKind, ObjectId], list[Location]] = {}
    for obj, locs in elsewhere.items():
        for loc in locs:
            moved = _moved(loc, mover, leave_out)
            if moved is not None:
                places.setdefault(obj, []).append(moved)
    store = repo.store
    packs = {loc.pack for locs in places.values() for loc in locs}
    gone = await store.missing(Kind.PACK, list(packs)) if packs else set()
    healed = []
    for manifest_id, objects in sorted(lost.items()):
        copies = {
            obj: loc for obj in objects for loc in places.get(obj, []) if loc.pack not in gone
        }
        if not copies:
            continue
        current = await repo.indexes_of(manifest_id)
        base = current[0] if current else None
        new = PackIndex(manifest_id)
        for kind, object_id, loc in base.items() if base else ():
            new.table(kind)[object_id] = loc
        for (kind, object_id), loc in copies.items():
            new.table(kind)[object_id] = loc
        name, _ = await write_index(store, new, repo.level)
        repo.adopt(new)  # as `Repository.put_index` does
        if base is not None and base.name is not None and base.name != name:
            before_delete()
            await store.delete(Kind.INDEX, base.name)
        if await manifest_complete(repo, manifest_id):
            healed.append(manifest_id)
    return healed


async def _still_corrupt(repo: Repository, kind: Kind, object_id: ObjectId) -> bool:
    """Whether a manifest or index that verify found corrupt still fails to verify."""
    try:
        if kind is Kind.MANIFEST:
            await repo.get_manifest(object_id)
        else:
            await repo.indexes.read(object_id)
    except (IntegrityError, FormatError):
        return True
    except ObjectNotFound:
        return False  # gone already: nothing to delete
    return False


async def _read_index(repo: Repository, name: ObjectId) -> PackIndex | None:
    """An index, or None if it is gone since the listing or damaged.

    It is read twice first: taking one damaged answer as "locates nothing"
    would let repair delete a pack the index still names.
    """
    try:
        return await repo.indexes.read(name)
    except (ObjectNotFound, IntegrityError):
        return None
