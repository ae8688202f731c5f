"""Measure the two format choices behind cas's defaults and print markdown tables.

    python benchmarks/chunk_params.py --corpus-dir DIR [--doc docs/benchmarks.md]

(a) Average chunk size 256K / 512K / 1M / 2M (min = avg/4, max = avg*4) on the
    numpy, scipy and build pairs: chunks (= store objects) per GB of B, B's
    stored size (zstd-3 per chunk) in a fresh store, and what B adds to a store
    that already holds A (raw and compressed bytes of B's chunks that A lacks).
    Files of at most 1024 bytes are left out, as cas keeps them inline. Chunking
    is `cas.chunking.FastCdcChunker`, ids `cas.ids.hash_bytes`, sizes
    `cas.codec.encode` at level 3, i.e. exactly what `cas put` stores.
(b) Inlining tiny files into tree objects, thresholds 0 / 256 / 1024 / 4096
    bytes, on the build and torch trees: a real `cas put` (library call, local
    store in a temp directory) per threshold, counting store objects, their
    bytes, and their bytes on disk.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cas import codec
from cas.chunking import ChunkParams, FastCdcChunker
from cas.ids import hash_bytes
from cas.put.uploader import PutOptions, Uploader
from cas.repo import Repository
from cas.store import open_store

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import compare  # noqa: E402

AVG_SIZES = (256 << 10, 512 << 10, 1 << 20, 2 << 20)
INLINE_THRESHOLDS = (0, 256, 1024, 4096)
PAIRS = ("numpy", "scipy", "build")
INLINE_CORPORA = ("build", "torch")
INLINE_MAX = 1024
WORKERS = max(1, os.cpu_count() or 1)


def files_of(root: Path) -> list[tuple[str, int]]:
    out = []
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            if os.path.islink(p):
                continue
            size = os.path.getsize(p)
            if size > INLINE_MAX:
                out.append((p, size))
    out.sort()
    return out


_local = threading.local()


def _chunker(params: ChunkParams) -> FastCdcChunker:
    cache = getattr(_local, "chunkers", None)
    if cache is None:
        cache = _local.chunkers = {}
    if params not in cache:
        cache[params] = FastCdcChunker(params)
    return cache[params]


def chunk_file(
    path: str, size: int, params: ChunkParams, compress: bool
) -> list[tuple[bytes, int, int]]:
    """(id, length, compressed length or 0) of every chunk of one file."""
    out = []
    chunker = _chunker(params)
    with open(path, "rb") as f:
        if hasattr(chunker, "chunks_of_buffer") and size < 2 * params.max_size:
            pieces = chunker.chunks_of_buffer(f.read())  # newer API: small files cut in memory
        elif hasattr(chunker, "chunks_of_buffer"):
            pieces = chunker.chunks(f)
        else:
            pieces = chunker.chunks(f, size)  # type: ignore[call-arg]
        for c in pieces:
            cid = hash_bytes(c.data)
            out.append((cid, c.length, len(codec.encode(c.data, 3)) if compress else 0))
    return out


def chunk_tree(
    files: list[tuple[str, int]], params: ChunkParams, compress: bool, pool: ThreadPoolExecutor
) -> dict[bytes, tuple[int, int]]:
    chunks: dict[bytes, tuple[int, int]] = {}
    for result in pool.map(lambda f: chunk_file(f[0], f[1], params, compress), files):
        for cid, length, clen in result:
            chunks[cid] = (length, clen)
    return chunks


def measure_chunk_sizes(corpus_dir: Path, pairs: list[str]) -> str:
    lines = [
        "| pair | avg (min/max) | chunks per GB of B | B stored fresh (zstd-3 per chunk) | "
        "B's new raw bytes after A | B's new stored bytes after A | chunking s |",
        "|---|---|---|---|---|---|---|",
    ]
    with ThreadPoolExecutor(WORKERS) as pool:
        for name in pairs:
            a = compare.resolve(f"{name}-A" if name != "build" else "build", corpus_dir)
            b = compare.resolve(f"{name}-B", corpus_dir)
            fa, fb = files_of(a), files_of(b)
            b_bytes = sum(s for _, s in fb)
            for avg in AVG_SIZES:
                params = ChunkParams.from_avg(avg)
                t0 = time.monotonic()
                ca = chunk_tree(fa, params, False, pool)
                cb = chunk_tree(fb, params, True, pool)
                seconds = time.monotonic() - t0
                new = [v for k, v in cb.items() if k not in ca]
                lines.append(
                    f"| {name} | {avg >> 10}K ({params.min_size >> 10}K/{params.max_size >> 10}K)"
                    f" | {len(cb) / (b_bytes / 1e9):,.0f}"
                    f" | {compare.mb(sum(c for _, c in cb.values()))}"
                    f" | {compare.mb(sum(n for n, _ in new))}"
                    f" ({sum(n for n, _ in new) / b_bytes:.1%})"
                    f" | {compare.mb(sum(c for _, c in new))} | {seconds:.1f} |"
                )
                print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines) + "\n"


async def _put(source: Path, store_dir: Path, inline_max: int) -> float:
    store = open_store(str(store_dir), create=True)
    t0 = time.monotonic()
    async with store:
        await Uploader(Repository(store, None, level=3), PutOptions(inline_max=inline_max)).put(
            source
        )
    return time.monotonic() - t0


def measure_inline(corpus_dir: Path, corpora: list[str], work: Path | None) -> str:
    lines = [
        "| tree | inline files <= | store objects | stored bytes | bytes on disk (4 KiB blocks) |"
        " trees | put s | then put of B: objects / bytes added |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in corpora:
        src = compare.resolve(name, corpus_dir)
        for threshold in INLINE_THRESHOLDS:
            with tempfile.TemporaryDirectory(prefix="cas-inline-", dir=work) as tmp:
                store_dir = Path(tmp) / "store"
                seconds = asyncio.run(_put(src, store_dir, threshold))
                count, size, disk = compare.store_bytes(store_dir)
                trees = sum(len(f) for _, _, f in os.walk(store_dir / "tree"))
                added = "-"
                b = corpus_dir / f"{name}-B"
                if b.is_dir():
                    asyncio.run(_put(b.resolve(), store_dir, threshold))
                    count_b, size_b, _ = compare.store_bytes(store_dir)
                    added = f"{count_b - count:,} / {compare.mb(size_b - size)}"
            lines.append(
                f"| {name} | {threshold} | {count:,} | {compare.mb(size)} | {compare.mb(disk)}"
                f" | {trees:,} | {seconds:.1f} | {added} |"
            )
            print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus-dir", type=Path, default=compare.corpus.default_dir())
    ap.add_argument("--pairs", nargs="*", default=list(PAIRS))
    ap.add_argument("--inline-corpora", nargs="*", default=list(INLINE_CORPORA))
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: temp)")
    ap.add_argument("--doc", type=Path, default=None, help="also write the tables into this file")
    args = ap.parse_args(argv)
    command = "python benchmarks/chunk_params.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    out = []
    if args.pairs:
        out.append(
            "Chunk size (files <= 1024 bytes left out, as cas inlines them):\n\n"
            + measure_chunk_sizes(args.corpus_dir, args.pairs)
        )
    if args.inline_corpora:
        out.append(
            "Inline threshold (a real `cas put` each, default chunk sizes):\n\n"
            + measure_inline(args.corpus_dir, args.inline_corpora, args.work)
        )
    text = "\n".join(out) + f"\nCommand: `{command}`\n"
    print(text)
    if args.doc:
        compare.write_doc(args.doc, "chunk-params", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
