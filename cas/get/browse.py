"""Reading a stored tree without writing anything: walk, look up, stream a file.

Used by `get` (to plan), `ls` and `cat`. Traversal is breadth-first with a
depth limit and fetches the trees of one level concurrently. Every tree is
verified and strictly parsed (`Repository.get_tree`); chunk lengths are
checked against the manifest's maximum chunk size before any chunk is read.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from cas.batching import batched
from cas.errors import FormatError, ObjectNotFound, UnsafeManifest, UsageError
from cas.ids import ObjectId, new_hasher
from cas.objects import ChunkRef, DirEntry, Entry, FileEntry, Manifest, Tree
from cas.repo import Repository

MAX_DEPTH: Final = 1024
MAX_ENTRIES: Final = 100_000_000
_TREE_FETCH_CONCURRENCY: Final = 2
_TREE_BATCH: Final = 32
"""Trees per batched read: a level of a wide tree is read in a few batches at once."""


@dataclass(frozen=True)
class Located:
    """An entry and the directory path (`parts`) that holds it."""

    parts: tuple[str, ...]
    entry: Entry

    @property
    def path(self) -> str:
        """Slash-joined path relative to the manifest root."""
        return "/".join((*self.parts, self.entry.name))


def check_chunks(entry: FileEntry, max_chunk: int, where: str) -> None:
    """Refuse chunk lengths the manifest's chunker could not have produced."""
    for ref in entry.chunks:
        if ref.length > max_chunk:
            raise UnsafeManifest(
                f"{where}: chunk {ref.id} claims {ref.length} bytes, over the {max_chunk} maximum"
            )


async def walk(
    repo: Repository,
    manifest: Manifest,
    root: ObjectId | None = None,
    start: tuple[str, ...] = (),
    enter: Callable[[tuple[str, ...]], bool] | None = None,
) -> AsyncIterator[Located]:
    """Every entry under `root` (default: the manifest root), parents before children.

    A tree may name the same subtree many times (identical directories), so
    a few small objects can describe an exponential number of paths. The walk
    therefore stops as soon as it has seen more entries than the manifest's
    totals declare, and refuses manifests that declare more than
    `MAX_ENTRIES`. `enter(parts)` False prunes a directory: its entry is
    yielded, its tree is never fetched.
    """
    totals = manifest.totals
    allowed = totals.files + totals.dirs + totals.symlinks
    if allowed > MAX_ENTRIES:
        raise UnsafeManifest(f"manifest declares {allowed} entries, more than {MAX_ENTRIES}")
    seen = 0
    level: list[tuple[tuple[str, ...], ObjectId]] = [(start, root or manifest.root)]
    limit = asyncio.Semaphore(_TREE_FETCH_CONCURRENCY)
    max_chunk = manifest.chunker.max_size

    async def fetch(batch: list[ObjectId]) -> dict[ObjectId, Tree]:
        async with limit:
            return await repo.get_trees(batch)

    depth = 0
    while level:
        depth += 1
        if depth > MAX_DEPTH:
            raise UnsafeManifest(f"tree is nested deeper than {MAX_DEPTH} levels")
        unique = list(dict.fromkeys(tree_id for _, tree_id in level))
        fetched: dict[ObjectId, Tree] = {}
        for part in await asyncio.gather(*map(fetch, batched(unique, _TREE_BATCH))):
            fetched.update(part)
        next_level: list[tuple[tuple[str, ...], ObjectId]] = []
        for parts, tree_id in level:
            tree = fetched[tree_id]
            seen += len(tree.entries)
            if seen > allowed:
                raise UnsafeManifest(
                    f"trees hold more entries than the {allowed} the manifest declares"
                )
            for entry in tree.entries:
                located = Located(parts, entry)
                if isinstance(entry, FileEntry):
                    check_chunks(entry, max_chunk, located.path)
                elif isinstance(entry, DirEntry):
                    child = (*parts, entry.name)
                    if enter is None or enter(child):
                        next_level.append((child, entry.tree))
                yield located
        level = next_level


def checked_length(data: bytes, length: int, where: str) -> bytes:
    """`data`, if it is as long as the tree says its chunk is."""
    if len(data) != length:
        raise FormatError(f"{where}: a chunk is {len(data)} bytes, the tree says {length}")
    return data


def split_path(path: str) -> tuple[str, ...]:
    """A user-given path inside a manifest as components (`a/b/`, `/a/b` and `a//b` all work)."""
    parts = tuple(p for p in path.split("/") if p not in ("", "."))
    if any(p == ".." for p in parts):
        raise UsageError(f"path inside a manifest may not contain '..': {path!r}")
    return parts


async def lookup(repo: Repository, manifest: Manifest, path: str) -> Located | None:
    """The entry at `path`, or None for the root itself; `ObjectNotFound` if absent."""
    parts = split_path(path)
    tree_id = manifest.root
    found: Located | None = None
    for index, name in enumerate(parts):
        tree = await repo.get_tree(tree_id, ahead=False)  # the path's trees, not all of them
        match = next((e for e in tree.entries if e.name == name), None)
        if match is None:
            raise ObjectNotFound(f"no {'/'.join(parts[: index + 1])!r} in the manifest")
        found = Located(parts[:index], match)
        if index < len(parts) - 1:
            if not isinstance(match, DirEntry):
                raise ObjectNotFound(f"{found.path!r} is not a directory")
            tree_id = match.tree
    return found


async def stream_file(
    repo: Repository,
    entry: FileEntry,
    max_chunk: int,
    sink: Callable[[bytes], Awaitable[None]],
    *,
    where: str = "",
    prefetch: int = 4,
) -> None:
    """Feed a file's bytes to `sink` in order, fetching a few chunks ahead.

    Each chunk is verified against its id before `sink` sees it; the
    whole-file digest is checked at the end, so a tree naming the wrong (but
    individually valid) chunks is caught before the caller commits the file.
    """
    where = where or entry.name
    if entry.inline is not None:
        data = entry.inline
        hasher = new_hasher()
        hasher.update(data)
        check_digest(entry, hasher, where)
        await sink(data)
        return
    check_chunks(entry, max_chunk, where)
    hasher = new_hasher()
    window: list[tuple[ChunkRef, asyncio.Task[bytes]]] = []
    pending = iter(entry.chunks)
    try:
        while True:
            for ref in itertools.islice(pending, prefetch - len(window)):
                window.append((ref, asyncio.ensure_future(repo.get_chunk(ref.id, max_chunk))))
            if not window:
                break
            ref, task = window.pop(0)
            data = checked_length(await task, ref.length, where)
            hasher.update(data)
            await sink(data)
    finally:
        for _, task in window:
            task.cancel()
    check_digest(entry, hasher, where)


def check_digest(entry: FileEntry, hasher: object, where: str) -> None:
    """Raise `IntegrityError` unless the bytes fed to `hasher` are the file the tree names."""
    from cas.errors import IntegrityError

    got = ObjectId(hasher.digest())  # type: ignore[attr-defined]
    if got != entry.digest:
        raise IntegrityError(
            "file", where, f"content hashes to {got}, the tree says {entry.digest}"
        )
