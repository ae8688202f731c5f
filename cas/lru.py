"""A least-recently-used map whose cap is in bytes, not entries.

Decoded trees and chunks vary from a few bytes to megabytes, so a count
cap would bound nothing: the mount's memory, and what verify keeps of the
trees between manifests, must not grow with the tree.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class ByteLRU(Generic[K, V]):
    """Values with a size each; the least recently used go once the sizes pass `capacity`."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.size = 0
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: K) -> V | None:
        """The value, now the most recently used; None if absent."""
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: K, value: V, size: int, *, cold: bool = False) -> None:
        """Keep `value`; one larger than the whole cap is not kept at all.

        `cold` keeps it as the least recently used: something read ahead
        that nobody asked for yet goes before what was asked for.
        """
        old = self._items.pop(key, None)
        if old is not None:
            self.size -= old[1]
        if size > self.capacity:
            return
        self._items[key] = (value, size)
        if cold:
            self._items.move_to_end(key, last=False)
        self.size += size
        while self.size > self.capacity:
            _, (_, dropped) = self._items.popitem(last=False)
            self.size -= dropped
