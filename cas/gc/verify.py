"""Check that manifests can be read back whole: index, trees and chunks present and intact.

One walker serves `cas verify` (read every chunk, or a sample), and put's
settling after a concurrent collection (existence only). A manifest is
checked through its index: every tree and chunk it reaches must be listed
there, in a pack the store holds; with `read_chunks`, every frame is read
(neighbours merged into ranged reads), decompressed and hashed. Objects
already found intact at the same location are remembered on disk (`IdSet`),
so manifests sharing most of their packs cost little more than one.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import blake3

from cas.batching import abatched, batch_by_size
from cas.errors import UNREADABLE, IntegrityError, ObjectNotFound, read_failure
from cas.gc.idset import IdSet
from cas.ids import ObjectId, is_object_id
from cas.indexbook import read_index
from cas.lru import ByteLRU
from cas.objects import MAX_TREE_BYTES, DirEntry, FileEntry, Tree
from cas.pack import MAX_PACK_BYTES, ObjectKind, verify_pack
from cas.packindex import Location, PackIndex
from cas.repo import Repository
from cas.store.base import Kind

_BATCH: Final = 1000
_BATCH_RAW_BYTES: Final = 8 << 20
"""A read's decoded bytes: with 16 reads at once, verify's memory stays near 200 MB
whatever the tree (1000 chunks of a large file per read took 2.7 GB on 10.5 GB)."""


@dataclass(frozen=True)
class Problem:
    """One object that is missing or does not verify."""

    kind: Kind | ObjectKind
    id: ObjectId
    detail: str


@dataclass
class VerifyReport:
    """Problems, the manifests each one breaks, and how much was checked."""

    broken: dict[Problem, list[ObjectId]] = field(default_factory=dict)
    manifests: int = 0
    trees: int = 0
    chunks_checked: int = 0
    bytes_checked: int = 0
    orphans_checked: int = 0
    packs_checked: int = 0
    damaged_packs: set[ObjectId] = field(default_factory=set)
    """Packs holding a frame that does not verify (or that do not verify whole)."""
    corrupt_manifests: set[ObjectId] = field(default_factory=set)
    corrupt_indexes: set[ObjectId] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        """Nothing missing or corrupt."""
        return not self.broken


TreeChildren = tuple[dict[ObjectId, int], list[ObjectId]]
"""What a tree names: its chunks (with their lengths) and its subtrees."""
_CHILDREN_BYTES: Final = 64 << 20
"""Memory for the trees' children kept between manifests (about 1M names): manifests
of one store share most trees, so a tree is read once per run while each manifest's
walk still checks it against its own index."""


def _children_size(children: TreeChildren) -> int:
    """About what a tree's children take in memory (64 bytes a name)."""
    return 64 * (len(children[0]) + len(children[1]) + 1)


def _good_key(object_id: ObjectId, loc: Location) -> ObjectId:
    """An object counts as checked only at the location it was checked at."""
    key = bytes(object_id) + bytes(loc.pack) + loc.offset.to_bytes(8, "little")
    return ObjectId(blake3.blake3(key).digest())


class Checker:
    """Walks manifests through their indexes and checks what they reach.

    `read_chunks=False` only checks that every chunk is indexed in a pack the
    store holds; otherwise each chunk is read, decompressed and hashed.
    `sample` (0 < f <= 1) reads that fraction of chunks, picked at random per
    run; trees are always read, since they lead to the chunks.
    """

    def __init__(
        self,
        repo: Repository,
        *,
        read_chunks: bool = True,
        sample: float = 1.0,
        concurrency: int | None = None,
    ) -> None:
        self.repo = repo
        self.store = repo.store
        self.read_chunks = read_chunks
        self.sample = sample
        self._salt = secrets.token_bytes(8)
        self._limit = asyncio.Semaphore(
            concurrency or max(1, self.store.capabilities.max_concurrency)
        )
        self._good_set: IdSet | None = None
        """Chunks found intact at a location (on disk); made when the first chunk is read."""
        self._children: ByteLRU[ObjectId, TreeChildren] = ByteLRU(_CHILDREN_BYTES)
        self._bad: dict[ObjectId, frozenset[Problem]] = {}
        self._packs: dict[ObjectId, bool] = {}
        self.report = VerifyReport()

    def _good(self) -> IdSet:
        if self._good_set is None:
            self._good_set = IdSet(["chunk"])
        return self._good_set

    def close(self) -> None:
        """Remove the on-disk memory of checked objects."""
        if self._good_set is not None:
            self._good_set.close()

    async def check_manifest(
        self, manifest_id: ObjectId, index: PackIndex | None = None
    ) -> frozenset[Problem]:
        """Every problem that stops `manifest_id` from being read in full (through `index`)."""
        self.report.manifests += 1
        try:
            manifest = await self.repo.get_manifest(manifest_id)
            if index is None:
                index = await self.repo.index(manifest_id)
        except UNREADABLE as exc:
            if isinstance(exc, IntegrityError):
                self._note_corrupt(exc)
            problems = frozenset({Problem(Kind.MANIFEST, manifest_id, read_failure(exc))})
        else:
            problems = await self._tree(index, manifest.root, {})
        for problem in problems:
            self.report.broken.setdefault(problem, []).append(manifest_id)
        return problems

    def _note_corrupt(self, exc: IntegrityError) -> None:
        """A manifest or index object that does not verify: `--repair` deletes it."""
        if not is_object_id(exc.object_id):
            return
        found = ObjectId.parse(exc.object_id)
        if exc.kind == Kind.MANIFEST.value:
            self.report.corrupt_manifests.add(found)
        elif exc.kind == Kind.INDEX.value:
            self.report.corrupt_indexes.add(found)

    async def _present(self, packs: set[ObjectId]) -> set[ObjectId]:
        """Which of `packs` the store holds (asked once per run)."""
        unknown = [p for p in packs if p not in self._packs]
        if unknown:
            async with self._limit:
                absent = await self.store.missing(Kind.PACK, unknown)
            for pack in unknown:
                self._packs[pack] = pack not in absent
        return {p for p in packs if self._packs[p]}

    async def _tree(
        self, index: PackIndex, tree_id: ObjectId, walked: dict[ObjectId, frozenset[Problem]]
    ) -> frozenset[Problem]:
        """Problems under one tree as `index` locates them.

        The answer depends on the index (two indexes may place the same
        tree's chunks differently, or one may lack some), so whole-tree
        results are kept per walk only (`walked`); what a tree names, and
        the check of each chunk at its location, are kept across walks.
        """
        loc = index.trees.get(tree_id)
        if loc is None:
            return frozenset({Problem(ObjectKind.TREE, tree_id, "missing: not in the index")})
        key = _good_key(tree_id, loc)
        if key in walked:
            return walked[key]
        if key in self._bad:
            return self._bad[key]
        children = self._children.get(key)
        if children is None:
            problem = await self._read_tree(tree_id, loc)
            if isinstance(problem, Problem):
                self._bad[key] = frozenset({problem})
                return self._bad[key]
            children = problem
            self._children.put(key, children, _children_size(children))
        lengths, subtrees = children
        parts = await asyncio.gather(
            self._chunks(index, lengths), *(self._tree(index, s, walked) for s in subtrees)
        )
        walked[key] = problems = frozenset().union(*parts)
        return problems

    async def _read_tree(self, tree_id: ObjectId, loc: Location) -> TreeChildren | Problem:
        if not await self._present({loc.pack}):
            return Problem(ObjectKind.TREE, tree_id, f"missing: pack {loc.pack}")
        try:
            async with self._limit:
                data = await self.repo.read_located(
                    ObjectKind.TREE, {tree_id: loc}, MAX_TREE_BYTES, ahead=False
                )
            tree = Tree.from_bytes(data[tree_id], where=f"tree {tree_id}")
        except UNREADABLE as exc:
            if isinstance(exc, IntegrityError):
                self.report.damaged_packs.add(loc.pack)
            return Problem(ObjectKind.TREE, tree_id, read_failure(exc))
        self.report.trees += 1
        lengths = {
            c.id: c.length for e in tree.entries if isinstance(e, FileEntry) for c in e.chunks
        }
        subtrees = list(dict.fromkeys(e.tree for e in tree.entries if isinstance(e, DirEntry)))
        return lengths, subtrees

    def _picked(self, chunk_id: ObjectId) -> bool:
        if self.sample >= 1.0:
            return True
        mixed = int.from_bytes(bytes(a ^ b for a, b in zip(chunk_id[:8], self._salt, strict=True)))
        return mixed / 2**64 < self.sample

    async def _chunks(self, index: PackIndex, lengths: dict[ObjectId, int]) -> frozenset[Problem]:
        problems: set[Problem] = set()
        located: dict[ObjectId, Location] = {}
        for chunk_id, length in lengths.items():
            loc = index.chunks.get(chunk_id)
            if loc is None:
                problems.add(Problem(ObjectKind.CHUNK, chunk_id, "missing: not in the index"))
            elif loc.raw != length:
                problems.add(
                    Problem(ObjectKind.CHUNK, chunk_id, f"corrupt: indexed as {loc.raw} bytes")
                )
            else:
                located[chunk_id] = loc
        present = await self._present({loc.pack for loc in located.values()})
        for chunk_id, loc in list(located.items()):
            if loc.pack not in present:
                problems.add(Problem(ObjectKind.CHUNK, chunk_id, f"missing: pack {loc.pack}"))
                del located[chunk_id]
        if not self.read_chunks:
            self.report.chunks_checked += len(lengths)
            return frozenset(problems)
        self.report.chunks_checked += sum(1 for i in lengths if self._picked(i))
        todo: dict[ObjectId, Location] = {}
        for chunk_id, loc in located.items():
            if not self._picked(chunk_id):
                continue
            key = _good_key(chunk_id, loc)
            if key in self._bad:
                problems |= self._bad[key]
            elif not self._good().contains_many("chunk", [key])[0]:
                todo[chunk_id] = loc
        for batch in _batches(todo):
            problems |= await self._read_chunks(batch)
        return frozenset(problems)

    async def _read_chunks(self, batch: dict[ObjectId, Location]) -> set[Problem]:
        """Read a batch in merged ranges; on failure, one by one to name each damaged chunk."""
        try:
            async with self._limit:
                await self.repo.read_located(
                    ObjectKind.CHUNK, batch, max(loc.raw for loc in batch.values()), ahead=False
                )
        except (IntegrityError, ObjectNotFound):
            problems = set()
            for chunk_id, loc in batch.items():
                problem = await self._read_one(chunk_id, loc)
                key = _good_key(chunk_id, loc)
                if problem is None:
                    self._good().add_many("chunk", [key])
                else:
                    self._bad[key] = frozenset({problem})
                    problems.add(problem)
            return problems
        self.report.bytes_checked += sum(loc.stored for loc in batch.values())
        self._good().add_many("chunk", [_good_key(i, loc) for i, loc in batch.items()])
        return set()

    async def _read_one(self, chunk_id: ObjectId, loc: Location) -> Problem | None:
        try:
            async with self._limit:
                await self.repo.read_located(
                    ObjectKind.CHUNK, {chunk_id: loc}, loc.raw, ahead=False
                )
        except ObjectNotFound:
            return Problem(ObjectKind.CHUNK, chunk_id, f"missing: pack {loc.pack}")
        except IntegrityError as exc:
            self.report.damaged_packs.add(loc.pack)
            return Problem(ObjectKind.CHUNK, chunk_id, f"corrupt: {exc.detail}")
        self.report.bytes_checked += loc.stored
        return None

    async def check_orphans(self, max_chunk: int) -> None:
        """Read every stored pack whole and every index (for `--all`)."""
        async for batch in abatched(self.store.list(Kind.PACK), 16):
            results = await asyncio.gather(*(self._read_pack(i.id, max_chunk) for i in batch))
            for problem in results:
                if problem is not None:
                    self.report.broken.setdefault(problem, [])
            self.report.packs_checked += len(batch)
        async for batch in abatched(self.store.list(Kind.INDEX), _BATCH):
            for info in batch:
                problem = await self._read_index(info.id)
                if problem is not None:
                    self.report.broken.setdefault(problem, [])
                self.report.orphans_checked += 1

    async def _read_pack(self, pack_id: ObjectId, max_chunk: int) -> Problem | None:
        try:
            async with self._limit:
                data = await self.store.get(Kind.PACK, pack_id, max_size=MAX_PACK_BYTES)
            await asyncio.to_thread(verify_pack, pack_id, data, max_chunk=max_chunk)
        except ObjectNotFound:
            return None  # deleted since it was listed
        except IntegrityError as exc:
            self.report.damaged_packs.add(pack_id)
            return Problem(Kind.PACK, pack_id, f"corrupt: {exc.detail}")
        self.report.bytes_checked += len(data)
        return None

    async def _read_index(self, name: ObjectId) -> Problem | None:
        try:
            await read_index(self.store, name, reads=1)
        except ObjectNotFound:
            return None
        except IntegrityError as exc:
            self.report.corrupt_indexes.add(name)
            return Problem(Kind.INDEX, name, f"corrupt: {exc.detail}")
        return None


async def manifest_complete(repo: Repository, manifest_id: ObjectId) -> bool:
    """Whether some index of `manifest_id` locates everything it reaches in packs that exist.

    Asks the store (indexes listed afresh, packs checked), never a cache.
    """
    try:
        candidates = await repo.indexes_of(manifest_id)
    except (IntegrityError, ObjectNotFound):
        return False
    # One checker for every candidate: its caches are keyed by location, and each
    # manifest walk keeps its whole-tree results to itself.
    checker = Checker(repo, read_chunks=False)
    try:
        for index in candidates:
            if not await checker.check_manifest(manifest_id, index):
                return True
    finally:
        checker.close()
    return False


async def verify_manifests(
    repo: Repository, manifest_ids: Sequence[ObjectId], *, sample: float = 1.0
) -> VerifyReport:
    """Read back everything the given manifests reach."""
    checker = Checker(repo, sample=sample)
    try:
        for manifest_id in manifest_ids:
            await checker.check_manifest(manifest_id)
        return checker.report
    finally:
        checker.close()


def _batches(todo: dict[ObjectId, Location]) -> list[dict[ObjectId, Location]]:
    """Reads of at most `_BATCH` chunks and `_BATCH_RAW_BYTES` decoded bytes (at least one)."""
    groups = batch_by_size(
        todo.items(),
        lambda item: item[1].raw,
        max_bytes=_BATCH_RAW_BYTES,
        max_items=_BATCH,
        alone_from=_BATCH_RAW_BYTES + 1,
    )
    return [dict(group) for group in groups]
