"""Rebuilding a manifest's index from the packs alone, when its index is lost or damaged.

Every pack lists its frames in its trailer, so the locations an index holds
can be found again: read each pack's trailer (two ranged reads), then walk
the manifest's trees through what they say and write a new index. It costs
a listing of every pack, so it is a repair tool, not part of any get or put.
"""

from __future__ import annotations

import asyncio
from typing import Final

from cas.errors import IntegrityError, ObjectNotFound
from cas.ids import ObjectId
from cas.objects import MAX_TREE_BYTES, DirEntry, FileEntry, Tree
from cas.pack import ObjectKind
from cas.packindex import Location, PackIndex
from cas.repo import Repository, read_pack_entries
from cas.store.base import Kind
from cas.store.encoded import write_index

_TRAILERS_AT_ONCE: Final = 16


async def locate_everything(repo: Repository) -> dict[ObjectKind, dict[ObjectId, Location]]:
    """Where every chunk and tree of the store lies, from the pack trailers."""
    found: dict[ObjectKind, dict[ObjectId, Location]] = {k: {} for k in ObjectKind}
    limit = asyncio.Semaphore(_TRAILERS_AT_ONCE)

    async def one(pack: ObjectId, size: int) -> None:
        async with limit:
            try:
                entries = await read_pack_entries(repo.store, pack, size)
            except (IntegrityError, ObjectNotFound):
                return  # a damaged or vanished pack locates nothing
        for entry in entries:
            found[entry.kind].setdefault(
                entry.id, Location(pack, entry.offset, entry.stored, entry.raw)
            )

    listed = [(info.id, info.size) async for info in repo.store.list(Kind.PACK)]
    await asyncio.gather(*(one(pack, size) for pack, size in listed))
    return found


async def rebuild_index(repo: Repository, manifest_id: ObjectId) -> PackIndex:
    """The index of `manifest_id` as the packs describe it; `ObjectNotFound` naming a gap."""
    manifest = await repo.get_manifest(manifest_id)
    where = await locate_everything(repo)
    index = PackIndex(manifest_id)
    pending = [manifest.root]
    while pending:
        tree_id = pending.pop()
        if tree_id in index.trees:
            continue
        loc = where[ObjectKind.TREE].get(tree_id)
        if loc is None:
            raise ObjectNotFound(f"tree {tree_id} of manifest {manifest_id} is in no pack")
        data = await repo.read_located(ObjectKind.TREE, {tree_id: loc}, MAX_TREE_BYTES, ahead=False)
        tree = Tree.from_bytes(data[tree_id], where=f"tree {tree_id}")
        index.trees[tree_id] = loc
        for entry in tree.entries:
            if isinstance(entry, DirEntry):
                pending.append(entry.tree)
            elif isinstance(entry, FileEntry):
                for ref in entry.chunks:
                    chunk = where[ObjectKind.CHUNK].get(ref.id)
                    if chunk is None:
                        raise ObjectNotFound(
                            f"chunk {ref.id} of manifest {manifest_id} is in no pack"
                        )
                    index.chunks[ref.id] = chunk
    return index


async def reindex(repo: Repository, manifest_id: ObjectId) -> tuple[ObjectId, PackIndex, bool]:
    """Rebuild and store the index of `manifest_id`: (its name, it, whether it was new)."""
    index = await rebuild_index(repo, manifest_id)
    name, created = await write_index(repo.store, index, repo.level)
    return name, index, created
