"""Peak memory of `cas mount` against the size of the tree it serves.

Puts a tree of N small files (0-6000 bytes, so most are inline in their
trees, in directories of 100) into a local store, mounts it (no chunk
cache), then `ls -lR` and reads every file, printing the mount process's
VmRSS/VmHWM after each step and its `--json` summary (`--seconds` bounds
the reading). Run it for two
sizes to see what grows with the tree and what is capped.

    python benchmarks/mount_memory.py --seed 1 --files 5000
    python benchmarks/mount_memory.py --seed 1 --files 50000 --seconds 300
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

from mountproc import Mount, cas, cas_env, ls_lr, memory_mb, read_file


def memory(pid: int) -> str:
    return ", ".join(f"{k} {v:.0f} MB" for k, v in sorted(memory_mb(pid).items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        base = Path(tmp_name)
        src = base / "src"
        rng = random.Random(args.seed)
        for i in range(args.files):
            d = src / f"d{i // 100:05d}"
            if i % 100 == 0:
                d.mkdir(parents=True)
            (d / f"f{i % 100:03d}.o").write_bytes(rng.randbytes(rng.randrange(0, 6000)))
        env = cas_env(base / "cache")
        manifest = cas(env, "--store", str(base / "store"), "put", "-q", str(src))
        point = base / "mnt"
        mount = Mount(env, str(base / "store"), manifest, point)
        try:
            print(f"{args.files} files: mounted: {memory(mount.proc.pid)}", flush=True)
            deadline = time.monotonic() + args.seconds  # for the reading, not the set-up
            took = ls_lr(point)
            print(f"  ls -lR {took:.2f} s: {memory(mount.proc.pid)}", flush=True)
            t0, total, files = time.perf_counter(), 0, 0
            for top, _dirs, names in os.walk(point):
                for name in names:
                    total += read_file(os.path.join(top, name))
                    files += 1
                if time.monotonic() > deadline:
                    print("  out of time (--seconds): stopped reading")
                    break
            took = time.perf_counter() - t0
            print(f"  read {files} files, {total} bytes in {took:.1f} s: {memory(mount.proc.pid)}")
        finally:
            summary = mount.stop()
        print(f"  {summary}")


if __name__ == "__main__":
    main()
