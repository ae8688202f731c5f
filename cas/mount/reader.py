"""Byte ranges of stored files, from verified chunks, with readahead.

Every chunk comes from `Repository.get_chunks`: the LMDB chunk cache if it
holds it, else the store in merged ranged reads of packs, and in both cases
decompressed within the manifest's chunk limit and checked against its
BLAKE3 id before a byte of it is returned; its length is checked against
the tree. Decoded chunks are kept in a byte-capped LRU, since the kernel
asks for 128 KiB at a time and a chunk is ~512 KiB. A read that continues
where the previous one of the same open file ended fetches the next
`readahead` bytes of chunks in the background, in one batch (so neighbours
in a pack become one ranged read).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from cas.aiotools import fail
from cas.errors import CasError
from cas.get.browse import checked_length
from cas.ids import ObjectId
from cas.lru import ByteLRU
from cas.mount.relocation import Relocation
from cas.objects import ChunkRef, Entry, FileEntry
from cas.repo import Repository

DEFAULT_CHUNK_BYTES: Final = 16 << 20
DEFAULT_READAHEAD: Final = 8 << 20
SIBLINGS_BYTES: Final = 4 << 20
"""Small files of a directory fetched together when the first of them is opened."""
_WARMED_DIRS: Final = 4096
_CACHE_FETCHES: Final = 2
log = logging.getLogger("cas.mount")


class ReadFailed(CasError):
    """A file's bytes could not be had verified: the caller answers EIO."""


@dataclass
class OpenFile:
    """An open file: its chunk list, where each chunk starts, and the reading pattern."""

    entry: FileEntry
    path: str
    starts: list[int] = field(default_factory=list)
    next_offset: int = 0
    """Where the last read ended: a read starting here is sequential."""
    ahead: int = 0
    """Chunks before this index were already asked for by readahead."""

    def __post_init__(self) -> None:
        self.starts = list(itertools.accumulate((c.length for c in self.entry.chunks), initial=0))


class ChunkReader:
    """Reads of open files, served from decoded chunks fetched once."""

    def __init__(
        self,
        repo: Repository,
        max_chunk: int,
        *,
        capacity: int = DEFAULT_CHUNK_BYTES,
        readahead: int = DEFAULT_READAHEAD,
        relocation: Relocation,
    ) -> None:
        self.repo = repo
        self.max_chunk = max_chunk
        self.relocation = relocation
        self.readahead = readahead
        self._lru: ByteLRU[ObjectId, bytes] = ByteLRU(capacity)
        self._inflight: dict[ObjectId, asyncio.Future[bytes | None]] = {}
        self._background: set[asyncio.Task[dict[ObjectId, bytes]]] = set()
        self._warmed: ByteLRU[ObjectId, bool] = ByteLRU(_WARMED_DIRS)
        self._cache_fetches = asyncio.Semaphore(_CACHE_FETCHES)

    async def read(self, handle: OpenFile, offset: int, size: int) -> bytes:
        """Up to `size` bytes at `offset`; `ReadFailed` rather than any unverified byte."""
        entry = handle.entry
        end = min(entry.size, offset + size)
        if offset >= end:
            return b""
        if entry.inline is not None:
            return entry.inline[offset:end]
        first = bisect.bisect_right(handle.starts, offset) - 1
        last = bisect.bisect_right(handle.starts, end - 1) - 1
        refs = entry.chunks[first : last + 1]
        demand = asyncio.ensure_future(self._chunks(refs, handle.path))  # queued before readahead
        if offset in (0, handle.next_offset):
            self._read_ahead(handle, last + 1, end)
        handle.next_offset = end
        data = await demand
        pieces = []
        for index, ref in enumerate(refs, start=first):
            start = handle.starts[index]
            chunk = data[ref.id]
            pieces.append(chunk[max(0, offset - start) : end - start])
        return b"".join(pieces)

    def _read_ahead(self, handle: OpenFile, after: int, end: int) -> None:
        """Fetch the chunks of the next `readahead` bytes, in batches of at least half that.

        A batch starts only once less than half a window is left ahead of the
        reader, so each one is a few MiB: neighbours in a pack merge into one
        ranged read, not one read per chunk.
        """
        chunks = handle.entry.chunks
        start = max(after, handle.ahead)
        if start >= len(chunks) or handle.starts[start] >= end + self.readahead // 2:
            return
        stop = min(len(chunks), bisect.bisect_left(handle.starts, end + self.readahead, lo=start))
        if start >= stop:
            return
        handle.ahead = stop
        wanted = [
            ref
            for ref in chunks[start:stop]
            if ref.id not in self._lru and ref.id not in self._inflight
        ]
        self._in_background(wanted, handle.path)

    def read_siblings(
        self, directory: ObjectId, entries: Iterable[Entry], where: str, opened: str
    ) -> None:
        """Start fetching the small files of a directory one of them was opened in.

        Files of a directory were packed side by side by their put, so one
        ranged read brings them all, where opening them one by one costs a
        read each (what test runners and compilers do to small files). Only
        when the reading looks like a walk of the directory: the file opened
        is its first small file, or another of its files was opened before; a
        job that opens one file here and there fetches only what it reads.
        Once per directory (a bounded memory of them), at most `SIBLINGS_BYTES`.
        """
        if self.readahead <= 0 or self._warmed.get(directory):
            return
        small = [e for e in entries if isinstance(e, FileEntry) and len(e.chunks) == 1]
        if not small:
            return
        if small[0].name != opened and directory not in self._warmed:
            self._warmed.put(directory, False, 1)  # one open seen: the next one fetches
            return
        self._warmed.put(directory, True, 1)
        wanted: list[ChunkRef] = []
        total = 0
        for entry in small:
            ref = entry.chunks[0]
            if ref.id in self._lru or ref.id in self._inflight:
                continue
            total += ref.length
            if total > SIBLINGS_BYTES:
                break
            wanted.append(ref)
        self._in_background(wanted, where)

    def fetch_ahead(self, refs: Iterable[ChunkRef], where: str) -> None:
        """Start fetching chunks a reader is expected to ask for soon (those not here yet)."""
        wanted = [r for r in refs if r.id not in self._lru and r.id not in self._inflight]
        self._in_background(list(dict.fromkeys(wanted)), where)

    def fetch_into_cache(self, refs: Iterable[ChunkRef], where: str) -> None:
        """Start fetching chunks into the chunk cache only, not memory (a walk far ahead).

        At most `_CACHE_FETCHES` run at a time, so demand reads keep the
        store's other connections; one waiting its turn is nothing a demand
        read waits for (it fetches for itself, and the turn skips what the
        cache then holds).
        """
        if self.repo.cache is None:
            self.fetch_ahead(refs, where)
            return
        wanted = list({r.id: r for r in refs}.values())
        if wanted:
            task = asyncio.ensure_future(self._into_cache(wanted, where))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _into_cache(self, refs: list[ChunkRef], where: str) -> dict[ObjectId, bytes]:
        """Fetch `refs` into the cache once this fetch's turn comes (what it still lacks)."""
        cache = self.repo.cache
        assert cache is not None
        async with self._cache_fetches:
            refs = [r for r in refs if r.id not in self._lru and r.id not in self._inflight]
            held = cache.has_many(r.id for r in refs)
            refs = [r for r in refs if r.id not in held]
            if refs:
                await self._fetch(refs, where, background=True, keep=False)
        return {}

    def _in_background(self, wanted: list[ChunkRef], where: str) -> None:
        """Fetch `wanted` in the background: those the chunk cache holds apart from the rest.

        A demand read waits for the batch that holds its chunk; a chunk the
        cache has (fetched by `--prefetch`, an earlier mount or a get) must
        not wait behind chunks that come over the network.
        """
        cache = self.repo.cache
        held = cache.has_many(r.id for r in wanted) if cache is not None and wanted else set()
        for batch in ([r for r in wanted if r.id in held], [r for r in wanted if r.id not in held]):
            if batch:
                task = asyncio.ensure_future(self._fetch(batch, where, background=True))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _chunks(self, refs: tuple[ChunkRef, ...], path: str) -> dict[ObjectId, bytes]:
        """The verified bytes of `refs`, from the LRU, a fetch in flight or a new fetch."""
        found: dict[ObjectId, bytes] = {}
        waiting: dict[ObjectId, asyncio.Future[bytes | None]] = {}
        missing: list[ChunkRef] = []
        for ref in refs:
            data = self._lru.get(ref.id)
            if data is not None:
                found[ref.id] = data
            elif ref.id in self._inflight:
                waiting[ref.id] = self._inflight[ref.id]
            elif ref.id not in found:
                missing.append(ref)
        if missing:
            found.update(await self._fetch(list(dict.fromkeys(missing)), path))
        for chunk_id, future in waiting.items():
            data = await asyncio.shield(future)
            if data is None:  # not kept in memory (a readahead failed, or went to the cache)
                ref = next(r for r in refs if r.id == chunk_id)
                data = (await self._fetch([ref], path))[chunk_id]
            found[chunk_id] = data
        return found

    async def _fetch(
        self, refs: list[ChunkRef], path: str, *, background: bool = False, keep: bool = True
    ) -> dict[ObjectId, bytes]:
        """One batched, verified fetch; readahead failures are quiet (the demand read reports).

        With `keep=False` (a fetch into the chunk cache) nothing stays in
        memory: a read that waited on it gets None and takes its chunk from
        the cache. A waiting read never gets this fetch's error either: a
        neighbour that does not verify, or a slow batch, is not its file's
        problem, so it reads its chunk alone.
        """
        loop = asyncio.get_running_loop()
        futures: dict[ObjectId, asyncio.Future[bytes | None]] = {}
        for ref in refs:
            futures[ref.id] = self._inflight[ref.id] = loop.create_future()
        ids = list(futures)
        try:
            what = f"chunk {ids[0]}" + (f" and {len(ids) - 1} more" if len(ids) > 1 else "")
            got = await self.relocation.read(
                lambda: self.repo.get_chunks(ids, self.max_chunk), what
            )
            out = {r.id: checked_length(got[r.id], r.length, f"{path}: chunk {r.id}") for r in refs}
        except CasError as exc:
            for future in futures.values():
                future.set_result(None)
            if background:
                log.debug("readahead of %s failed: %s", path, exc)
                return {}
            raise ReadFailed(f"{path}: {exc}") from None
        except BaseException as exc:  # cancelled (unmounting), or a bug: never leave waiters
            for future in futures.values():
                fail(future, exc)
            raise
        finally:
            for chunk_id, future in futures.items():
                if self._inflight.get(chunk_id) is future:
                    del self._inflight[chunk_id]
        if not keep:
            for future in futures.values():
                future.set_result(None)
            return {}
        for chunk_id, data in out.items():
            self._lru.put(chunk_id, data, len(data))
            futures[chunk_id].set_result(data)
        return out

    async def close(self) -> None:
        """Stop readahead still running."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
