"""gc at scale: a local store holding N chunk names, half of them reachable.

    python benchmarks/gc_scale.py --chunks 1000000 [--dir DIR] [--keep]

Builds the store directly (chunk files of 16 bytes: gc never reads chunks),
with trees of 1000 files each, half of them named by one manifest and ref.
Then times `cas gc --dry-run --grace 0s` in a child process and reports its
wall time and peak RSS (ru_maxrss of the child: includes the touched pages of
the memory-mapped LMDB mark set), the peak of Python allocations in a dry run
(tracemalloc), and with `--real` the same for a deleting run.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cas import codec
from cas.chunking import ChunkParams
from cas.ids import ObjectId, hash_bytes
from cas.objects import ChunkRef, DirEntry, FileEntry, Manifest, Totals, Tree
from cas.repo import encode_object
from cas.store.base import Kind
from cas.store.local import LocalStore

FILES_PER_TREE = 1000


def build(root: Path, chunks: int) -> None:
    store = LocalStore(root, fsync=False)
    chunk_dir = root / "chunk"
    for shard in range(256):
        (chunk_dir / f"{shard:02x}").mkdir(exist_ok=True)
    t0 = time.monotonic()
    ids: list[ObjectId] = []
    for i in range(chunks):
        object_id = hash_bytes(i.to_bytes(8, "little"))
        hexid = str(object_id)
        with open(f"{chunk_dir}/{hexid[:2]}/{hexid}", "wb") as f:
            f.write(b"0123456789abcdef")
        ids.append(object_id)
    print(f"wrote {chunks} chunk files in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    subtrees = []
    reachable = ids[: chunks // 2]
    for start in range(0, len(reachable), FILES_PER_TREE):
        entries = [
            FileEntry(f"f{n}", 0o644, 16, None, object_id, (ChunkRef(object_id, 16),))
            for n, object_id in enumerate(reachable[start : start + FILES_PER_TREE])
        ]
        data = Tree.build(entries).to_bytes()
        tree_id, blob = encode_object(data, codec.DEFAULT_LEVEL)
        store._put_sync(Kind.TREE, tree_id, blob)
        subtrees.append(DirEntry(f"d{start // FILES_PER_TREE}", 0o755, None, tree_id))
    root_id, blob = encode_object(Tree.build(subtrees).to_bytes(), codec.DEFAULT_LEVEL)
    store._put_sync(Kind.TREE, root_id, blob)
    manifest = Manifest(root=root_id, chunker=ChunkParams(), totals=Totals(files=len(reachable)))
    manifest_id, blob = encode_object(manifest.to_bytes(), codec.DEFAULT_LEVEL)
    store._put_sync(Kind.MANIFEST, manifest_id, blob)
    ref = root / "refs" / "bench"
    ref.write_text(f"{manifest_id}\n")
    print(f"store ready in {time.monotonic() - t0:.1f}s", file=sys.stderr)


def timed_gc(store: Path, *extra: str) -> tuple[float, float, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.monotonic()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cas_cli.main",
            "gc",
            "--store",
            str(store),
            "--grace",
            "0s",
            *extra,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.monotonic() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(peak, before) / 1024, out.stderr.strip()


def heap_peak(store: Path) -> float:
    """Peak of Python allocations (MiB) in a dry run, in a child process (tracemalloc)."""
    code = (
        "import asyncio, sys, tracemalloc\n"
        "from cas.gc import GcOptions, collect\n"
        "from cas.repo import Repository\n"
        "from cas.store.local import LocalStore\n"
        "tracemalloc.start()\n"
        "asyncio.run(collect(Repository(LocalStore(sys.argv[1], create=False)),"
        " GcOptions(grace=0, dry_run=True)))\n"
        "print(tracemalloc.get_traced_memory()[1] / 2**20)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(store)], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=1_000_000)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--real", action="store_true", help="also run a real (deleting) gc")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="cas-gc-bench-", dir=args.dir))
    try:
        build(base / "store", args.chunks)
        wall, rss, summary = timed_gc(base / "store", "--dry-run")
        print(f"| gc --dry-run | {args.chunks} chunk names | {wall:.1f} s | {rss:.0f} MiB |")
        print(summary, file=sys.stderr)
        print(f"python heap peak of a dry run: {heap_peak(base / 'store'):.1f} MiB")
        if args.real:
            wall, rss, summary = timed_gc(base / "store")
            print(f"| gc | {args.chunks} chunk names | {wall:.1f} s | {rss:.0f} MiB |")
            print(summary, file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("CAS_CACHE_SIZE", "0")
    main()
