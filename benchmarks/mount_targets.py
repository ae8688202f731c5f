"""`cas mount` against its measured targets, driving the `cas` command line only.

    python benchmarks/mount_targets.py --src /work/bench-cache/torch --work /tmp/mt \
        --runs 3 --seed 1 --seconds 1800 [--configs local,remote]
    python benchmarks/mount_targets.py --rss --src /work/bench-cache/scale --work /tmp/mt-scale

Puts SRC into a local store under WORK (once; `WORK/manifest` is reused), then
for each configuration:

- local: the store directory itself (no chunk cache, as `cas` does for a local
  disk; `--cache` only where `--prefetch` needs it);
- remote: `cas serve` of that store on 127.0.0.1 behind benchmarks/netproxy.py
  (--latency, default 20-50 ms per request; --bandwidth, default 100 Mbit each
  way), with the chunk cache (emptied before every run).

measures, medians of `--runs` (each on a fresh mount, so the kernel's caches
are cold, and an empty chunk cache):

- first byte: from starting `cas mount` to the first byte of FILE (<= 1 s);
- `ls -lR` of the whole mount: chunk bytes fetched (the mount's --json; 0);
- a test job reading a seeded 5% of the files in full: bytes fetched
  (remote: bytes that crossed the proxy toward cas; local: stored bytes the
  mount read) over bytes read (<= 1.2), and its wall time from starting the
  mount over a full `cas get`'s (<= 0.2);
- a sequential read of every file through the mount: throughput against
  `cas get`'s (bytes of the tree / wall; >= 70%);
- the job again, recorded (`--record`), then on a fresh mount with
  `--prefetch` of that trace: its wall over the same job's without prefetch
  (<= 0.5; local: both with `--cache`, which `--prefetch` needs);
- peak RSS (VmHWM) of every mount.

With `--rss`: one local mount of SRC (meant for a >= 10 GB tree): VmHWM after
mounting, after `ls -lR`, and after reading every file (<= 300 MB);
`--mount-args` passes options to that mount (e.g. "--memory 16M").
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from mountproc import Mount, Proxy, cas, cas_env, ls_lr, read_file, start_serve, tree_files


class Config:
    """One store as the mount and `cas get` see it, with a fresh chunk cache per run."""

    def __init__(self, name: str, store: str, env: dict[str, str], work: Path, proxy=None):
        self.name, self.store, self.env, self.work, self.proxy = name, store, env, work, proxy

    def fresh(self) -> None:
        shutil.rmtree(self.work / "cache", ignore_errors=True)
        if self.proxy is not None:
            self.proxy.take_stats()

    def wire_bytes(self) -> int | None:
        return self.proxy.take_stats()["bytes_down"] if self.proxy is not None else None


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def measure(cfg: Config, args, manifest: str, files, job, deadline: float) -> dict[str, float]:
    """Every target's figures for one configuration (medians over runs)."""
    point = cfg.work / "mnt"
    total = sum(size for _, size in files)
    got: dict[str, list[float]] = {}
    hwm: list[float] = []

    def add(key: str, value: float) -> None:
        got.setdefault(key, []).append(value)
        print(f"  {cfg.name} {key}: {value:.3f}", flush=True)

    def run_job(mount: Mount) -> tuple[float, int]:
        read = sum(read_file(mount.point / path) for path in job)
        return time.perf_counter() - mount.started, read

    cache_flag = ("--cache",) if cfg.proxy is None else ()
    for run in range(args.runs):
        if time.monotonic() > deadline:
            print("out of time (--seconds)")
            break
        print(f"{cfg.name}: run {run}", flush=True)
        # cas get of everything (the reference).
        cfg.fresh()
        dest = cfg.work / "dest"
        shutil.rmtree(dest, ignore_errors=True)
        t0 = time.perf_counter()
        cas(cfg.env, "--store", cfg.store, "get", "-q", manifest, str(dest))
        add("get_s", time.perf_counter() - t0)
        shutil.rmtree(dest, ignore_errors=True)
        # First byte of FILE.
        cfg.fresh()
        m = Mount(cfg.env, cfg.store, manifest, point)
        with open(point / args.file, "rb", buffering=0) as f:
            f.read(1)
        add("first_byte_s", time.perf_counter() - m.started)
        hwm.append(m.hwm_mb())
        m.stop()
        # ls -lR.
        cfg.fresh()
        m = Mount(cfg.env, cfg.store, manifest, point)
        add("ls_s", ls_lr(point))
        hwm.append(m.hwm_mb())
        s = m.stop()
        add("ls_chunk_bytes", s["bytes_from_store"] + s["bytes_from_cache"])
        # The 5% test job.
        cfg.fresh()
        m = Mount(cfg.env, cfg.store, manifest, point)
        wall, read = run_job(m)
        hwm.append(m.hwm_mb())
        s = m.stop()
        wire = cfg.wire_bytes()
        fetched = wire if wire is not None else s["bytes_from_store"]
        add("job_s", wall)
        add("job_fetched_over_read", fetched / max(1, read))
        # Sequential read of the whole tree.
        cfg.fresh()
        m = Mount(cfg.env, cfg.store, manifest, point)
        read = sum(read_file(point / path) for path, _ in files)
        seq = time.perf_counter() - m.started
        assert read == total, (read, total)
        hwm.append(m.hwm_mb())
        m.stop()
        add("seq_s", seq)
        # --record, then --prefetch of the trace, against the job without prefetch.
        trace = cfg.work / "trace"
        trace.unlink(missing_ok=True)
        cfg.fresh()
        m = Mount(cfg.env, cfg.store, manifest, point, *cache_flag, "--record", str(trace))
        wall, _ = run_job(m)
        m.stop()
        add("job_recorded_s", wall)
        cfg.fresh()
        m = Mount(cfg.env, cfg.store, manifest, point, *cache_flag, "--prefetch", str(trace))
        wall, _ = run_job(m)
        hwm.append(m.hwm_mb())
        m.stop()
        add("job_prefetch_s", wall)
    out = {key: median(values) for key, values in got.items()}
    out["peak_rss_mb"] = max(hwm) if hwm else float("nan")
    out["tree_bytes"] = total
    wanted = set(job)
    out["job_bytes"] = sum(size for path, size in files if path in wanted)
    return out


def table(results: dict[str, dict[str, float]]) -> str:
    rows: list[tuple[str, str, Callable[[dict[str, float]], tuple[str, bool]]]] = [
        (
            "mount to first byte of FILE",
            "<= 1 s",
            lambda r: (f"{r['first_byte_s']:.2f} s", r["first_byte_s"] <= 1.0),
        ),
        (
            "`ls -lR`: chunk bytes fetched",
            "0",
            lambda r: (f"{r['ls_chunk_bytes']:.0f} ({r['ls_s']:.2f} s)", r["ls_chunk_bytes"] == 0),
        ),
        (
            "5% job: bytes fetched / bytes read",
            "<= 1.2",
            lambda r: (f"{r['job_fetched_over_read']:.2f}", r["job_fetched_over_read"] <= 1.2),
        ),
        (
            "5% job: wall / full `cas get`",
            "<= 0.2",
            lambda r: (
                f"{r['job_s'] / r['get_s']:.3f} ({r['job_s']:.2f} / {r['get_s']:.2f} s)",
                r["job_s"] / r["get_s"] <= 0.2,
            ),
        ),
        (
            "sequential read: throughput / `cas get`'s",
            ">= 0.7",
            lambda r: (
                f"{r['get_s'] / r['seq_s']:.2f} ({r['tree_bytes'] / r['seq_s'] / 1e6:.0f} vs "
                f"{r['tree_bytes'] / r['get_s'] / 1e6:.0f} MB/s)",
                r["get_s"] / r["seq_s"] >= 0.7,
            ),
        ),
        (
            "recorded job: wall with --prefetch / without",
            "<= 0.5",
            lambda r: (
                f"{r['job_prefetch_s'] / r['job_recorded_s']:.2f} "
                f"({r['job_prefetch_s']:.2f} / {r['job_recorded_s']:.2f} s)",
                r["job_prefetch_s"] / r["job_recorded_s"] <= 0.5,
            ),
        ),
        (
            "peak RSS of a mount (this tree)",
            "<= 300 MB",
            lambda r: (f"{r['peak_rss_mb']:.0f} MB", r["peak_rss_mb"] <= 300),
        ),
    ]
    names = list(results)
    lines = [
        "| target | goal | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for label, goal, cell in rows:
        cells = []
        for name in names:
            try:
                text, met = cell(results[name])
                cells.append(f"{text} {'met' if met else '**missed**'}")
            except (KeyError, ZeroDivisionError):
                cells.append("not measured")
        lines.append(f"| {label} | {goal} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rss_run(env: dict[str, str], store: str, manifest: str, work: Path, src: Path, deadline, extra):
    files = tree_files(src)
    total = sum(size for _, size in files)
    m = Mount(env, store, manifest, work / "mnt", *extra)
    print(f"{len(files)} files, {total / 1e9:.2f} GB: mounted, VmHWM {m.hwm_mb():.0f} MB")
    took = ls_lr(m.point)
    print(f"ls -lR {took:.1f} s: VmHWM {m.hwm_mb():.0f} MB", flush=True)
    t0 = time.perf_counter()
    read = 0
    for path, _ in files:
        if time.monotonic() > deadline:
            print("out of time (--seconds): read stopped")
            break
        read += read_file(m.point / path)
    dt = time.perf_counter() - t0
    print(
        f"read {read / 1e9:.2f} GB in {dt:.0f} s ({read / dt / 1e6:.0f} MB/s): "
        f"VmHWM {m.hwm_mb():.0f} MB",
        flush=True,
    )
    print(json.dumps(m.stop()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--file", help="FILE of the first-byte target (default: the largest)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=1800)
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--configs", default="local,remote")
    parser.add_argument("--latency", default="20-50ms")
    parser.add_argument("--bandwidth", default="100Mbit")
    parser.add_argument("--rss", action="store_true", help="only the peak RSS run (local)")
    parser.add_argument("--mount-args", default="", help="with --rss: options for cas mount")
    args = parser.parse_args()
    deadline = time.monotonic() + args.seconds
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    env = cas_env(work / "cache")
    srv = work / "srv"
    if not (work / "manifest").exists():
        shutil.rmtree(srv, ignore_errors=True)
        t0 = time.perf_counter()
        manifest = cas(env, "--store", str(srv / "store"), "put", "-q", str(args.src))
        print(f"put {args.src} in {time.perf_counter() - t0:.1f} s")
        (work / "manifest").write_text(manifest)
    manifest = (work / "manifest").read_text().strip()
    if args.rss:
        extra = args.mount_args.split()
        rss_run(env, str(srv / "store"), manifest, work, args.src, deadline, extra)
        return
    files = tree_files(args.src)
    rng = random.Random(args.seed)
    job = sorted(p for p, _ in rng.sample(files, max(1, int(len(files) * args.fraction))))
    job_set = set(job)
    if args.file is None:
        args.file = max(files, key=lambda item: item[1])[0]
    print(
        f"tree {args.src}: {len(files)} files, {sum(s for _, s in files) / 1e6:.0f} MB; "
        f"job: {len(job)} files, {sum(s for p, s in files if p in job_set) / 1e6:.1f} MB; "
        f"FILE {args.file}",
        flush=True,
    )
    results: dict[str, dict[str, float]] = {}
    for name in args.configs.split(","):
        if time.monotonic() > deadline:
            break
        if name == "local":
            cfg = Config("local", str(srv / "store"), env, work)
            results[name] = measure(cfg, args, manifest, files, job, deadline)
            continue
        server = start_serve(srv)
        proxy = Proxy(server.url, args.latency, args.bandwidth, args.seed)
        try:
            cfg = Config(f"remote ({args.latency}, {args.bandwidth})", proxy.url, env, work, proxy)
            results[cfg.name] = measure(cfg, args, manifest, files, job, deadline)
        finally:
            proxy.stop()
            server.stop()
    print(json.dumps(results, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
