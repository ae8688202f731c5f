"""Writing encoded objects: a standalone object or an index, compressed and stored create-only.

Manifests, indexes and collection records are objects of their own (chunks
and trees live in packs, `cas.pack`). Each is one zstd frame named by its
content (`cas.codec`, `cas.packindex`); the repository, collection records,
repacking and reindexing all store them here, so there is one way to encode
and write them. Backends below only move bytes; nothing here reads back.
"""

from __future__ import annotations

import asyncio

from cas.codec import DEFAULT_LEVEL, encode_object
from cas.ids import ObjectId
from cas.packindex import PackIndex, encode_index
from cas.store.base import Kind, Store


async def write_object(
    store: Store, kind: Kind, data: bytes, level: int = DEFAULT_LEVEL
) -> tuple[ObjectId, bool]:
    """Store `data` create-only under its id: (the id, whether this call created it).

    Compressed on the event loop: these objects are small (a manifest, a record).
    """
    object_id, blob = encode_object(data, level)
    return object_id, await store.put_if_absent(kind, object_id, blob)


async def write_index(
    store: Store,
    index: PackIndex,
    level: int = DEFAULT_LEVEL,
    *,
    replacing: ObjectId | None = None,
) -> tuple[ObjectId, bool]:
    """Store an index create-only: (its name, whether this call created it).

    Encoded in a thread (an index can be megabytes). `replacing` names the
    index this one is written to replace: if the new one comes out under that
    same name it is that index, and nothing is written.
    """
    name, blob = await asyncio.to_thread(encode_index, index, level)
    if name == replacing:
        return name, False
    return name, await store.put_if_absent(Kind.INDEX, name, blob)
