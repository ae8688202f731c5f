"""gc at scale: a format 2 store holding N chunk frames in packs, half of them reachable.

    python benchmarks/gc_scale.py --chunks 1000000 [--work DIR] [--keep]
    python benchmarks/gc_scale.py --smoke          # 20,000 chunks, seconds; correctness only

Builds a local store (`cas.local-store/2`) directly with `cas.pack.PackBuilder`
and `cas.packindex.encode_index`, without a put:

- N chunks, each one zstd frame of `--frame-bytes` (128) incompressible
  bytes (BLAKE3 output of its number, so every chunk is distinct), packed
  `--per-pack` (10,000) to a pack;
- one manifest and ref (`bench`) reaching N/2 of them through 500 trees of
  1000 files (one chunk each) under a root tree; the trees are frames in
  packs too, and the manifest's index names every chunk and tree it reaches;
- of the N/2 reachable chunks, 90% lie in packs that are wholly live and
  10% in *half-live* packs that alternate them with as many unreachable
  chunks (live frames fill ~37% of such a pack, below gc's default
  `repack_below` of 0.5, so repacking runs);
- the remaining unreachable chunks lie in packs no index names.

Frames are not 16 bytes as in the format 1 version of this benchmark: each
pack trailer entry takes 49 bytes, so a pack of ~25-byte frames is ~34%
live even when every frame is, and gc would repack every pack every run.
With 128-byte frames (137 stored) a wholly live pack is ~74% live.

Then three `cas gc` runs are timed in child processes (wall, CPU, peak RSS
of the process tree: benchmarks/measure.py; RSS includes the touched pages
of the memory-mapped LMDB mark set): `--dry-run --grace 0s`, a real
`--grace 0s` (deletes the dead packs, repacks the half-live ones and
rewrites the index), and a second real run (deletes the packs the first
one repacked). The peak of Python allocations of a dry run (tracemalloc)
is measured in-process in a child. After the real runs the manifest must
still be complete (`cas.gc.verify.manifest_complete`) and the pack counts must
be the expected ones, or the exit status is 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import blake3

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import measure  # noqa: E402

from cas import codec  # noqa: E402
from cas.chunking import ChunkParams  # noqa: E402
from cas.codec import encode_object  # noqa: E402
from cas.gc.verify import manifest_complete  # noqa: E402
from cas.ids import ObjectId, hash_bytes  # noqa: E402
from cas.objects import ChunkRef, DirEntry, FileEntry, Manifest, Totals, Tree  # noqa: E402
from cas.pack import TARGET_PACK_BYTES, ObjectKind, PackBuilder  # noqa: E402
from cas.packindex import Location, PackIndex, encode_index  # noqa: E402
from cas.repo import Repository  # noqa: E402
from cas.store.base import Kind  # noqa: E402
from cas.store.local import LocalStore  # noqa: E402

FILES_PER_TREE = 1000
HALF_LIVE_SHARE = 0.10
"""Of the reachable chunks, the share that lies in half-live packs."""


@dataclass
class Layout:
    """What was built, to check gc's work against."""

    chunks: int
    live_packs: int = 0
    half_live_packs: int = 0
    dead_packs: int = 0
    tree_packs: int = 0
    pack_bytes: int = 0
    index_bytes: int = 0
    manifest: ObjectId | None = None


def content(i: int, frame_bytes: int) -> bytes:
    """Chunk number `i`: incompressible, distinct from every other."""
    return blake3.blake3(i.to_bytes(8, "little")).digest(length=frame_bytes)


def chunk(i: int, frame_bytes: int) -> tuple[ObjectId, bytes]:
    """Chunk number `i`: its id and its frame (zstd stores it as a raw block)."""
    data = content(i, frame_bytes)
    return hash_bytes(data), codec.encode(data, 1)


class Builder:
    def __init__(self, store: LocalStore, frame_bytes: int, per_pack: int) -> None:
        self.store = store
        self.frame_bytes = frame_bytes
        self.per_pack = per_pack
        self.index = PackIndex(ObjectId(bytes(32)))
        self.packs: list[tuple[str, ObjectId]] = []
        self.pack_bytes = 0

    async def pack(self, what: str, members: list[tuple[int, bool]]) -> None:
        """One pack of chunks (number, reachable?), in order."""
        builder = PackBuilder()
        live = []
        for i, reachable in members:
            object_id, frame = chunk(i, self.frame_bytes)
            entry = builder.add(ObjectKind.CHUNK, object_id, self.frame_bytes, frame)
            if reachable:
                live.append(entry)
        sealed = builder.seal()
        await self.store.put_if_absent(Kind.PACK, sealed.id, sealed.data)
        self.pack_bytes += len(sealed.data)
        self.packs.append((what, sealed.id))
        for e in live:
            self.index.chunks[e.id] = Location(sealed.id, e.offset, e.stored, e.raw)

    async def trees(self, trees: list[tuple[ObjectId, bytes]]) -> None:
        """Tree frames in packs of up to the writers' target size."""
        builder = PackBuilder()
        for tree_id, data in trees:
            frame = codec.encode(data, codec.DEFAULT_LEVEL)
            if builder.entries and builder.full(TARGET_PACK_BYTES - len(frame)):
                await self._seal_trees(builder)
                builder = PackBuilder()
            builder.add(ObjectKind.TREE, tree_id, len(data), frame)
        await self._seal_trees(builder)

    async def _seal_trees(self, builder: PackBuilder) -> None:
        sealed = builder.seal()
        await self.store.put_if_absent(Kind.PACK, sealed.id, sealed.data)
        self.pack_bytes += len(sealed.data)
        self.packs.append(("tree", sealed.id))
        for e in sealed.entries:
            self.index.trees[e.id] = Location(sealed.id, e.offset, e.stored, e.raw)


async def build(root: Path, chunks: int, frame_bytes: int, per_pack: int) -> Layout:
    store = LocalStore(root, fsync=False)
    b = Builder(store, frame_bytes, per_pack)
    t0 = time.monotonic()
    reachable = chunks // 2
    in_half = int(reachable * HALF_LIVE_SHARE)
    # numbers 0..reachable-1 are reachable; reachable..chunks-1 are not
    live_only = list(range(in_half, reachable))
    dead_in_half = list(range(reachable, reachable + in_half))
    dead_only = list(range(reachable + in_half, chunks))
    for start in range(0, len(live_only), per_pack):
        await b.pack("live", [(i, True) for i in live_only[start : start + per_pack]])
    half = per_pack // 2
    for start in range(0, in_half, half):
        pairs = zip(range(start, min(start + half, in_half)), dead_in_half[start:], strict=False)
        await b.pack("half-live", [m for a, d in pairs for m in ((a, True), (d, False))])
    for start in range(0, len(dead_only), per_pack):
        await b.pack("dead", [(i, False) for i in dead_only[start : start + per_pack]])
    print(
        f"wrote {len(b.packs)} packs of {chunks:,} chunks in {time.monotonic() - t0:.1f} s",
        file=sys.stderr,
    )

    trees: list[tuple[ObjectId, bytes]] = []
    subtrees = []
    for start in range(0, reachable, FILES_PER_TREE):
        entries = []
        for n, i in enumerate(range(start, min(start + FILES_PER_TREE, reachable))):
            object_id = hash_bytes(content(i, frame_bytes))
            entries.append(
                FileEntry(
                    f"f{n}",
                    0o644,
                    frame_bytes,
                    None,
                    object_id,
                    (ChunkRef(object_id, frame_bytes),),
                )
            )
        data = Tree.build(entries).to_bytes()
        tree_id = hash_bytes(data)
        trees.append((tree_id, data))
        subtrees.append(DirEntry(f"d{start // FILES_PER_TREE}", 0o755, None, tree_id))
    root_data = Tree.build(subtrees).to_bytes()
    root_id = hash_bytes(root_data)
    trees.append((root_id, root_data))
    await b.trees(trees)

    manifest = Manifest(
        root=root_id,
        chunker=ChunkParams(),
        totals=Totals(
            files=reachable, dirs=len(subtrees), bytes=reachable * frame_bytes, chunks=reachable
        ),
    )
    manifest_id, blob = encode_object(manifest.to_bytes(), codec.DEFAULT_LEVEL)
    index = PackIndex(manifest_id, chunks=b.index.chunks, trees=b.index.trees)
    name, index_blob = encode_index(index)
    await store.put_if_absent(Kind.INDEX, name, index_blob)
    await store.put_if_absent(Kind.MANIFEST, manifest_id, blob)
    await store.create_ref("bench", manifest_id)
    await store.aclose()
    print(f"store ready in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    counts = {what: sum(1 for w, _ in b.packs if w == what) for what, _ in b.packs}
    return Layout(
        chunks,
        live_packs=counts.get("live", 0),
        half_live_packs=counts.get("half-live", 0),
        dead_packs=counts.get("dead", 0),
        tree_packs=counts.get("tree", 0),
        pack_bytes=b.pack_bytes,
        index_bytes=len(index_blob),
        manifest=manifest_id,
    )


def store_counts(root: Path) -> dict[str, tuple[int, int]]:
    """(objects, bytes) per namespace of a local store."""
    out = {}
    for kind in Kind:
        n = size = 0
        for dirpath, _dirs, names in os.walk(root / kind.value):
            for name in names:
                n += 1
                size += os.lstat(os.path.join(dirpath, name)).st_size
        out[kind.value] = (n, size)
    return out


def timed_gc(store: Path, env: dict[str, str], *extra: str) -> tuple[measure.Sample, dict]:
    cmd = [sys.executable, "-m", "cas_cli.main", "gc", "--json", "--store", str(store)]
    sample = measure.run([[*cmd, "--grace", "0s", *extra]], env=env)
    return sample, json.loads(sample.stdout)


def heap_peak(store: Path, env: dict[str, str]) -> float:
    """Peak of Python allocations (MiB) in a dry run, in a child process (tracemalloc)."""
    code = (
        "import asyncio, sys, tracemalloc\n"
        "from cas.gc.collector import GcOptions, collect\n"
        "from cas.repo import Repository\n"
        "from cas.store.local import LocalStore\n"
        "tracemalloc.start()\n"
        "asyncio.run(collect(Repository(LocalStore(sys.argv[1], create=False)),"
        " GcOptions(grace=0, dry_run=True)))\n"
        "print(tracemalloc.get_traced_memory()[1] / 2**20)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(store)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return float(out.stdout.strip())


def check_complete(store: Path, manifest: ObjectId) -> bool:
    async def go() -> bool:
        async with LocalStore(store, create=False) as s:
            return await manifest_complete(Repository(s), manifest)

    return asyncio.run(go())


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f} (1/5 min), {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--chunks", type=int, default=1_000_000)
    ap.add_argument("--per-pack", type=int, default=10_000, help="chunk frames per pack")
    ap.add_argument("--frame-bytes", type=int, default=128, help="uncompressed bytes per chunk")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: temp)")
    ap.add_argument("--keep", action="store_true", help="keep the store afterwards")
    ap.add_argument("--smoke", action="store_true", help="20,000 chunks; correctness only")
    args = ap.parse_args(argv)
    if args.smoke:
        args.chunks, args.per_pack = 20_000, 1_000
    base = Path(tempfile.mkdtemp(prefix="cas-gc-bench-", dir=args.work))
    store = base / "store"
    env = {**os.environ, "CAS_CACHE_DIR": str(base / "cache"), "CAS_CACHE_SIZE": "0"}
    env.pop("CAS_STORE", None)
    failures = []
    try:
        layout = asyncio.run(build(store, args.chunks, args.frame_bytes, args.per_pack))
        assert layout.manifest is not None
        before = store_counts(store)
        print(
            f"{args.chunks:,} chunks ({args.frame_bytes} B each) in {before['pack'][0]} packs "
            f"({layout.live_packs} live, {layout.half_live_packs} half-live, "
            f"{layout.dead_packs} dead, {layout.tree_packs} of trees; "
            f"{before['pack'][1] / 1e6:,.1f} MB); index {layout.index_bytes / 1e6:,.1f} MB; "
            f"{load()}\n"
        )
        print("| run | store | wall | CPU | peak RSS | other load | result |")
        print("|---|---|---:|---:|---:|---:|---|")
        names = f"{args.chunks:,} chunks in {before['pack'][0]} packs"
        runs = [
            ("`gc --dry-run --grace 0s`", ("--dry-run",)),
            ("`gc --grace 0s`", ()),
            ("`gc --grace 0s`, again", ()),
        ]
        results = []
        for label, extra in runs:
            sample, report = timed_gc(store, env, *extra)
            after = store_counts(store)
            deleted = report["deleted"]["pack"]
            result = (
                f"{'would delete' if extra else 'deleted'} {deleted['objects']} packs "
                f"({deleted['bytes'] / 1e6:,.1f} MB); packs now {after['pack'][0]}"
            )
            print(
                f"| {label} | {names} | {sample.wall:.1f} s | {sample.cpu:.1f} s "
                f"| {sample.rss / 2**20:.0f} MiB | {sample.foreign:.0%} | {result} |",
                flush=True,
            )
            results.append((report, after))
            names = f"after the run above: {after['pack'][0]} packs"
        heap = heap_peak(store, env)
        print(f"\npython heap peak of a dry run (tracemalloc): {heap:.1f} MiB; {load()}")

        # what each run must have done
        dry, first, second = results
        dead = layout.dead_packs
        half = layout.half_live_packs
        if dry[0]["deleted"]["pack"]["objects"] != dead:
            failures.append(f"dry run would delete {dry[0]['deleted']['pack']} packs, not {dead}")
        if first[0]["deleted"]["pack"]["objects"] != dead:
            failures.append(f"first run deleted {first[0]['deleted']['pack']} packs, not {dead}")
        if second[0]["deleted"]["pack"]["objects"] != half:
            failures.append(
                f"second run deleted {second[0]['deleted']['pack']} packs, not the {half} "
                "repacked by the first"
            )
        kept = before["pack"][0] - dead - half
        if second[1]["pack"][0] < kept + 1:
            failures.append(f"{second[1]['pack'][0]} packs left, expected {kept} + repacked")
        if second[1]["index"][0] != 1:
            failures.append(f"{second[1]['index'][0]} indexes left, expected 1")
        if not check_complete(store, layout.manifest):
            failures.append("the manifest is not complete after gc")
    finally:
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    for f in failures:
        print(f"FAILED: {f}", file=sys.stderr)
    if failures:
        return 1
    if args.smoke:
        print("smoke: gc deleted the dead packs, repacked the half-live ones", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
