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
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def memory(pid: int) -> str:
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if line.startswith(("VmRSS", "VmHWM")))
    return ", ".join(f"{k} {int(v.split()[0]) / 1024:.0f} MB" for k, v in sorted(fields.items()))


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
        env = {**os.environ, "PYTHONPATH": str(ROOT), "CAS_CACHE_DIR": str(base / "cache")}
        store = str(base / "store")
        cas = [sys.executable, "-m", "cas", "--store", store]
        put = subprocess.run([*cas, "put", "-q", str(src)], env=env, capture_output=True, text=True)
        manifest = put.stdout.strip()
        point = base / "mnt"
        point.mkdir()
        proc = subprocess.Popen(
            [*cas, "--json", "mount", manifest, str(point)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            while not os.path.ismount(point):
                time.sleep(0.02)
            print(f"{args.files} files: mounted: {memory(proc.pid)}", flush=True)
            deadline = time.monotonic() + args.seconds  # for the reading, not the set-up
            t0 = time.perf_counter()
            subprocess.run(["ls", "-lR", str(point)], stdout=subprocess.DEVNULL, check=True)
            took = time.perf_counter() - t0
            print(f"  ls -lR {took:.2f} s: {memory(proc.pid)}", flush=True)
            t0, total, files = time.perf_counter(), 0, 0
            for top, _dirs, names in os.walk(point):
                for name in names:
                    with open(os.path.join(top, name), "rb") as f:
                        total += len(f.read())
                    files += 1
                if time.monotonic() > deadline:
                    print("  out of time (--seconds): stopped reading")
                    break
            took = time.perf_counter() - t0
            print(f"  read {files} files, {total} bytes in {took:.1f} s: {memory(proc.pid)}")
        finally:
            proc.terminate()
            out, _ = proc.communicate(timeout=60)
        print(f"  {json.loads(out)}")


if __name__ == "__main__":
    main()
