"""Reading one source file into named chunks, the step put repeats per file.

Shared by put's two ways of running it (reader threads in the put process,
and worker processes for batches of small files), so both cut, hash and
describe files identically and a tree's id never depends on which one ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cas.caches.files import CachedFile, FileIdentity
from cas.chunking import Chunker, ChunkParams
from cas.errors import SourceError
from cas.ids import ObjectId, hash_bytes, new_hasher
from cas.objects import ChunkRef, FileEntry
from cas.put.listing import SourceEntry

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_FADVISE = getattr(os, "posix_fadvise", None)
"""Read-ahead advice where the platform has it (Linux); elsewhere files are simply read."""

ChunkSink = Callable[[ObjectId, bytes], None]
"""Receives every chunk of a file, in order, as it is cut."""


@dataclass(frozen=True)
class CutSettings:
    """What decides how a file is described: the same in every thread and process."""

    params: ChunkParams
    inline_max: int
    mtimes: bool

    def mtime(self, child: SourceEntry) -> int | None:
        """The mtime a tree records for `child` (none when mtimes are off)."""
        return child.st.st_mtime_ns if self.mtimes else None


@dataclass(frozen=True)
class CutFile:
    """One file read: its tree entry, and whether the files cache may remember it."""

    entry: FileEntry
    rememberable: bool
    changed: bool

    def warning(self, child: SourceEntry) -> str | None:
        """What to tell the user about this read, if anything."""
        if not self.changed:
            return None
        return f"{child.rel} changed while being read; stored what was read"

    def remembered(self, child: SourceEntry) -> CachedFile | None:
        """The files-cache record for this read, if the file was stable throughout."""
        if not self.rememberable:
            return None
        return CachedFile(FileIdentity.of(child.st), self.entry.digest, self.entry.chunks)


@dataclass
class Described:
    """What reading a batch produced: entries in batch order, files-cache records, counts.

    An entry is None for a file left out as unreadable (`put --skip-unreadable`),
    listed in `unreadable` with the reason.
    """

    entries: list[FileEntry | None] = field(default_factory=list)
    remember: list[tuple[str, CachedFile]] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)


def cut_all(
    cutter: FileCutter,
    batch: Sequence[SourceEntry],
    sink: ChunkSink,
    *,
    skip_unreadable: bool,
    opened: OpenedAhead | None = None,
) -> Described:
    """Cut every file of `batch`; an unreadable one fails the batch unless skipped."""
    cuts: list[CutFile | None] = []
    unreadable: list[tuple[str, str]] = []
    for child in batch:
        fd = opened.take(child) if opened is not None else None
        try:
            cuts.append(cutter.cut(child, sink, fd))
        except SourceError as exc:
            if not skip_unreadable:
                raise
            cuts.append(None)
            unreadable.append((child.rel, str(exc)))
    out = describe(batch, cuts)
    out.unreadable = unreadable
    return out


def describe(batch: Sequence[SourceEntry], cuts: Sequence[CutFile | None]) -> Described:
    """Collect the entries, records, counts and warnings of a batch just cut."""
    out = Described()
    for child, cut in zip(batch, cuts, strict=True):
        if cut is None:
            out.entries.append(None)
            continue
        out.counts.update(files=1, bytes_read=cut.entry.size, chunks=len(cut.entry.chunks))
        warning = cut.warning(child)
        if warning is not None:
            out.warnings.append(warning)
        record = cut.remembered(child)
        if record is not None:
            out.remember.append((child.path, record))
        out.entries.append(cut.entry)
    return out


class OpenedAhead:
    """A batch of small files opened together, their reads requested from the disk at once.

    Read one by one, each file missing from the page cache waits for the
    disk; asking for all of them first (`POSIX_FADV_WILLNEED`) lets the disk
    serve them together (`benchmarks/read_advice.py`: a cold read of the torch
    tree 0.76 s instead of 1.42 s). The files are opened once, here, so a warm
    page cache costs one extra system call per file. Best effort: a file that
    cannot be opened is left to `FileCutter.cut`, which reports the error.
    """

    def __init__(self, batch: Sequence[SourceEntry]) -> None:
        self._fds: dict[str, int] = {}
        try:
            for child in batch:
                try:
                    fd = os.open(child.path, _OPEN_FLAGS)
                except OSError:
                    continue
                self._fds[child.path] = fd
                if _FADVISE is not None:
                    with contextlib.suppress(OSError):
                        _FADVISE(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except BaseException:
            self.close()
            raise

    def take(self, child: SourceEntry) -> int | None:
        """The descriptor of `child`, now owned by the caller; None if it was not opened."""
        return self._fds.pop(child.path, None)

    def close(self) -> None:
        """Close what was not taken (an aborted batch)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> OpenedAhead:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def entry_from_cache(settings: CutSettings, child: SourceEntry, hit: CachedFile) -> FileEntry:
    """The tree entry of an unchanged file, from its files-cache record (no read)."""
    return FileEntry(
        child.name,
        stat.S_IMODE(child.st.st_mode),
        hit.identity.size,
        settings.mtime(child),
        hit.digest,
        hit.chunks,
        None,
    )


class FileCutter:
    """Reads, cuts and hashes files; one per thread (the chunker is not shareable)."""

    def __init__(
        self,
        settings: CutSettings,
        chunker: Chunker,
        abort: threading.Event | None = None,
        advance: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self._chunker = chunker
        self._abort = abort
        self._advance = advance or (lambda n: None)

    def cut(self, child: SourceEntry, sink: ChunkSink, fd: int | None = None) -> CutFile:
        """Read `child`, send its chunks to `sink`, return its entry.

        `fd`, if given, is `child` already opened (by `OpenedAhead`); it is
        closed here either way. A file that changes while being read is
        stored as read, with `changed` set; it is never remembered by the
        files cache.
        """
        if fd is None:
            self._check_abort()
            try:
                fd = os.open(child.path, _OPEN_FLAGS)
            except OSError as exc:
                raise SourceError(f"cannot read {child.path}: {exc.strerror}") from None
        try:
            self._check_abort()
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise SourceError(f"{child.path} changed type while being read")
            whole_limit = 2 * self.settings.params.max_size
            data = _read_whole(fd, st.st_size, whole_limit) if st.st_size < whole_limit else None
            if data is None:
                chunks, size, digest = self._cut_stream(fd, sink)
                after = os.fstat(fd)
                changed = (after.st_mtime_ns, after.st_size) != (st.st_mtime_ns, st.st_size)
                inline = None
            else:
                changed = len(data) != st.st_size
                if len(data) <= self.settings.inline_max:
                    chunks, size, digest, inline = [], len(data), hash_bytes(data), data
                    self._advance(size)
                else:
                    chunks, size, digest = self._cut_buffer(data, sink)
                    inline = None
        except OSError as exc:
            raise SourceError(f"cannot read {child.path}: {exc.strerror}") from None
        finally:
            os.close(fd)
        entry = FileEntry(
            child.name,
            stat.S_IMODE(st.st_mode),
            size,
            self.settings.mtime(child),
            digest,
            tuple(chunks),
            inline,
        )
        # Only a file that matched its walk-time stat throughout may be remembered.
        stable = not changed and FileIdentity.of(st) == FileIdentity.of(child.st)
        return CutFile(entry, stable and inline is None and size == child.st.st_size, changed)

    def _check_abort(self) -> None:
        if self._abort is not None and self._abort.is_set():
            raise asyncio.CancelledError

    def _cut_buffer(self, data: bytes, sink: ChunkSink) -> tuple[list[ChunkRef], int, ObjectId]:
        refs = []
        for chunk in self._chunker.chunks_of_buffer(data):
            piece = data[chunk.offset : chunk.offset + chunk.length]
            chunk_id = hash_bytes(piece)
            refs.append(ChunkRef(chunk_id, len(piece)))
            sink(chunk_id, piece)
        self._advance(len(data))
        digest = refs[0].id if len(refs) == 1 else hash_bytes(data)  # one chunk: same bytes
        return refs, len(data), digest

    def _cut_stream(self, fd: int, sink: ChunkSink) -> tuple[list[ChunkRef], int, ObjectId]:
        whole = new_hasher()
        refs: list[ChunkRef] = []
        size = 0
        with os.fdopen(os.dup(fd), "rb", buffering=0) as stream:
            for chunk in self._chunker.chunks(stream):
                self._check_abort()
                data = bytes(chunk.data)  # the chunker reuses its buffer for the next chunk
                whole.update(data)
                chunk_id = hash_bytes(data)
                refs.append(ChunkRef(chunk_id, len(data)))
                size += len(data)
                sink(chunk_id, data)
                self._advance(len(data))
        return refs, size, ObjectId(whole.digest())


def _read_whole(fd: int, size: int, limit: int) -> bytes | None:
    """A small file's bytes in as few reads as possible; None if it grew to `limit`."""
    first = os.read(fd, size + 1)
    if len(first) == size:  # a short read of a regular file means end of file
        return first
    parts = [first]
    total = len(first)
    while total < limit:
        piece = os.read(fd, limit - total)
        if not piece:
            return b"".join(parts)
        parts.append(piece)
        total += len(piece)
    os.lseek(fd, 0, os.SEEK_SET)
    return None
