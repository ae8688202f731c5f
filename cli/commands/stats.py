"""`cas stats`: what a store holds, and how much deduplication saves."""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import asdict, dataclass

from cas.errors import CasError
from cas.ids import ObjectId
from cas.repo import Repository
from cas.sizes import format_size
from cas.store.base import Kind
from cas_cli.common import emit_json, run_with_repo


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the `stats` command."""
    p = sub.add_parser(
        "stats",
        parents=[common],
        help="store size, manifests, refs, packs and the deduplication ratio",
        description="Count what the store holds: manifests, refs, packs, indexes and their "
        "bytes, and the deduplication ratio (bytes of every stored tree, summed, over the "
        "bytes the store uses). --chunks also counts distinct chunks by reading every "
        "index (one read per manifest).",
    )
    p.add_argument(
        "--chunks", action="store_true", help="count distinct chunks and trees (reads indexes)"
    )
    p.set_defaults(run=run)


@dataclass
class StoreStats:
    """Counts and bytes by namespace; every figure comes from listings except the last three."""

    manifests: int = 0
    unreadable_manifests: int = 0
    refs: int = 0
    packs: int = 0
    pack_bytes: int = 0
    indexes: int = 0
    index_bytes: int = 0
    manifest_bytes: int = 0
    logical_bytes: int = 0
    """Sum of the tree sizes of every readable manifest (what restoring them all writes)."""
    chunks: int | None = None
    trees: int | None = None

    @property
    def stored_bytes(self) -> int:
        """What the store uses for objects (refs and gc records are a few bytes)."""
        return self.pack_bytes + self.index_bytes + self.manifest_bytes

    @property
    def dedup_ratio(self) -> float | None:
        """Bytes restoring every manifest would write, per byte stored (None when empty)."""
        return self.logical_bytes / self.stored_bytes if self.stored_bytes else None


async def collect(repo: Repository, count_chunks: bool) -> StoreStats:
    """Listings, plus one read per manifest (and per index with `count_chunks`)."""
    stats = StoreStats()
    store = repo.store
    stats.refs = len([r async for r in store.list_refs("")])
    manifests: list[ObjectId] = []
    async for info in store.list(Kind.MANIFEST):
        manifests.append(info.id)
        stats.manifest_bytes += info.size
    async for info in store.list(Kind.PACK):
        stats.packs += 1
        stats.pack_bytes += info.size
    async for info in store.list(Kind.INDEX):
        stats.indexes += 1
        stats.index_bytes += info.size
    stats.manifests = len(manifests)
    limit = asyncio.Semaphore(max(1, store.capabilities.max_concurrency))
    chunks: set[ObjectId] = set()
    trees: set[ObjectId] = set()

    async def read(manifest_id: ObjectId) -> None:
        async with limit:
            try:
                manifest = await repo.get_manifest(manifest_id)
                if count_chunks:
                    index = await repo.index(manifest_id)
                    chunks.update(index.chunks)
                    trees.update(index.trees)
            except CasError:
                stats.unreadable_manifests += 1
                return
        stats.logical_bytes += manifest.totals.bytes

    await asyncio.gather(*(read(m) for m in manifests))
    if count_chunks:
        stats.chunks, stats.trees = len(chunks), len(trees)
    return stats


def run(args: argparse.Namespace) -> int:
    """Execute `cas stats`."""
    stats = run_with_repo(args, lambda repo: collect(repo, args.chunks), use_cache=False)
    ratio = stats.dedup_ratio
    if args.json:
        emit_json({**asdict(stats), "stored_bytes": stats.stored_bytes, "dedup_ratio": ratio})
        return 0
    rows = [
        ("manifests", f"{stats.manifests}" + _unreadable(stats)),
        ("refs", str(stats.refs)),
        ("packs", f"{stats.packs}, {format_size(stats.pack_bytes)}"),
        ("indexes", f"{stats.indexes}, {format_size(stats.index_bytes)}"),
        ("stored", format_size(stats.stored_bytes)),
        ("trees stored", format_size(stats.logical_bytes) + " (all manifests, summed)"),
        ("dedup ratio", "n/a (empty store)" if ratio is None else f"{ratio:.2f}x"),
    ]
    if stats.chunks is not None:
        rows.append(("distinct", f"{stats.chunks} chunks, {stats.trees} trees"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def _unreadable(stats: StoreStats) -> str:
    n = stats.unreadable_manifests
    return f" ({n} missing or damaged: cas verify says more)" if n else ""
