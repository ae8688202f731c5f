"""Check that manifests can be read back whole: every tree and chunk present and intact.

One walker serves `cas verify` (read every chunk, or a sample), and put's
settling after a concurrent collection (existence only). Subtrees already
found complete are remembered on disk (`IdSet`), so manifests sharing most
of their trees cost little more than one; problems are few and kept in
memory with the subtrees they break.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from cas.batching import abatched
from cas.errors import FormatError, IntegrityError, ObjectNotFound
from cas.ids import ObjectId
from cas.idset import IdSet
from cas.objects import DirEntry, FileEntry
from cas.repo import Repository, decode_object, stored_size_bound
from cas.store.base import Kind

_BATCH: Final = 1000


@dataclass(frozen=True)
class Problem:
    """One object that is missing or does not verify."""

    kind: Kind
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

    @property
    def ok(self) -> bool:
        """Nothing missing or corrupt."""
        return not self.broken


class Checker:
    """Walks manifests and checks what they reach.

    `read_chunks=False` only asks the store whether chunks exist (one batch
    call per tree); otherwise each chunk is fetched, decompressed and hashed.
    `sample` (0 < f <= 1) checks that fraction of chunks, picked at random
    per run; trees are always read, since they lead to the chunks.
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
        self._good = IdSet(["tree", "chunk"])
        self._bad: dict[ObjectId, frozenset[Problem]] = {}
        self.report = VerifyReport()

    def close(self) -> None:
        """Remove the on-disk memory of checked objects."""
        self._good.close()

    async def check_manifest(self, manifest_id: ObjectId) -> frozenset[Problem]:
        """Every problem that stops `manifest_id` from being read in full."""
        self.report.manifests += 1
        try:
            manifest = await self.repo.get_manifest(manifest_id)
        except ObjectNotFound:
            problems = frozenset({Problem(Kind.MANIFEST, manifest_id, "missing")})
        except (IntegrityError, FormatError) as exc:
            problems = frozenset({Problem(Kind.MANIFEST, manifest_id, f"corrupt: {exc}")})
        else:
            problems = await self._tree(manifest.root)
        for problem in problems:
            self.report.broken.setdefault(problem, []).append(manifest_id)
        return problems

    async def _tree(self, tree_id: ObjectId) -> frozenset[Problem]:
        if tree_id in self._bad:
            return self._bad[tree_id]
        if self._good.contains_many("tree", [tree_id])[0]:
            return frozenset()
        try:
            async with self._limit:
                tree = await self.repo.get_tree(tree_id)
        except ObjectNotFound:
            problems = frozenset({Problem(Kind.TREE, tree_id, "missing")})
        except (IntegrityError, FormatError) as exc:
            problems = frozenset({Problem(Kind.TREE, tree_id, f"corrupt: {exc}")})
        else:
            self.report.trees += 1
            lengths = {
                c.id: c.length for e in tree.entries if isinstance(e, FileEntry) for c in e.chunks
            }
            subtrees = [e.tree for e in tree.entries if isinstance(e, DirEntry)]
            parts = await asyncio.gather(
                self._chunks(lengths), *(self._tree(s) for s in dict.fromkeys(subtrees))
            )
            problems = frozenset().union(*parts)
        if problems:
            self._bad[tree_id] = problems
        else:
            self._good.add_many("tree", [tree_id])
        return problems

    def _picked(self, chunk_id: ObjectId) -> bool:
        if self.sample >= 1.0:
            return True
        mixed = int.from_bytes(bytes(a ^ b for a, b in zip(chunk_id[:8], self._salt, strict=True)))
        return mixed / 2**64 < self.sample

    async def _chunks(self, lengths: dict[ObjectId, int]) -> frozenset[Problem]:
        ids = [i for i in lengths if self._picked(i)]
        problems: set[Problem] = set()
        for start in range(0, len(ids), _BATCH):
            batch = ids[start : start + _BATCH]
            known = self._good.contains_many("chunk", batch)
            todo = []
            for chunk_id, good in zip(batch, known, strict=True):
                if good:
                    continue
                if chunk_id in self._bad:
                    problems |= self._bad[chunk_id]
                else:
                    todo.append(chunk_id)
            if todo:
                problems |= await self._check_chunks({i: lengths[i] for i in todo})
        return frozenset(problems)

    async def _check_chunks(self, lengths: dict[ObjectId, int]) -> set[Problem]:
        async with self._limit:
            absent = await self.store.missing(Kind.CHUNK, list(lengths))
        problems = {Problem(Kind.CHUNK, i, "missing") for i in absent}
        if self.read_chunks:
            present = [i for i in lengths if i not in absent]
            results = await asyncio.gather(*(self._read_chunk(i, lengths[i]) for i in present))
            problems |= {p for p in results if p is not None}
        for problem in problems:
            self._bad[problem.id] = frozenset({problem})
        self._good.add_many("chunk", [i for i in lengths if i not in self._bad])
        self.report.chunks_checked += len(lengths)
        return problems

    async def _read_chunk(self, chunk_id: ObjectId, length: int) -> Problem | None:
        try:
            async with self._limit:
                blob = await self.store.get(
                    Kind.CHUNK, chunk_id, max_size=stored_size_bound(length)
                )
            await asyncio.to_thread(decode_object, Kind.CHUNK, chunk_id, blob, length)
        except ObjectNotFound:
            return Problem(Kind.CHUNK, chunk_id, "missing")
        except IntegrityError as exc:
            return Problem(Kind.CHUNK, chunk_id, f"corrupt: {exc.detail}")
        self.report.bytes_checked += len(blob)
        return None

    async def check_orphans(self, max_chunk: int) -> None:
        """Read every stored tree and chunk no manifest led to (for `--all`)."""
        for kind, name in ((Kind.TREE, "tree"), (Kind.CHUNK, "chunk")):
            async for batch in abatched(self.store.list(kind), _BATCH):
                ids = [i.id for i in batch if kind is Kind.TREE or self._picked(i.id)]
                known = self._good.contains_many(name, ids)
                todo = [i for i, k in zip(ids, known, strict=True) if not k and i not in self._bad]
                results = await asyncio.gather(
                    *(self._read_orphan(kind, i, max_chunk) for i in todo)
                )
                for problem in results:
                    if problem is not None:
                        self.report.broken.setdefault(problem, [])
                self.report.orphans_checked += len(todo)

    async def _read_orphan(self, kind: Kind, object_id: ObjectId, max_chunk: int) -> Problem | None:
        if kind is Kind.TREE:
            try:
                async with self._limit:
                    await self.repo.get_tree(object_id)
            except ObjectNotFound:
                return None  # deleted since it was listed
            except (IntegrityError, FormatError) as exc:
                return Problem(Kind.TREE, object_id, f"corrupt: {exc}")
            return None
        problem = await self._read_chunk(object_id, max_chunk)
        return None if problem is not None and problem.detail == "missing" else problem


async def manifest_complete(repo: Repository, manifest_id: ObjectId) -> bool:
    """Whether every object `manifest_id` reaches exists (existence only, no reads of chunks)."""
    checker = Checker(repo, read_chunks=False)
    try:
        return not await checker.check_manifest(manifest_id)
    finally:
        checker.close()


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
