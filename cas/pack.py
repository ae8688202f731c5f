"""Packs: many chunks and trees in one immutable store object (store format 2).

One object per chunk cost a cloud store one billed write per chunk and a
local store one inode per chunk. A pack holds thousands of them, each still
its own zstd frame, so any one can be read alone by byte range and verified
against its id. A pack describes itself: its trailer lists every frame, so
indexes can be rebuilt from packs alone and a server can check an upload
completely before storing it. docs/format.md is the byte-level specification.

Layout::

    "CASPACK2"                          8 bytes
    frame, frame, ...                   zstd frames, back to back
    trailer                             one 49-byte record per frame (ENTRY)
    trailer length, count, "CASPEND2"   16 bytes (FOOTER)

A pack's id is the BLAKE3 of all its bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, NamedTuple

from cas import codec
from cas.errors import IntegrityError
from cas.ids import ObjectId, hash_bytes

HEAD_MAGIC: Final = b"CASPACK2"
TAIL_MAGIC: Final = b"CASPEND2"
FOOTER: Final = struct.Struct("<II8s")
"""Trailer length in bytes, number of entries, tail magic."""
ENTRY: Final = struct.Struct("<B32sQII")
"""Kind code, object id, offset of its frame in the pack, stored length, raw length."""

TARGET_PACK_BYTES: Final = 64 << 20
"""Writers seal a pack once it holds this many stored bytes (about 16 writes per GiB)."""
MAX_PACK_BYTES: Final = 128 << 20
"""No pack is larger; servers refuse bigger uploads."""
MAX_ENTRIES: Final = 16384
"""Frames per pack at most: bounds the trailer to 784 KiB."""
MAX_TREE_BYTES: Final = 64 << 20
"""A tree's uncompressed size limit (as in `cas.objects`)."""


class ObjectKind(StrEnum):
    """What a pack frame holds; ids of different kinds never stand for each other."""

    CHUNK = "chunk"
    TREE = "tree"


_KIND_CODES: Final = {ObjectKind.CHUNK: 0, ObjectKind.TREE: 1}
_KINDS_BY_CODE: Final = {code: kind for kind, code in _KIND_CODES.items()}


class PackEntry(NamedTuple):
    """Where one object's frame lies in its pack."""

    kind: ObjectKind
    id: ObjectId
    offset: int
    stored: int
    raw: int


@dataclass(frozen=True)
class SealedPack:
    """A complete pack: its id, its bytes and what it holds."""

    id: ObjectId
    data: bytes
    entries: list[PackEntry]


class PackBuilder:
    """Collects frames; `seal` lays them out with the trailer and names the pack.

    Frames are kept as they come and joined once at `seal` (in a worker
    thread): appending each frame to one growing buffer cost a copy per frame
    while holding the interpreter lock.
    """

    def __init__(self) -> None:
        self._frames: list[bytes] = [HEAD_MAGIC]
        self._size = len(HEAD_MAGIC)
        self.entries: list[PackEntry] = []

    @property
    def size(self) -> int:
        """Bytes so far, trailer not counted."""
        return self._size

    def full(self, target: int = TARGET_PACK_BYTES) -> bool:
        """Whether the pack should be sealed before another frame is added."""
        return self._size >= target or len(self.entries) >= MAX_ENTRIES

    def add(self, kind: ObjectKind, object_id: ObjectId, raw: int, frame: bytes) -> PackEntry:
        """Append one encoded object (a zstd frame of `raw` bytes)."""
        if len(self.entries) >= MAX_ENTRIES:
            raise ValueError("pack is full")
        entry = PackEntry(kind, object_id, self._size, len(frame), raw)
        self._frames.append(frame)
        self._size += len(frame)
        self.entries.append(entry)
        return entry

    def seal(self) -> SealedPack:
        """Finish the pack: trailer, footer, id."""
        trailer = trailer_bytes(self.entries)
        footer = FOOTER.pack(len(trailer), len(self.entries), TAIL_MAGIC)
        data = b"".join([*self._frames, trailer, footer])
        self._frames = []
        return SealedPack(hash_bytes(data), data, self.entries)


def trailer_bytes(entries: Iterable[PackEntry]) -> bytes:
    """The trailer listing `entries`."""
    return b"".join(
        ENTRY.pack(_KIND_CODES[e.kind], e.id, e.offset, e.stored, e.raw) for e in entries
    )


def entries_from_trailer(pack_id: ObjectId, trailer: bytes, *, max_chunk: int) -> list[PackEntry]:
    """Parse a trailer kept apart from its pack (a put's journal), checked like one read with it."""
    _check_trailer_length(pack_id, trailer)
    frames = sum(stored for _, _, _, stored, _ in ENTRY.iter_unpack(trailer))
    size = len(HEAD_MAGIC) + frames + len(trailer) + FOOTER.size
    return parse_trailer(pack_id, trailer, size, max_chunk=max_chunk)


def _check_trailer_length(pack_id: ObjectId, trailer: bytes) -> None:
    """A trailer's length is whole entries (checked here, not left to `struct`'s error)."""
    if len(trailer) % ENTRY.size:
        raise IntegrityError(
            "pack", str(pack_id), "trailer length is not a whole number of entries"
        )


def encode_frames(
    items: Iterable[tuple[ObjectId, bytes]], level: int = codec.DEFAULT_LEVEL
) -> list[tuple[ObjectId, int, bytes]]:
    """Frames for a pack: (id, raw length, zstd frame) of each named object.

    The one way objects are compressed for packing, in put's reader threads
    and in its worker processes alike (this module needs only the codec and
    ids, so importing it costs a worker process next to nothing).
    """
    return [(object_id, len(data), codec.encode(data, level)) for object_id, data in items]


def build_pack(
    items: Iterable[tuple[ObjectKind, bytes]], level: int = codec.DEFAULT_LEVEL
) -> SealedPack:
    """A pack of raw objects, encoded here (tests, tools and gc's repacking)."""
    builder = PackBuilder()
    for kind, data in items:
        builder.add(kind, hash_bytes(data), len(data), codec.encode(data, level))
    return builder.seal()


def parse_footer(pack_id: ObjectId, footer: bytes, pack_size: int) -> tuple[int, int]:
    """(trailer length, entry count) from a pack's last `FOOTER.size` bytes, checked."""
    if len(footer) != FOOTER.size or pack_size < len(HEAD_MAGIC) + FOOTER.size:
        raise IntegrityError("pack", str(pack_id), "too short to be a pack")
    trailer_len, count, magic = FOOTER.unpack(footer)
    if magic != TAIL_MAGIC:
        raise IntegrityError("pack", str(pack_id), "does not end with a pack footer")
    if count > MAX_ENTRIES or trailer_len != count * ENTRY.size:
        raise IntegrityError(
            "pack", str(pack_id), f"footer declares {count} entries in {trailer_len} bytes"
        )
    if trailer_len > pack_size - len(HEAD_MAGIC) - FOOTER.size:
        raise IntegrityError("pack", str(pack_id), "trailer is longer than the pack")
    return trailer_len, count


def parse_trailer(
    pack_id: ObjectId, trailer: bytes, pack_size: int, *, max_chunk: int
) -> list[PackEntry]:
    """The entries a trailer lists, checked to tile the pack's frame area exactly."""
    _check_trailer_length(pack_id, trailer)
    where = str(pack_id)
    frames_end = pack_size - len(trailer) - FOOTER.size
    expected = len(HEAD_MAGIC)
    entries = []
    seen: set[tuple[int, bytes]] = set()
    for code, raw_id, offset, stored, raw in ENTRY.iter_unpack(trailer):
        kind = _KINDS_BY_CODE.get(code)
        if kind is None:
            raise IntegrityError("pack", where, f"unknown object kind code {code}")
        if offset != expected or stored == 0 or offset + stored > frames_end:
            raise IntegrityError("pack", where, f"frame at {offset} ({stored} bytes) out of place")
        limit = max_chunk if kind is ObjectKind.CHUNK else MAX_TREE_BYTES
        if raw > limit:
            raise IntegrityError(
                "pack", where, f"{kind} of {raw} bytes exceeds the {limit}-byte limit"
            )
        if (code, raw_id) in seen:
            raise IntegrityError("pack", where, f"{kind} {raw_id.hex()} listed twice")
        seen.add((code, raw_id))
        entries.append(PackEntry(kind, ObjectId(raw_id), offset, stored, raw))
        expected = offset + stored
    if expected != frames_end:
        raise IntegrityError("pack", where, "frames do not fill the space before the trailer")
    return entries


def read_entries(pack_id: ObjectId, data: bytes, *, max_chunk: int) -> list[PackEntry]:
    """The entries of a whole pack held in memory (structure checked, frames not)."""
    if not data.startswith(HEAD_MAGIC):
        raise IntegrityError("pack", str(pack_id), "does not start with a pack header")
    trailer_len, _ = parse_footer(pack_id, data[-FOOTER.size :], len(data))
    start = len(data) - FOOTER.size - trailer_len
    return parse_trailer(pack_id, data[start : start + trailer_len], len(data), max_chunk=max_chunk)


def decode_frame(entry: PackEntry, frame: bytes | memoryview) -> bytes:
    """Decompress one frame within its declared size and verify it against its id."""
    if len(frame) != entry.stored:
        raise IntegrityError(str(entry.kind), str(entry.id), "frame is cut short")
    data = codec.decode(frame, entry.raw, kind=str(entry.kind), object_id=str(entry.id))
    if len(data) != entry.raw:
        raise IntegrityError(
            str(entry.kind), str(entry.id), f"inflates to {len(data)} bytes, index says {entry.raw}"
        )
    got = hash_bytes(data)
    if got != entry.id:
        raise IntegrityError(str(entry.kind), str(entry.id), f"content hashes to {got}")
    return data


def verify_pack(pack_id: ObjectId, data: bytes, *, max_chunk: int) -> list[PackEntry]:
    """Check a whole pack: its id, its structure and every frame; return its entries."""
    got = hash_bytes(data)
    if got != pack_id:
        raise IntegrityError("pack", str(pack_id), f"content hashes to {got}")
    if len(data) > MAX_PACK_BYTES:
        raise IntegrityError("pack", str(pack_id), f"larger than {MAX_PACK_BYTES} bytes")
    entries = read_entries(pack_id, data, max_chunk=max_chunk)
    view = memoryview(data)
    for entry in entries:
        decode_frame(entry, view[entry.offset : entry.offset + entry.stored])
    return entries
