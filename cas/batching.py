"""Grouping many small items into few units of work.

Both engines pay a fixed cost per thread hop and per store round trip, so
small files travel in batches; a large item is a unit of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def batch_by_size(
    items: Iterable[T],
    size_of: Callable[[T], int],
    *,
    max_bytes: int,
    max_items: int,
    alone_from: int,
) -> list[list[T]]:
    """Consecutive batches of at most `max_items` items and `max_bytes` bytes.

    Items of `alone_from` bytes or more get a batch to themselves; order is kept
    within and across batches (files of one directory stay together).
    """
    batches: list[list[T]] = []
    current: list[T] = []
    current_bytes = 0
    for item in items:
        size = size_of(item)
        if size >= alone_from:
            if current:
                batches.append(current)
                current, current_bytes = [], 0
            batches.append([item])
            continue
        if current and (current_bytes + size > max_bytes or len(current) >= max_items):
            batches.append(current)
            current, current_bytes = [], 0
        current.append(item)
        current_bytes += size
    if current:
        batches.append(current)
    return batches


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of up to `size` items, taken lazily (items may be a long directory walk)."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


async def abatched(items: AsyncIterator[T], size: int) -> AsyncIterator[list[T]]:
    """`batched` for an async iterator (a store listing)."""
    batch: list[T] = []
    async for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
