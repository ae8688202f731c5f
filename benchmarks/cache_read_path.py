"""What the LMDB chunk cache costs a reader: `cas get` and a cold mount read, cache on and off.

Puts SRC into a local store under WORK (once: an existing store with a
`manifest` file is reused), serves it with `cas serve` on 127.0.0.1, then
`--runs` times each:

- `cas get` through the server with the chunk cache (emptied before each run),
  and with `--no-cache`;
- a fresh `cas mount` through the server with an empty cache: time to the
  first byte of FILE and the throughput of reading all of it;
- the same mount with `--no-cache`.

Prints each run and the medians. Usage:

    python benchmarks/cache_read_path.py --src /work/bench-cache/torch \
        --file torch/lib/libtorch_cpu.so --work /tmp/crp --runs 3 --seconds 900
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

from mountproc import BUF, Mount, cas, cas_env, start_serve


def timed_get(env: dict[str, str], url: str, manifest: str, dest: Path, *extra: str) -> float:
    shutil.rmtree(dest, ignore_errors=True)
    t0 = time.perf_counter()
    cas(env, "--store", url, "get", "-q", *extra, manifest, str(dest))
    return time.perf_counter() - t0


def mount_read(
    env: dict[str, str], url: str, manifest: str, point: Path, file: str, *extra: str
) -> tuple[float, float]:
    """(seconds from starting `cas mount` to the first byte of `file`, MB/s of reading it)."""
    mount = Mount(env, url, manifest, point, *extra, summary=False, stderr=None)
    try:
        with open(point / file, "rb", buffering=0) as f:
            total = f.readinto(BUF[:1])
            first = time.perf_counter() - mount.started
            t1 = time.perf_counter()
            while n := f.readinto(BUF):
                total += n
        rate = total / (time.perf_counter() - t1) / 1e6
    finally:
        mount.stop()
    return first, rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", type=Path, required=True)
    parser.add_argument("--file", required=True, help="a large file of SRC, relative")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1, help="unused: nothing is random")
    parser.add_argument("--seconds", type=float, default=900)
    args = parser.parse_args()
    deadline = time.monotonic() + args.seconds
    work = args.work
    env = cas_env(work / "cache")
    srv = work / "srv"
    if not (work / "manifest").exists():
        shutil.rmtree(srv, ignore_errors=True)
        manifest = cas(env, "--store", str(srv / "store"), "put", "-q", str(args.src))
        (work / "manifest").write_text(manifest)
    manifest = (work / "manifest").read_text().strip()
    server = start_serve(srv)
    rows: dict[str, list[float]] = {}
    try:
        for run in range(args.runs):
            if time.monotonic() > deadline:
                print("out of time (--seconds)")
                break
            shutil.rmtree(work / "cache", ignore_errors=True)
            got = {"get cache s": timed_get(env, server.url, manifest, work / "dest")}
            got["get no-cache s"] = timed_get(
                env, server.url, manifest, work / "dest", "--no-cache"
            )
            shutil.rmtree(work / "cache", ignore_errors=True)
            first, rate = mount_read(env, server.url, manifest, work / "mnt", args.file)
            got["mount cache first byte ms"] = first * 1000
            got["mount cache cold MB/s"] = rate
            first, rate = mount_read(
                env, server.url, manifest, work / "mnt", args.file, "--no-cache"
            )
            got["mount no-cache first byte ms"] = first * 1000
            got["mount no-cache cold MB/s"] = rate
            print(f"run {run}: " + ", ".join(f"{k} {v:.1f}" for k, v in got.items()), flush=True)
            for key, value in got.items():
                rows.setdefault(key, []).append(value)
    finally:
        server.stop()
        shutil.rmtree(work / "dest", ignore_errors=True)
    print("medians: " + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in rows.items()))


if __name__ == "__main__":
    main()
