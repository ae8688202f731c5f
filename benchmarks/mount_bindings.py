"""Compare the two Python FUSE bindings `cas mount` could use, on a minimal read-only file system.

Each binding serves the same synthetic tree from memory (no store behind it,
so only the binding's own cost is measured): one large file and a tree of
many small files in directories of 100. Then, through the mount:

- sequential read of the large file (1 MiB `readinto` calls, page cache dropped
  by a fresh mount, so every byte crosses FUSE);
- `ls -lR` of the tree, first right after mounting (cold: every entry looked up)
  and again (warm: the kernel's entry and attribute caches, 300 s timeouts);
- `os.lstat` of every file after a fresh mount (a Python walk, as a test runner's
  collection does).

Usage (as root, /dev/fuse and fusermount3 present; pyfuse3 and mfusepy installed):

    python benchmarks/mount_bindings.py --seed 1 --big-mb 200 --files 25000 --repeat 3

Bounded: `--seconds` caps the whole run (a binding that has not finished by then
is reported as such). Prints one line per figure and a Markdown table at the end.
"""

from __future__ import annotations

import argparse
import errno
import os
import random
import stat
import statistics
import subprocess
import sys
import tempfile
import time

TIMEOUT = 300.0
BIG = "big"


def layout(seed: int, files: int, big_mb: int) -> tuple[list[str], dict[str, int], int]:
    """Directory names, file sizes by path, and the large file's size."""
    rng = random.Random(seed)
    dirs = [f"d{i:04d}" for i in range((files + 99) // 100)]
    sizes = {}
    for n in range(files):
        sizes[f"tree/{dirs[n // 100]}/f{n % 100:03d}.o"] = rng.randrange(0, 8192)
    return dirs, sizes, big_mb << 20


class Model:
    """The synthetic tree: paths to (mode, size); content is a repeated random block."""

    def __init__(self, seed: int, files: int, big_mb: int) -> None:
        dirs, sizes, big = layout(seed, files, big_mb)
        self.block = random.Random(seed).randbytes(1 << 20)
        self.big = big
        self.entries: dict[str, tuple[int, int]] = {"": (stat.S_IFDIR | 0o755, 0)}
        self.children: dict[str, list[str]] = {"": [BIG, "tree"], "tree": list(dirs)}
        self.entries[BIG] = (stat.S_IFREG | 0o644, big)
        self.entries["tree"] = (stat.S_IFDIR | 0o755, 0)
        for d in dirs:
            self.entries[f"tree/{d}"] = (stat.S_IFDIR | 0o755, 0)
            self.children[f"tree/{d}"] = []
        for path, size in sizes.items():
            self.entries[path] = (stat.S_IFREG | 0o644, size)
            parent, name = path.rsplit("/", 1)
            self.children[parent].append(name)

    def read(self, path: str, offset: int, size: int) -> bytes:
        """Bytes of a file: the block repeated."""
        total = self.entries[path][1]
        end = min(total, offset + size)
        out = bytearray()
        while offset < end:
            at = offset % len(self.block)
            piece = self.block[at : at + end - offset]
            out += piece
            offset += len(piece)
        return bytes(out)


# ---------------------------------------------------------------- pyfuse3 (asyncio mode)


def serve_pyfuse3(model: Model, mountpoint: str) -> None:
    """Low-level API: inodes, readdirplus, coroutines on an asyncio loop."""
    import asyncio

    import pyfuse3
    import pyfuse3.asyncio

    pyfuse3.asyncio.enable()
    paths = ["", *sorted(p for p in model.entries if p)]
    inode_of = {p: i + 1 for i, p in enumerate(paths)}  # root is inode 1
    now = time.time_ns()

    def attr(path: str) -> pyfuse3.EntryAttributes:
        mode, size = model.entries[path]
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode_of[path]
        a.st_mode = mode
        a.st_size = size
        a.st_nlink = 1
        a.st_blksize = 4096
        a.st_blocks = (size + 511) // 512
        a.st_mtime_ns = a.st_ctime_ns = a.st_atime_ns = now
        a.entry_timeout = a.attr_timeout = TIMEOUT
        return a

    class Ops(pyfuse3.Operations):
        async def getattr(self, inode, ctx=None):
            return attr(paths[inode - 1])

        async def lookup(self, parent_inode, name, ctx=None):
            parent = paths[parent_inode - 1]
            path = f"{parent}/{name.decode()}" if parent else name.decode()
            if path not in model.entries:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return attr(path)

        async def opendir(self, inode, ctx):
            return inode

        async def readdir(self, fh, start_id, token):
            parent = paths[fh - 1]
            names = model.children[parent]
            for i in range(start_id, len(names)):
                path = f"{parent}/{names[i]}" if parent else names[i]
                if not pyfuse3.readdir_reply(token, names[i].encode(), attr(path), i + 1):
                    break

        async def open(self, inode, flags, ctx):
            return pyfuse3.FileInfo(fh=inode, keep_cache=True)

        async def read(self, fh, off, size):
            return model.read(paths[fh - 1], off, size)

    options = set(pyfuse3.default_options) | {"fsname=bench", "ro"}
    pyfuse3.init(Ops(), mountpoint, options)

    async def run() -> None:
        try:
            await pyfuse3.main()
        finally:
            pyfuse3.close(unmount=True)

    asyncio.run(run())


# ---------------------------------------------------------------- mfusepy (high-level, threads)


def serve_mfusepy(model: Model, mountpoint: str) -> None:
    """High-level API: paths, one Python call per request from libfuse's threads."""
    import mfusepy

    now = time.time_ns()

    class Ops(mfusepy.Operations):
        use_ns = True

        def getattr(self, path, fh=None):
            entry = model.entries.get(path.lstrip("/"))
            if entry is None:
                raise mfusepy.FuseOSError(errno.ENOENT)
            mode, size = entry
            return {
                "st_mode": mode,
                "st_size": size,
                "st_nlink": 1,
                "st_mtime": now,
                "st_ctime": now,
                "st_atime": now,
                "st_blocks": (size + 511) // 512,
            }

        def readdir(self, path, fh):
            return [".", "..", *model.children[path.lstrip("/")]]

        def open(self, path, flags):
            return 0

        def read(self, path, size, offset, fh):
            return model.read(path.lstrip("/"), offset, size)

    mfusepy.FUSE(
        Ops(),
        mountpoint,
        foreground=True,
        ro=True,
        fsname="bench",
        entry_timeout=TIMEOUT,
        attr_timeout=TIMEOUT,
        kernel_cache=True,
    )


# ---------------------------------------------------------------- measuring


def mounted(mountpoint: str, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while not os.path.ismount(mountpoint):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"mount at {mountpoint} did not come up")
        time.sleep(0.02)


def start(binding: str, args: argparse.Namespace, mountpoint: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, __file__, "--serve", binding, "--mountpoint", mountpoint]
    cmd += ["--seed", str(args.seed), "--files", str(args.files), "--big-mb", str(args.big_mb)]
    proc = subprocess.Popen(cmd)
    mounted(mountpoint, proc, time.monotonic() + 60)
    return proc


def stop(proc: subprocess.Popen[bytes], mountpoint: str) -> None:
    subprocess.run(["fusermount3", "-u", mountpoint], check=False)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def read_all(path: str) -> float:
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    total = 0
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            total += n
    return total / (time.perf_counter() - t0) / 1e6


def ls_lr(path: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(["ls", "-lR", path], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def lstat_all(path: str) -> float:
    t0 = time.perf_counter()
    for top, _dirs, files in os.walk(path):
        for name in files:
            os.lstat(os.path.join(top, name))
    return time.perf_counter() - t0


def measure(binding: str, args: argparse.Namespace, deadline: float) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"read_MBps": [], "ls_cold_s": [], "ls_warm_s": [], "lstat_s": []}
    with tempfile.TemporaryDirectory() as mnt:
        for _ in range(args.repeat):
            if time.monotonic() > deadline:
                print(f"{binding}: out of time (--seconds)", flush=True)
                break
            for key, fn, target in (
                ("read_MBps", read_all, BIG),
                ("ls_cold_s", ls_lr, "tree"),
                ("lstat_s", lstat_all, "tree"),
            ):
                proc = start(binding, args, mnt)
                try:
                    out[key].append(fn(os.path.join(mnt, target)))
                    if key == "ls_cold_s":
                        out["ls_warm_s"].append(ls_lr(os.path.join(mnt, target)))
                finally:
                    stop(proc, mnt)
            print(binding, {k: round(v[-1], 3) for k, v in out.items() if v}, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--files", type=int, default=25_000)
    parser.add_argument("--big-mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--bindings", default="pyfuse3,mfusepy")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--mountpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        model = Model(args.seed, args.files, args.big_mb)
        {"pyfuse3": serve_pyfuse3, "mfusepy": serve_mfusepy}[args.serve](model, args.mountpoint)
        return
    deadline = time.monotonic() + args.seconds
    results = {b: measure(b, args, deadline) for b in args.bindings.split(",")}
    print(f"\n{args.files} files, {args.big_mb} MB file, median of {args.repeat}:\n")
    print("| binding | read MB/s | ls -lR cold s | ls -lR warm s | lstat all s |")
    print("|---|---|---|---|---|")
    for b, r in results.items():
        cells = [f"{statistics.median(r[k]):.3g}" if r[k] else "-" for k in r]
        print(f"| {b} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
