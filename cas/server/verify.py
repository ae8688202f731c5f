"""Check an uploaded object before it reaches the store.

A client can only store what it could have produced honestly:

1. the body must be one zstd frame that declares its content size, no
   larger than the kind's limit (so a decompression bomb is refused without
   inflating it);
2. the content must hash (BLAKE3) to the name it is uploaded under.

Everyone who later reads the object verifies it again; this check keeps a
buggy or hostile writer from planting garbage that would fail those reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from cas.ids import ObjectId
from cas.objects import MAX_MANIFEST_BYTES, MAX_TREE_BYTES
from cas.repo import DEFAULT_MAX_CHUNK, decode_object, stored_size_bound
from cas.store.base import Kind

# Trees and manifests have their own format limits; every other kind (chunks,
# and any namespace added later) is capped by the chunk limit.
_FORMAT_LIMITS: dict[Kind, int] = {Kind.TREE: MAX_TREE_BYTES, Kind.MANIFEST: MAX_MANIFEST_BYTES}


@dataclass(frozen=True)
class Limits:
    """Largest content accepted per kind."""

    max_chunk: int = DEFAULT_MAX_CHUNK

    def content(self, kind: Kind) -> int:
        """Largest uncompressed size accepted for `kind`."""
        return _FORMAT_LIMITS.get(kind, self.max_chunk)

    def body(self, kind: Kind) -> int:
        """Largest upload body accepted for `kind` (zstd's worst-case expansion)."""
        return stored_size_bound(self.content(kind))


def verify_upload(kind: Kind, object_id: ObjectId, body: bytes, limits: Limits) -> None:
    """Raise `IntegrityError` unless `body` decodes within the limit to `object_id`'s content."""
    decode_object(kind, object_id, body, limits.content(kind))
