"""Check an uploaded object before it reaches the store.

A client can only store what it could have produced honestly:

1. a pack (`Kind.PACK`) must hash (BLAKE3, all its bytes) to its name, be
   at most `cas.pack.MAX_PACK_BYTES`, have a trailer that tiles its frames
   exactly, and every frame must inflate within its kind's limit to content
   that hashes to the id the trailer lists (`cas.pack.verify_pack`);
2. a pack index (`Kind.INDEX`) must be one zstd frame declaring at most
   `cas.packindex.MAX_INDEX_BYTES`, whose content matches both halves of
   its name and parses strictly (`cas.packindex.verify_index_blob`);
3. a manifest or gc record must be one zstd frame that declares its
   content size, no larger than the kind's limit (so a decompression bomb
   is refused without inflating it), whose content hashes to its name.

Everyone who later reads the object verifies it again; this check keeps a
buggy or hostile writer from planting garbage that would fail those reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cas import codec
from cas.codec import stored_size_bound
from cas.ids import ObjectId, verify
from cas.indexbook import MAX_INDEX_BLOB
from cas.objects import MAX_MANIFEST_BYTES
from cas.pack import MAX_PACK_BYTES, verify_pack
from cas.packindex import verify_index_blob
from cas.repo import DEFAULT_MAX_CHUNK
from cas.store.base import Kind

MAX_INDEX_BODY: Final = MAX_INDEX_BLOB
"""Compressed size cap of an index upload; its content is capped by its frame header."""
frame_bound = stored_size_bound
"""The largest zstd frame of `max_size` content (zstd's compress bound, with headroom)."""


DEFAULT_BODY_GRACE: Final = 20.0
"""Seconds any upload body may take before it must keep up `MIN_BODY_RATE`."""
MIN_BODY_RATE: Final = 16 << 10
"""Bytes per second an upload body must average after its grace period."""


@dataclass(frozen=True)
class Limits:
    """Largest chunk accepted, and from it the upload caps per kind; how slowly a body may arrive.

    An upload holds one of the server's few upload slots while its body
    arrives, so a body may take `body_grace` seconds plus one second per
    `min_body_rate` bytes received; a slower one is refused (408) and its
    slot freed, and a stalled or trickling client cannot stall the others.
    """

    max_chunk: int = DEFAULT_MAX_CHUNK
    body_grace: float = DEFAULT_BODY_GRACE
    min_body_rate: int = MIN_BODY_RATE

    def content(self, kind: Kind) -> int:
        """Largest uncompressed size of a single-frame object (manifests, gc records)."""
        return MAX_MANIFEST_BYTES if kind is Kind.MANIFEST else self.max_chunk

    def body(self, kind: Kind) -> int:
        """Largest upload body (and stored object) accepted for `kind`."""
        if kind is Kind.PACK:
            return MAX_PACK_BYTES
        if kind is Kind.INDEX:
            return MAX_INDEX_BODY
        return frame_bound(self.content(kind))


def verify_upload(kind: Kind, object_id: ObjectId, body: bytes, limits: Limits) -> None:
    """Raise `IntegrityError` naming the object unless `body` is what `object_id` names."""
    if kind is Kind.PACK:
        verify_pack(object_id, body, max_chunk=limits.max_chunk)
    elif kind is Kind.INDEX:
        verify_index_blob(object_id, body)
    else:
        content = codec.decode(body, limits.content(kind), kind=str(kind), object_id=str(object_id))
        verify(str(kind), object_id, content)
