"""Hand-made objects for hostile-manifest tests: canonical JSON, planted raw in a store.

Nothing here goes through `cas.objects` serialisation, `PackWriter` or
`Repository.put_manifest`: the point is to write exactly the bytes an attacker
(or a disk fault) could leave in a store: packs whose frames are not what
their ids say, indexes that lie about where frames are, manifests under the
wrong name.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cas import codec
from cas.get.downloader import Downloader, GetStats
from cas.ids import ObjectId, hash_bytes
from cas.objects import MANIFEST_FORMAT, TREE_FORMAT
from cas.pack import ObjectKind, PackBuilder, SealedPack
from cas.packindex import Location, PackIndex, encode_index
from cas.repo import Repository
from cas.store.base import Kind, Store

# Small chunker parameters so that bombs and over-long chunks are cheap to build.
MAX_CHUNK = 4096
CHUNKER: dict[str, Any] = {
    "algorithm": "fastcdc-2020",
    "min_size": 256,
    "avg_size": 1024,
    "max_size": MAX_CHUNK,
    "normalization": 1,
    "seed": 0,
}


def canon(obj: Any) -> bytes:
    """Canonical JSON as the format specifies it."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", errors="surrogatepass"
    )


def digest(data: bytes) -> str:
    return str(hash_bytes(data))


# ---------------------------------------------------------------- entries


def _name_fields(name: str | bytes) -> dict[str, str]:
    """`name` as text when it is a str, as `name_b64` when raw bytes are given."""
    if isinstance(name, bytes):
        return {"name_b64": base64.b64encode(name).decode("ascii")}
    return {"name": name}


def inline_file(name: str | bytes, data: bytes, mode: int = 0o644, **extra: Any) -> dict:
    return {
        "kind": "file",
        **_name_fields(name),
        "mode": mode,
        "size": len(data),
        "digest": digest(data),
        "data": base64.b64encode(data).decode("ascii"),
        **extra,
    }


def chunked_file(
    name: str | bytes,
    chunks: list[tuple[str, int]],
    *,
    file_digest: str,
    size: int | None = None,
    mode: int = 0o644,
) -> dict:
    return {
        "kind": "file",
        **_name_fields(name),
        "mode": mode,
        "size": sum(n for _, n in chunks) if size is None else size,
        "digest": file_digest,
        "chunks": [[cid, n] for cid, n in chunks],
    }


def dir_entry(name: str | bytes, tree_id: ObjectId | str, mode: int = 0o755) -> dict:
    return {"kind": "dir", **_name_fields(name), "mode": mode, "tree": str(tree_id)}


def symlink(name: str | bytes, target: str) -> dict:
    return {"kind": "symlink", **_name_fields(name), "target": target}


def raw_name(entry: dict) -> bytes:
    if "name_b64" in entry:
        return base64.b64decode(entry["name_b64"])
    return entry["name"].encode("utf-8", errors="surrogatepass")


def tree_doc(entries: list[dict], *, sort: bool = True, fmt: str = TREE_FORMAT) -> dict:
    """A tree document; entries sorted by raw name bytes unless `sort=False`."""
    ordered = sorted(entries, key=raw_name) if sort else list(entries)
    return {"format": fmt, "entries": ordered}


def manifest_doc(
    root: ObjectId | str,
    *,
    fmt: str = MANIFEST_FORMAT,
    chunker: dict | None = None,
    totals: dict | None = None,
) -> dict:
    return {
        "format": fmt,
        "root": str(root),
        "chunker": dict(CHUNKER if chunker is None else chunker),
        "totals": honest_totals(root) if totals is None else totals,
        "excludes": [],
        "labels": {},
        "mtimes": False,
    }


# ---------------------------------------------------------------- planting
#
# Store format 2 keeps chunks and trees as frames inside packs, found through
# the index of the manifest that reaches them. Tests plant chunks and trees one
# by one, honest or forged; they wait here, per store, until a manifest is
# planted, which writes them as one pack, then an index listing every object
# planted in that store so far, then the manifest: a writer's order.


@dataclass
class _Planted:
    """What was planted in one store: frames not packed yet, and where earlier ones went."""

    waiting: dict[tuple[ObjectKind, ObjectId], tuple[int, bytes]] = field(default_factory=dict)
    located: dict[ObjectKind, dict[ObjectId, Location]] = field(
        default_factory=lambda: {kind: {} for kind in ObjectKind}
    )


_PLANTED: weakref.WeakKeyDictionary[Store, _Planted] = weakref.WeakKeyDictionary()


def _planted(store: Store) -> _Planted:
    return _PLANTED.setdefault(store, _Planted())


def plant_frame(
    store: Store, kind: ObjectKind, object_id: ObjectId, frame: bytes, raw: int | None = None
) -> ObjectId:
    """Put a chunk or tree frame in the next pack under `object_id`, whatever the frame holds.

    `raw` is the uncompressed size the index will claim; by default what the
    frame declares (a frame that declares nothing must be given one). The
    first frame planted under an id wins, as with a create-only store.
    """
    if raw is None:
        raw = codec.decoded_size(frame)
    plants = _planted(store)
    if (kind, object_id) not in plants.waiting and object_id not in plants.located[kind]:
        plants.waiting[kind, object_id] = (raw, frame)
    return object_id


def planted_location(store: Store, kind: ObjectKind, object_id: ObjectId) -> Location:
    """Where a planted object went (after a manifest was planted)."""
    return _planted(store).located[kind][object_id]


def _seal_waiting(plants: _Planted) -> SealedPack | None:
    """The pack of every frame waiting, recorded as located (None if nothing waits)."""
    if not plants.waiting:
        return None
    builder = PackBuilder()
    for (kind, object_id), (raw, frame) in plants.waiting.items():
        builder.add(kind, object_id, raw, frame)
    sealed = builder.seal()
    for entry in sealed.entries:
        plants.located[entry.kind][entry.id] = Location(
            sealed.id, entry.offset, entry.stored, entry.raw
        )
    plants.waiting.clear()
    return sealed


async def plant_pack(store: Store) -> ObjectId | None:
    """Store the frames planted so far as a pack of their own now; its id (None if none wait)."""
    sealed = _seal_waiting(_planted(store))
    if sealed is None:
        return None
    await store.put_if_absent(Kind.PACK, sealed.id, sealed.data)
    return sealed.id


IndexForger = Callable[[PackIndex], list[tuple[ObjectId, bytes]]]
"""Given the honest index of a manifest, the (name, blob) indexes to store instead."""


async def plant_manifest_blob(
    store: Store, manifest_id: ObjectId, blob: bytes, *, indexes: IndexForger | None = None
) -> ObjectId:
    """Store a manifest frame as a writer would: the pack, then an index, then the manifest.

    The index lists every chunk and tree planted in `store` so far (this
    manifest may reach any of them); `indexes` may replace it by forgeries.
    """
    plants = _planted(store)
    await plant_pack(store)
    honest = PackIndex(
        manifest_id,
        chunks=dict(plants.located[ObjectKind.CHUNK]),
        trees=dict(plants.located[ObjectKind.TREE]),
    )
    for name, index_blob in [encode_index(honest)] if indexes is None else indexes(honest):
        await store.put_if_absent(Kind.INDEX, name, index_blob)
    await store.put_if_absent(Kind.MANIFEST, manifest_id, blob)
    return manifest_id


async def plant_bytes(
    store: Store, kind: ObjectKind | Kind, data: bytes, *, indexes: IndexForger | None = None
) -> ObjectId:
    """Store `data` honestly: compressed, under the hash of its uncompressed bytes.

    A chunk or tree (`ObjectKind`) waits for the next manifest's pack; a
    manifest (`Kind.MANIFEST`) is stored at once, with its pack and index.
    """
    object_id = hash_bytes(data)
    if kind is Kind.MANIFEST:
        return await plant_manifest_blob(store, object_id, codec.encode(data), indexes=indexes)
    return plant_frame(store, ObjectKind(kind), object_id, codec.encode(data), len(data))


# Trees planted so far, by id, so that manifests can carry honest totals.
_PLANTED_TREES: dict[str, list[Any]] = {}


async def plant_doc(
    store: Store, kind: ObjectKind | Kind, doc: Any, *, indexes: IndexForger | None = None
) -> ObjectId:
    object_id = await plant_bytes(store, kind, canon(doc), indexes=indexes)
    if kind is ObjectKind.TREE and isinstance(doc, dict) and isinstance(doc.get("entries"), list):
        _PLANTED_TREES[str(object_id)] = doc["entries"]
    return object_id


def honest_totals(root: ObjectId | str) -> dict[str, int]:
    """What the trees planted under `root` hold, as a well-behaved writer would count it.

    Manifests in these tests are hostile in one way at a time; their totals
    stay truthful so that a get which cross-checks them refuses for the
    reason under test. Shared subtrees count once per path; cycles and
    unknown trees count as empty.
    """
    memo: dict[str, tuple[int, ...]] = {}
    active: set[str] = set()
    stack = [str(root)]
    while stack:  # iterative post-order: chains of trees are deeper than Python's stack
        tree_id = stack[-1]
        entries = _PLANTED_TREES.get(tree_id)
        if tree_id in memo or entries is None:
            memo.setdefault(tree_id, (0, 0, 0, 0, 0))
            stack.pop()
            continue
        subtrees = [
            str(e.get("tree")) for e in entries if isinstance(e, dict) and e.get("kind") == "dir"
        ]
        pending = [t for t in subtrees if t not in memo and t not in active]
        if pending and tree_id not in active:
            active.add(tree_id)
            stack.extend(pending)
            continue
        files = dirs = links = size = chunks = 0
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            if entry.get("kind") == "file":
                files += 1
                size += entry["size"] if type(entry.get("size")) is int else 0
                chunks += len(entry["chunks"]) if isinstance(entry.get("chunks"), list) else 0
            elif entry.get("kind") == "dir":
                sub = memo.get(str(entry.get("tree")), (0, 0, 0, 0, 0))  # a cycle counts empty
                files, dirs, links = files + sub[0], dirs + 1 + sub[1], links + sub[2]
                size, chunks = size + sub[3], chunks + sub[4]
            elif entry.get("kind") == "symlink":
                links += 1
        memo[tree_id] = (files, dirs, links, size, chunks)
        active.discard(tree_id)
        stack.pop()

    limit = (1 << 63) - 1
    values = [min(v, limit) for v in memo[str(root)]]
    return dict(zip(("files", "dirs", "symlinks", "bytes", "chunks"), values, strict=True))


async def plant_tree(store: Store, entries: list[dict], **kwargs: Any) -> ObjectId:
    return await plant_doc(store, ObjectKind.TREE, tree_doc(entries, **kwargs))


async def plant_manifest(
    store: Store, root: ObjectId | str, *, indexes: IndexForger | None = None, **kwargs: Any
) -> ObjectId:
    return await plant_doc(store, Kind.MANIFEST, manifest_doc(root, **kwargs), indexes=indexes)


async def plant_root(
    store: Store, entries: list[dict], *, indexes: IndexForger | None = None, **kwargs: Any
) -> ObjectId:
    """A root tree with `entries` and a manifest naming it; returns the manifest id."""
    return await plant_manifest(store, await plant_tree(store, entries, **kwargs), indexes=indexes)


def fake_id(seed: str) -> ObjectId:
    """A well-formed id that names nothing stored."""
    return ObjectId(hashlib.sha256(seed.encode()).digest())


async def get_into(store: Store, manifest_id: ObjectId, dest: Path) -> GetStats:
    """The real get: a fresh `Repository` (no cache) and `Downloader`."""
    return await Downloader(Repository(store)).get(manifest_id, dest)


# ---------------------------------------------------------------- observing


def snapshot_tree(root: Path, exclude: tuple[Path, ...] = ()) -> dict[bytes, tuple]:
    """Everything under `root` except `exclude`: type, mode, size, content hash, mtime.

    Uses raw byte paths so names that are not UTF-8 are seen too.
    """
    skip = {os.fsencode(p) for p in exclude}
    out: dict[bytes, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skip]
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            if full in skip:
                continue
            st = os.lstat(full)
            rel = os.path.relpath(full, os.fsencode(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(full), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                with open(full, "rb") as f:
                    content = hashlib.sha256(f.read()).hexdigest()
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_size, content, st.st_mtime_ns)
    return out


def leftovers(root: Path) -> list[str]:
    """Temporary files a get left behind anywhere under `root`."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        found += [os.path.join(dirpath, n) for n in dirnames + filenames if ".cas-tmp-" in n]
    return found
