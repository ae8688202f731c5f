"""The inode table: which numbers the kernel holds, and what each stands for.

A node is created when the kernel first learns of an entry (lookup or
readdirplus) and dropped when the kernel forgets it, so the table holds
only what the kernel's own caches hold, never the whole tree. A node keeps
the attributes `cas get` would write and, for a file, the tree that lists
it: its chunk list is read from that tree when the file is opened, not kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final

from cas.ids import ObjectId
from cas.objects import DirEntry, Entry, FileEntry

ROOT_INO: Final = 1
MODE_MASK: Final = 0o1777
"""As `cas get` applies modes: setuid and setgid bits from a manifest are dropped."""
ROOT_MODE: Final = 0o755
"""A manifest records no mode for its root; `cas get` leaves the destination's own."""


@dataclass(slots=True)
class Node:
    """One inode: a directory, a regular file or a symlink of the manifest."""

    ino: int
    parent: int
    kind: str
    """"dir", "file" or "symlink"."""
    name: str
    mode: int
    size: int
    mtime_ns: int
    tree: ObjectId | None
    """A directory's own tree."""
    holder: ObjectId | None
    """The tree listing this entry (a file's chunks are read from it on open)."""
    target: str | None = None
    lookups: int = 0


class NodeTable:
    """Inode numbers handed to the kernel, with the kernel's lookup counts."""

    def __init__(self, root_tree: ObjectId, default_mtime_ns: int) -> None:
        self.default_mtime_ns = default_mtime_ns
        """The time of an entry stored without one (`cas get` leaves the time of writing)."""
        self.root = Node(
            ROOT_INO, ROOT_INO, "dir", ".", ROOT_MODE, 0, default_mtime_ns, root_tree, None
        )
        self._nodes: dict[int, Node] = {ROOT_INO: self.root}
        self._by_name: dict[tuple[int, str], int] = {}
        self._next = ROOT_INO + 1

    def __len__(self) -> int:
        return len(self._nodes)

    def get(self, ino: int) -> Node | None:
        """The node the kernel calls `ino`, or None if it forgot it."""
        return self._nodes.get(ino)

    def child(self, parent: Node, entry: Entry) -> Node:
        """The node of `entry` in directory `parent`: the same number while the kernel holds it."""
        ino = self._by_name.get((parent.ino, entry.name))
        if ino is not None:
            return self._nodes[ino]
        ino = self._next
        self._next += 1
        mtime = self.default_mtime_ns if entry.mtime_ns is None else entry.mtime_ns
        if isinstance(entry, FileEntry):
            node = Node(
                ino, parent.ino, "file", entry.name, entry.mode & MODE_MASK,
                entry.size, mtime, None, parent.tree,
            )  # fmt: skip
        elif isinstance(entry, DirEntry):
            node = Node(
                ino, parent.ino, "dir", entry.name, entry.mode & MODE_MASK, 0, mtime,
                entry.tree, parent.tree,
            )  # fmt: skip
        else:
            node = Node(
                ino, parent.ino, "symlink", entry.name, 0o777,
                len(os.fsencode(entry.target)), mtime, None, parent.tree, entry.target,
            )  # fmt: skip
        self._nodes[ino] = node
        self._by_name[parent.ino, entry.name] = ino
        return node

    def path(self, node: Node) -> str:
        """`node`'s path from the mount root (for messages and traces), through its parents.

        Not stored per node: the kernel holds every parent of a node it holds, so
        the chain is there (150k cached inodes: 47 MB instead of 56 MB).
        """
        parts = []
        while node.ino != ROOT_INO:
            parts.append(node.name)
            parent = self._nodes.get(node.parent)
            if parent is None:  # not expected; say so rather than guess
                parts.append("…")
                break
            node = parent
        return "/".join(reversed(parts)) or "."

    def hold(self, node: Node) -> None:
        """The kernel now holds one more reference (a lookup or a readdirplus entry)."""
        node.lookups += 1

    def release(self, ino: int, count: int) -> None:
        """The kernel dropped `count` references; a node nobody holds is forgotten."""
        node = self._nodes.get(ino)
        if node is None or ino == ROOT_INO:
            return
        node.lookups -= count
        if node.lookups <= 0:
            self._drop(node)

    def discard_unheld(self, node: Node) -> None:
        """Drop a node made for a reply the kernel did not take."""
        if node.lookups <= 0 and node.ino != ROOT_INO:
            self._drop(node)

    def _drop(self, node: Node) -> None:
        del self._nodes[node.ino]
        if self._by_name.get((node.parent, node.name)) == node.ino:
            del self._by_name[node.parent, node.name]
