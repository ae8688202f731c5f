"""Content-defined chunking with FastCDC-2020 (pyfastcdc).

Cut points depend only on content, so an insertion near the start of a large
file moves one or two chunk boundaries instead of every one after it. The
algorithm name and all its parameters go into each manifest: another chunker,
or the same one with other parameters, cuts elsewhere, and `get --seed` must
re-chunk local files exactly as the writer did.

`pyfastcdc.cut_stream` reads through `readinto` into a buffer of about twice
the maximum chunk size and releases the GIL, so several files can be chunked
at once in threads and memory does not grow with the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final, Literal, Protocol, cast

import pyfastcdc

from cas.errors import UsageError

ALGORITHM: Final = "fastcdc-2020"

# pyfastcdc's accepted ranges.
_MIN_RANGE = (64, 1 << 20)
_AVG_RANGE = (256, 4 << 20)
_MAX_RANGE = (1024, 16 << 20)


@dataclass(frozen=True)
class ChunkParams:
    """FastCDC parameters; defaults are the measured choice in docs/format.md."""

    min_size: int = 128 << 10
    avg_size: int = 512 << 10
    max_size: int = 2 << 20
    normalization: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value, (lo, hi) in (
            ("min_size", self.min_size, _MIN_RANGE),
            ("avg_size", self.avg_size, _AVG_RANGE),
            ("max_size", self.max_size, _MAX_RANGE),
        ):
            if not lo <= value <= hi:
                raise UsageError(f"chunk {name} {value} is outside [{lo}, {hi}]")
        if not self.min_size <= self.avg_size <= self.max_size:
            raise UsageError("chunk sizes must satisfy min <= avg <= max")
        if self.normalization not in (0, 1, 2, 3):
            raise UsageError("chunk normalization level must be 0..3")

    @classmethod
    def from_avg(cls, avg_size: int) -> ChunkParams:
        """The usual shape: min = avg/4, max = avg*4."""
        return cls(min_size=avg_size // 4, avg_size=avg_size, max_size=avg_size * 4)

    def to_dict(self) -> dict[str, int | str]:
        """The manifest's `chunker` field."""
        return {
            "algorithm": ALGORITHM,
            "min_size": self.min_size,
            "avg_size": self.avg_size,
            "max_size": self.max_size,
            "normalization": self.normalization,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ChunkParams:
        """Parse a manifest's `chunker` field; raises `UsageError` on anything unknown."""
        if data.get("algorithm") != ALGORITHM:
            raise UsageError(f"unknown chunking algorithm {data.get('algorithm')!r}")
        fields = ("min_size", "avg_size", "max_size", "normalization", "seed")
        values = {k: data.get(k) for k in fields}
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values.values()):
            raise UsageError("chunker parameters must be integers")
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Chunk:
    """A piece of a file. `data` is valid only until the next chunk is produced."""

    offset: int
    length: int
    data: memoryview


class Chunker(Protocol):
    """Anything that cuts a stream into chunks; tests inject failing ones."""

    params: ChunkParams

    def chunks(self, stream: BinaryIO) -> Iterator[Chunk]:
        """Yield consecutive chunks of `stream`; nothing for an empty stream."""
        ...

    def chunks_of_buffer(self, data: bytes) -> Iterator[Chunk]:
        """The same cut points over bytes already in memory."""
        ...


class FastCdcChunker:
    """The default `Chunker`. Not thread-safe: make one per thread."""

    def __init__(self, params: ChunkParams) -> None:
        self.params = params
        self._cdc = pyfastcdc.FastCDC(
            params.avg_size,
            min_size=params.min_size,
            max_size=params.max_size,
            normalized_chunking=cast(Literal[0, 1, 2, 3], params.normalization),
            seed=params.seed,
        )

    def chunks(self, stream: BinaryIO) -> Iterator[Chunk]:
        """Stream chunks of `stream` in constant memory (for large files).

        `cut_stream` allocates a buffer of about twice the maximum chunk size
        per call; for the many small files of a build tree that allocation
        costs more than the chunking, so callers read those whole and use
        `chunks_of_buffer` instead.
        """
        for piece in self._cdc.cut_stream(stream):
            yield Chunk(piece.offset, piece.length, piece.data)

    def chunks_of_buffer(self, data: bytes) -> Iterator[Chunk]:
        """Cut bytes already in memory; the same cut points as `chunks`."""
        if len(data) <= self.params.min_size:
            if data:
                yield Chunk(0, len(data), memoryview(data))
            return
        for piece in self._cdc.cut_buf(data):
            yield Chunk(piece.offset, piece.length, piece.data)
