"""`--prefetch FILE|all`: fetch files into the chunk cache ahead of demand reads.

Runs in the background of a mount: the files of a list (a `--record`
trace of an earlier job) in its order, or every file of the tree. Chunks
are fetched through `Repository.get_chunks` in batches of a few MiB (the
first ones smaller, so the fetch starts before the job reaches it), one
batch at a time, so demand reads always have the store's other
connections; each fetched chunk is verified and lands in the LMDB cache,
from where the demand read takes it. Without a cache (a store on a local
disk) there is nowhere to keep them, so nothing is prefetched. Failures
are logged once and skipped: the demand read of that file reports its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Final

from cas.errors import CasError
from cas.get.browse import split_path, walk
from cas.ids import ObjectId
from cas.mount.deadline import within
from cas.mount.trees import TreeSource
from cas.objects import DirEntry, FileEntry, Manifest
from cas.repo import Repository

BATCH_BYTES: Final = 8 << 20
FIRST_BATCH_BYTES: Final = 256 << 10
"""The first batch is small, so it is on its way before the job asks; each next one doubles."""
log = logging.getLogger("cas.mount")


@dataclass
class PrefetchStats:
    """What the background prefetch did."""

    files: int = 0
    chunks: int = 0
    bytes: int = 0
    failed: int = 0
    done: bool = False


async def listed_files(
    trees: TreeSource,
    root: ObjectId,
    paths: list[str],
    after: Awaitable[object] | None = None,
) -> AsyncIterator[tuple[str, FileEntry]]:
    """The files at `paths` (relative to the mount root), in order; others are skipped.

    `after` is the mount's reading of trees ahead: the paths are resolved
    once it is done (all trees in a few long reads), and the directories it
    did not keep a level at a time, in merged reads, for all paths at once.
    """
    if after is not None:  # its outcome is its own; a cancellation of this one still ends it
        await asyncio.wait([asyncio.ensure_future(after)])
    for found in await _resolve(trees, root, paths):
        yield found


async def _resolve(
    trees: TreeSource, root: ObjectId, paths: list[str]
) -> list[tuple[str, FileEntry]]:
    """The files among `paths`, in their order; directories read a level at a time."""
    walking: list[tuple[int, tuple[str, ...], ObjectId]] = []
    for at, path in enumerate(paths):
        try:
            parts = split_path(path)
        except CasError:
            continue
        if parts:
            walking.append((at, parts, root))
    files: dict[int, tuple[str, FileEntry]] = {}
    depth = 0
    while walking:
        wanted = {tree: "/".join(parts[:depth]) or "." for _, parts, tree in walking}
        listings = await trees.listings(wanted)
        deeper = []
        for at, parts, tree in walking:
            entry = listings[tree].find(parts[depth])
            if depth + 1 < len(parts):
                if isinstance(entry, DirEntry):
                    deeper.append((at, parts, entry.tree))
            elif isinstance(entry, FileEntry):
                files[at] = ("/".join(parts), entry)
        walking = deeper
        depth += 1
    return [files[at] for at in sorted(files)]


async def every_file(
    repo: Repository, manifest: Manifest, root: ObjectId
) -> AsyncIterator[tuple[str, FileEntry]]:
    """Every file under `root`, breadth first (trees verified as `cas get` reads them)."""
    async for located in walk(repo, manifest, root):
        if isinstance(located.entry, FileEntry):
            yield located.path, located.entry


async def prefetch(
    repo: Repository,
    files: AsyncIterator[tuple[str, FileEntry]],
    max_chunk: int,
    stats: PrefetchStats,
    *,
    timeout: float,
) -> None:
    """Fetch the chunks of `files` the cache lacks, in order, one batch at a time."""
    cache = repo.cache
    if cache is None:
        log.warning("--prefetch needs the chunk cache (a remote store, or --cache): skipped")
        stats.done = True
        return
    batch: dict[ObjectId, int] = {}
    size = 0
    limit = FIRST_BATCH_BYTES

    async def flush() -> None:
        nonlocal size, limit
        present = cache.has_many(batch)
        ids = [i for i in batch if i not in present]
        try:
            if ids:
                got = await within(repo.get_chunks(ids, max_chunk), timeout, "prefetch")
                stats.chunks += len(got)
                stats.bytes += sum(len(d) for d in got.values())
        except CasError as exc:
            stats.failed += 1
            log.warning("prefetch: %s", exc)
        batch.clear()
        size = 0
        limit = min(BATCH_BYTES, limit * 2)

    try:
        async for _path, entry in files:
            stats.files += 1
            for ref in entry.chunks:
                if ref.id not in batch:
                    batch[ref.id] = ref.length
                    size += ref.length
                if size >= limit:
                    await flush()
        await flush()
    except CasError as exc:
        log.warning("prefetch stopped: %s", exc)
    stats.done = True
