"""Comparing two manifests: what changed, and how much a get of the second would move.

Both trees are walked whole (`cas.get.browse.walk`; identical subtrees are read
once per level). A path is *changed* when its type, a file's content digest
or mode, or a symlink's target differs. The *new chunks* are the chunks the
second manifest names that the first does not, counted once each: that is
what a get of B moves over a destination, cache or seed holding A (tiny
files travel inside their trees and are not counted).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cas.get.browse import walk
from cas.ids import ObjectId
from cas.objects import DirEntry, Entry, FileEntry, Manifest
from cas.repo import Repository


@dataclass(frozen=True)
class Side:
    """One path's type and size (files only) in one manifest."""

    kind: str
    size: int | None


@dataclass(frozen=True)
class Change:
    """A path that differs; `old` is None for added paths, `new` for removed ones."""

    path: str
    old: Side | None
    new: Side | None


@dataclass
class Diff:
    """Changes sorted by path, and the chunks B names that A lacks."""

    added: list[Change] = field(default_factory=list)
    removed: list[Change] = field(default_factory=list)
    changed: list[Change] = field(default_factory=list)
    new_chunks: int = 0
    new_chunk_bytes: int = 0


def _key(entry: Entry) -> tuple[object, ...]:
    """What must be equal for a path to count as unchanged."""
    if isinstance(entry, FileEntry):
        return ("file", entry.digest, entry.mode)
    if isinstance(entry, DirEntry):
        return ("dir",)
    return ("symlink", entry.target)


def _side(entry: Entry) -> Side:
    return Side(entry.kind, entry.size if isinstance(entry, FileEntry) else None)


async def _index(
    repo: Repository, manifest: Manifest, chunks: dict[ObjectId, int]
) -> dict[str, Entry]:
    """Path -> entry of the whole tree; adds every file chunk to `chunks`."""
    out: dict[str, Entry] = {}
    async for located in walk(repo, manifest):
        entry = located.entry
        out[located.path] = entry
        if isinstance(entry, FileEntry):
            for ref in entry.chunks:
                chunks[ref.id] = ref.length
    return out


async def diff(repo: Repository, a: Manifest, b: Manifest) -> Diff:
    """What changed from `a` to `b`."""
    chunks_a: dict[ObjectId, int] = {}
    chunks_b: dict[ObjectId, int] = {}
    old = await _index(repo, a, chunks_a)
    new = await _index(repo, b, chunks_b)
    result = Diff()
    for path in sorted(old.keys() | new.keys()):
        before, after = old.get(path), new.get(path)
        if before is None:
            assert after is not None
            result.added.append(Change(path, None, _side(after)))
        elif after is None:
            result.removed.append(Change(path, _side(before), None))
        elif _key(before) != _key(after):
            result.changed.append(Change(path, _side(before), _side(after)))
    for chunk_id, length in chunks_b.items():
        if chunk_id not in chunks_a:
            result.new_chunks += 1
            result.new_chunk_bytes += length
    return result
