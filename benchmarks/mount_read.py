"""`cas mount` against `cas get`: metadata without fetching, first-read throughput, memory.

Builds a tree (a large file of random bytes and many small files in
directories of 100), puts it into a local store, then for each store kind
(the local directory itself, and a `cas serve` of it on 127.0.0.1 with the
chunk cache in front, as a CI runner sees a remote store):

- `ls -lR` of the mount right after mounting (every tree fetched, no chunk);
- sequential read of the large file through the mount (cold: chunk cache empty);
- the same after a remount (warm: chunks from the LMDB cache);
- peak RSS of the mount process (VmHWM);
- `cas get` of the whole tree into an empty directory, for comparison.

Usage (as root; FUSE and pyfuse3 present):

    python benchmarks/mount_read.py --seed 1 --big-mb 200 --files 25000 --seconds 600
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path

from mountproc import Mount, cas, cas_env, ls_lr, read_file, start_serve


def build(root: Path, seed: int, files: int, big_mb: int) -> None:
    rng = random.Random(seed)
    root.mkdir(parents=True)
    with open(root / "big.bin", "wb") as f:
        for _ in range(big_mb):
            f.write(rng.randbytes(1 << 20))
    for n in range(files):
        d = root / "tree" / f"d{n // 100:04d}"
        if n % 100 == 0:
            d.mkdir(parents=True)
        (d / f"f{n % 100:03d}.o").write_bytes(rng.randbytes(rng.randrange(0, 8192)))


def read_all(path: Path) -> float:
    """MB/s of reading PATH in full."""
    t0 = time.perf_counter()
    total = read_file(path)
    return total / (time.perf_counter() - t0) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--files", type=int, default=25_000)
    parser.add_argument("--big-mb", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=600)
    args = parser.parse_args()
    deadline = time.monotonic() + args.seconds
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        env = cas_env(tmp / "cache")
        build(tmp / "src", args.seed, args.files, args.big_mb)
        store = tmp / "srv" / "store"
        t0 = time.perf_counter()
        manifest = cas(env, "--store", str(store), "put", "-q", str(tmp / "src"))
        put_s = time.perf_counter() - t0
        print(f"tree: {args.files} files + {args.big_mb} MB file, put in {put_s:.1f} s")
        server = start_serve(tmp / "srv")
        try:
            configs = (
                ("local store, no cache", str(store), ()),
                ("local store + cache", str(store), ("--cache",)),
                ("cas serve + cache", server.url, ()),
            )
            for label, url, extra in configs:
                if time.monotonic() > deadline:
                    print("out of time (--seconds)")
                    break
                shutil.rmtree(tmp / "cache", ignore_errors=True)
                m = Mount(env, url, manifest, tmp / "mnt", *extra, stderr=None)
                ls = ls_lr(m.point)
                s0 = m.stop()
                m = Mount(env, url, manifest, tmp / "mnt", *extra, stderr=None)
                t0 = time.perf_counter()
                first = (m.point / "big.bin").open("rb").read(1)
                ttfb = time.perf_counter() - t0
                cold = read_all(m.point / "big.bin")
                rss = m.hwm_mb()
                s1 = m.stop()
                m = Mount(env, url, manifest, tmp / "mnt", *extra, stderr=None)
                warm = read_all(m.point / "big.bin")
                s2 = m.stop()
                dest = tmp / "dest"
                shutil.rmtree(dest, ignore_errors=True)
                shutil.rmtree(tmp / "cache", ignore_errors=True)
                t0 = time.perf_counter()
                cas(env, "--store", url, "get", "-q", *extra, manifest, str(dest))
                get = time.perf_counter() - t0
                assert first == (dest / "big.bin").open("rb").read(1)
                print(
                    f"{label}: ls -lR {ls:.2f} s ({s0['trees_fetched']} trees, "
                    f"{s0['chunks_from_store'] + s0['chunks_from_cache']} chunks); "
                    f"first byte of big.bin {ttfb * 1000:.0f} ms; read {args.big_mb} MB cold "
                    f"{cold:.0f} MB/s ({s1['chunks_from_store']} chunks from store, "
                    f"{s1['reads']} ranged reads), warm {warm:.0f} MB/s "
                    f"({s2['chunks_from_cache']} from cache, {s2['chunks_from_store']} from "
                    f"store); mount peak RSS {rss:.0f} MB; cas get of the whole tree {get:.2f} s",
                    flush=True,
                )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
