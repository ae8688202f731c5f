"""Pack indexes: where every chunk and tree of one manifest lies (store format 2).

A manifest's id depends on its content only (invariant 7), so it cannot say
where its objects were packed: that differs from store to store. Each put
therefore writes an *index* beside its manifest, listing the pack, offset and
lengths of every object the manifest reaches. A get reads the manifest's
index once and then needs nothing else, so a fresh runner's cost is in
proportion to the tree it fetches, never to the store (no global index).

An index is named by the manifest it serves and by its own content: the
first 16 bytes of the manifest id, then the first 16 bytes of the BLAKE3 of
the index body. Listing the index namespace by the manifest's 32-hex-digit
prefix finds every index of that manifest with one request; the content half
lets several coexist (a put repaired after a collection, a collection that
repacked), each one verifiable on its own.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from cas import codec
from cas.errors import IntegrityError
from cas.ids import ID_BYTES, ObjectId, hash_bytes
from cas.pack import _KIND_CODES, _KINDS_BY_CODE, ObjectKind

MAGIC: Final = b"CASIDX2\x00"
HEADER: Final = struct.Struct("<8s32sII")
"""Magic, manifest id, number of packs, number of entries."""
ENTRY: Final = struct.Struct("<B32sIQII")
"""Kind code, object id, pack number, offset, stored length, raw length."""
MAX_INDEX_BYTES: Final = 256 << 20
"""Uncompressed; about five million objects."""
PREFIX_CHARS: Final = 32
"""Hex digits of the manifest id that start every name of its indexes."""


class Location(NamedTuple):
    """Where an object's frame lies: pack id, offset, stored and raw lengths."""

    pack: ObjectId
    offset: int
    stored: int
    raw: int


@dataclass
class PackIndex:
    """The locations of one manifest's objects."""

    manifest: ObjectId
    chunks: dict[ObjectId, Location] = field(default_factory=dict)
    trees: dict[ObjectId, Location] = field(default_factory=dict)
    name: ObjectId | None = None
    """The store name it was read from (None for one being built)."""

    def table(self, kind: ObjectKind) -> dict[ObjectId, Location]:
        """The locations of one kind."""
        return self.chunks if kind is ObjectKind.CHUNK else self.trees

    def packs(self) -> set[ObjectId]:
        """Every pack this index names."""
        return {loc.pack for loc in self.chunks.values()} | {
            loc.pack for loc in self.trees.values()
        }

    def items(self) -> Iterable[tuple[ObjectKind, ObjectId, Location]]:
        """Every entry, chunks first."""
        for object_id, loc in self.chunks.items():
            yield ObjectKind.CHUNK, object_id, loc
        for object_id, loc in self.trees.items():
            yield ObjectKind.TREE, object_id, loc


def index_prefix(manifest_id: ObjectId) -> str:
    """The hex prefix shared by the names of every index of `manifest_id`."""
    return str(manifest_id)[:PREFIX_CHARS]


def index_name(manifest_id: ObjectId, body: bytes) -> ObjectId:
    """Manifest half, then content half."""
    half = ID_BYTES // 2
    return ObjectId(bytes(manifest_id)[:half] + bytes(hash_bytes(body))[:half])


def encode_index(index: PackIndex, level: int = codec.DEFAULT_LEVEL) -> tuple[ObjectId, bytes]:
    """(name, stored blob): the canonical body (entries sorted by kind, then id) as one frame."""
    packs = sorted(index.packs())
    number = {pack: n for n, pack in enumerate(packs)}
    rows = sorted((_KIND_CODES[kind], object_id, loc) for kind, object_id, loc in index.items())
    parts = [HEADER.pack(MAGIC, index.manifest, len(packs), len(rows))]
    parts.extend(packs)
    parts.extend(
        ENTRY.pack(code, object_id, number[loc.pack], loc.offset, loc.stored, loc.raw)
        for code, object_id, loc in rows
    )
    body = b"".join(parts)
    if len(body) > MAX_INDEX_BYTES:
        raise IntegrityError("index", str(index.manifest), "too many objects for one index")
    return index_name(index.manifest, body), codec.encode(body, level)


def decode_index(name: ObjectId, blob: bytes) -> PackIndex:
    """Decompress within the cap, check the name against the content, parse strictly."""
    where = str(name)
    body = codec.decode(blob, MAX_INDEX_BYTES, kind="index", object_id=where)
    if bytes(hash_bytes(body))[: ID_BYTES // 2] != bytes(name)[ID_BYTES // 2 :]:
        raise IntegrityError("index", where, "content does not match its name")
    if len(body) < HEADER.size:
        raise IntegrityError("index", where, "too short")
    magic, manifest, pack_count, count = HEADER.unpack_from(body)
    if magic != MAGIC:
        raise IntegrityError("index", where, "not a pack index (bad magic)")
    if manifest[: ID_BYTES // 2] != name[: ID_BYTES // 2]:
        raise IntegrityError("index", where, "names another manifest than its content")
    packs_end = HEADER.size + pack_count * ID_BYTES
    if len(body) != packs_end + count * ENTRY.size:
        raise IntegrityError("index", where, "length does not match its counts")
    packs = [ObjectId(body[i : i + ID_BYTES]) for i in range(HEADER.size, packs_end, ID_BYTES)]
    index = PackIndex(ObjectId(manifest), name=name)
    previous = (-1, b"")
    for code, raw_id, number, offset, stored, raw in ENTRY.iter_unpack(body[packs_end:]):
        kind = _KINDS_BY_CODE.get(code)
        if kind is None or number >= pack_count or stored == 0:
            raise IntegrityError("index", where, "malformed entry")
        if (code, raw_id) <= previous:
            raise IntegrityError("index", where, "entries not sorted or not unique")
        previous = (code, raw_id)
        index.table(kind)[ObjectId(raw_id)] = Location(packs[number], offset, stored, raw)
    return index


def verify_index_blob(name: ObjectId, blob: bytes) -> None:
    """What a server checks before storing an index (raises `IntegrityError`)."""
    decode_index(name, blob)
