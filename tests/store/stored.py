"""Well-formed stored objects of every store namespace, for tests that go through `cas serve`.

The server verifies each upload for its kind (a pack is checked frame by
frame, an index against both halves of its name), so tests store the real
thing: `stored(kind, content)` gives an id and bytes any backend accepts.
"""

from __future__ import annotations

import zstandard

from cas import codec
from cas.ids import ObjectId, hash_bytes
from cas.pack import ObjectKind, SealedPack, build_pack
from cas.packindex import Location, PackIndex, encode_index
from cas.store.base import Kind


def pack_of(*contents: bytes, level: int = codec.DEFAULT_LEVEL) -> SealedPack:
    """A pack holding each content as a chunk."""
    return build_pack([(ObjectKind.CHUNK, c) for c in contents], level)


def index_of(manifest_id: ObjectId, pack: SealedPack | None = None) -> tuple[ObjectId, bytes]:
    """The index of a manifest whose objects are those of `pack` (none without one)."""
    index = PackIndex(manifest_id)
    for entry in pack.entries if pack is not None else ():
        index.table(entry.kind)[entry.id] = Location(pack.id, entry.offset, entry.stored, entry.raw)
    return encode_index(index)


def stored(kind: Kind, content: bytes, level: int = codec.DEFAULT_LEVEL) -> tuple[ObjectId, bytes]:
    """(id, stored bytes) of a valid object of `kind` made from `content`.

    Packs hold `content` as one chunk; an index is the (empty) index of the
    manifest `hash(content)`; manifests and gc records are one zstd frame.
    """
    if kind is Kind.PACK:
        pack = pack_of(content, level=level)
        return pack.id, pack.data
    if kind is Kind.INDEX:
        return index_of(hash_bytes(content))
    return hash_bytes(content), codec.encode(content, level)


def two_encodings(content: bytes) -> tuple[ObjectId, bytes, bytes]:
    """Two different, equally valid manifest frames of one content (same id, other bytes)."""
    first = codec.encode(content)
    second = zstandard.ZstdCompressor(write_content_size=True, write_checksum=True).compress(
        content
    )
    assert first != second
    return hash_bytes(content), first, second
