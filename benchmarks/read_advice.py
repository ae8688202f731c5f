"""Does `posix_fadvise` make put's reads of a cold tree faster?

    python benchmarks/read_advice.py --corpus-dir DIR torch [-n 3]

Reads every regular file of a tree the way put's readers do (small files in
one `read`, large ones in 4 MiB pieces), from a cold page cache, four ways,
interleaved, median of N:

- plain reads;
- `POSIX_FADV_SEQUENTIAL` on each file before reading it;
- `POSIX_FADV_WILLNEED` on the next files while reading the current one;
- `POSIX_FADV_NOREUSE`.

The page cache cannot be dropped without root, but `POSIX_FADV_DONTNEED`
evicts a file's clean pages for anyone who can open it, so each read starts
by evicting the whole tree. A plain read right after, from a warm page
cache, is reported too: if eviction failed, cold and warm would match.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import compare  # noqa: E402

PIECE = 4 << 20
WHOLE_BELOW = 1 << 20
AHEAD = 8


def regular_files(root: Path) -> list[tuple[str, int]]:
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if os.path.isfile(path) and not os.path.islink(path):
                out.append((path, st.st_size))
    return out


def evict(files: list[tuple[str, int]]) -> None:
    for path, _size in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_all(files: list[tuple[str, int]], advice: str) -> float:
    started = time.perf_counter()
    for index, (path, size) in enumerate(files):
        if advice == "willneed":
            for ahead_path, _ in files[index + 1 : index + 1 + AHEAD]:
                fd = os.open(ahead_path, os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
                os.close(fd)
        fd = os.open(path, os.O_RDONLY)
        try:
            if advice == "sequential":
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            elif advice == "noreuse":
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_NOREUSE)
            if size < WHOLE_BELOW:
                os.read(fd, size + 1)
            else:
                while os.read(fd, PIECE):
                    pass
        finally:
            os.close(fd)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("corpus", help="corpus name under --corpus-dir, or a directory")
    ap.add_argument("--corpus-dir", type=Path, default=None)
    ap.add_argument("-n", "--runs", type=int, default=3)
    args = ap.parse_args(argv)
    root = Path(args.corpus)
    if not root.is_dir():
        corpus_dir = args.corpus_dir or Path(os.environ.get("CAS_BENCH_DIR", "~/.cache/cas-bench"))
        root = compare.resolve(args.corpus, corpus_dir.expanduser())
    files = regular_files(root)
    total = sum(size for _, size in files)
    ways: dict[str, Callable[[], float]] = {
        way: (lambda way=way: read_all(files, way))
        for way in ("plain", "sequential", "willneed", "noreuse")
    }
    times: dict[str, list[float]] = {way: [] for way in ways}
    warm: list[float] = []
    for run in range(args.runs):
        order = list(ways)[run % len(ways) :] + list(ways)[: run % len(ways)]
        for way in order:
            evict(files)
            times[way].append(ways[way]())
        warm.append(read_all(files, "plain"))
    print(f"{root.name}: {len(files):,} files, {total / 1e6:,.0f} MB; median of {args.runs}")
    print("| reads | cold s | MB/s | vs plain |")
    print("|---|---|---|---|")
    plain = statistics.median(times["plain"])
    for way, samples in times.items():
        med = statistics.median(samples)
        print(f"| {way} | {med:.2f} | {total / 1e6 / med:,.0f} | {med / plain:.2f}x |")
    med = statistics.median(warm)
    print(f"| plain, warm page cache | {med:.2f} | {total / 1e6 / med:,.0f} | {med / plain:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
