"""zstd framing of stored objects.

Every object is stored as one zstd frame that declares its content size. The
declared size lets `decode` refuse a decompression bomb before allocating:
nothing inflates past the caller's `max_size` (the maximum chunk size for
chunks). Compressor and decompressor contexts are per thread because
python-zstandard contexts are not thread-safe.
"""

from __future__ import annotations

import threading

import zstandard

from cas.errors import IntegrityError
from cas.ids import ObjectId, hash_bytes, verify

DEFAULT_LEVEL = 3
MIN_LEVEL = 1
MAX_LEVEL = 19

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    ctx = cache.get(level)
    if ctx is None:
        ctx = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return ctx


def _decompressor() -> zstandard.ZstdDecompressor:
    ctx = getattr(_local, "decompressor", None)
    if ctx is None:
        ctx = _local.decompressor = zstandard.ZstdDecompressor()
    return ctx


def encode(data: bytes | memoryview, level: int = DEFAULT_LEVEL) -> bytes:
    """Compress `data` into one frame that records its size."""
    return _compressor(level).compress(data)


def decoded_size(blob: bytes | memoryview) -> int:
    """The content size a frame declares, or raise `ValueError` if it is not a valid frame."""
    try:
        size = zstandard.frame_content_size(blob)
    except zstandard.ZstdError as exc:
        raise ValueError(f"not a zstd frame ({exc})") from None
    if size < 0:
        raise ValueError("zstd frame does not declare its content size")
    return size


def decode(blob: bytes | memoryview, max_size: int, *, kind: str, object_id: str) -> bytes:
    """Decompress one frame, refusing anything that would inflate past `max_size`.

    Errors are `IntegrityError` naming the object: a frame that is malformed or
    too large cannot be what a well-behaved writer stored under that id.
    """
    try:
        size = decoded_size(blob)
    except ValueError as exc:
        raise IntegrityError(kind, object_id, str(exc)) from None
    if size > max_size:
        raise IntegrityError(
            kind, object_id, f"declares {size} bytes, more than the {max_size}-byte limit"
        )
    try:
        data = _decompressor().decompress(blob, max_output_size=max(size, 1))
    except zstandard.ZstdError as exc:
        raise IntegrityError(kind, object_id, f"does not decompress ({exc})") from None
    if len(data) != size:
        raise IntegrityError(kind, object_id, f"inflates to {len(data)} bytes but declares {size}")
    return data


def stored_size_bound(max_size: int) -> int:
    """The largest blob a zstd frame of `max_size` content can be (zstd's compress bound)."""
    return max_size + (max_size >> 7) + 4096


def encode_object(data: bytes | memoryview, level: int) -> tuple[ObjectId, bytes]:
    """Hash then compress: the id is always of the uncompressed bytes."""
    return hash_bytes(data), encode(data, level)


def decode_object(kind: str, object_id: ObjectId, blob: bytes, max_size: int) -> bytes:
    """Decompress within `max_size` and verify the id."""
    data = decode(blob, max_size, kind=str(kind), object_id=str(object_id))
    verify(str(kind), object_id, data)
    return data
