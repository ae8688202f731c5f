"""cas at the design's scale: a >= 10 GB build tree and its next commit through `cas serve`.

    python benchmarks/scale.py --corpus-dir /work/bench-cache [--parts 11] [--local] \
        [--doc docs/benchmarks.md]
    python benchmarks/scale.py --smoke          # a ~30 MB tree in seconds; correctness only

The trees are `scale` and `scale-B` under --corpus-dir (benchmarks/corpus.py
--scale N): N generated CMake-like builds side by side, each from its own seed
so that no two share content, and per part the same next-commit changes as
build -> build-B. They are generated on first use (11 parts: ~10.5 GB each,
about 6 minutes) and kept; they are not read into the page cache first (two
trees of 10 GB would not stay there), so puts and checks read the disk.

The store is a `cas serve` on 127.0.0.1 (write and admin tokens, CAS_TOKEN)
behind benchmarks/netproxy.py, which counts requests and bytes; the link adds
no latency and no bandwidth cap unless --latency / --bandwidth say so. Each
step is its own process tree, measured by benchmarks/measure.py (wall,
user+sys CPU, peak RSS); the server's CPU and peak RSS are sampled beside it:

1. put A: `cas put scale --ref scale/1` into the empty store;
2. put B, fresh runner: `cas put scale-B --ref scale/2` with an empty
   CAS_CACHE_DIR (its parent is scale/1, found by the ref prefix);
3. get B, empty: into an empty directory with an empty cache;
4. get --delete B into dir holding A, with the cache of the machine that
   restored A there (that restore is not timed, but checked);
5. gc: `cas gc --keep-last 1 'scale/*' --grace 0s` (admin token), which
   expires scale/1: packs deleted and rewritten are counted on the store;
6. verify B after gc: `cas verify scale/2` with the chunk cache off.

Every restore is compared with its source (benchmarks/verify.py): any
difference, a put of B that did not use A as its parent, or a failed step
fails the run (exit 1). `--local` repeats the steps against a local directory
store (no server, so no requests). Restored copies and caches are deleted as
soon as they are checked: besides the two trees the run needs about 1.7x one
tree of disk (the store, one restored copy, one chunk cache of at most
$CAS_CACHE_SIZE, default 4G). With --doc FILE the text replaces the
`scale` block in FILE (report.write_doc), else it is only printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import corpus  # noqa: E402
import netproxy  # noqa: E402
from gc_scale import store_counts  # noqa: E402
from measure import Sample, StepFailed, TreeRss, rmtree, run  # noqa: E402
from remote import Link  # noqa: E402
from report import write_doc  # noqa: E402
from tools.cas import Cas  # noqa: E402
from verify import tree_differences  # noqa: E402

from tests.serve_process import start_serve  # noqa: E402

TOKEN = "bench-write-token-0123456789abcdef"
ADMIN = "bench-admin-token-0123456789abcdef"
SMOKE_PARTS = 6  # ~5 MB each with corpus.SMOKE_SCALE
GIB = 1 << 30


def log(message: str) -> None:
    print(f"[scale] {message}", file=sys.stderr, flush=True)


@dataclass
class Row:
    step: str
    sample: Sample
    per_bytes: int  # the tree bytes that requests per GiB are counted against
    stats: netproxy.Stats | None = None
    server_cpu: float = 0.0
    server_rss: int = 0
    note: str = ""


class Server:
    """`cas serve` with write and admin tokens behind a counting `Link`; samples its CPU and RSS."""

    def __init__(self, work: Path, settings: netproxy.LinkSettings) -> None:
        self.serve = start_serve(work / "serve", tokens={"write": TOKEN, "admin": ADMIN})
        self.link = Link(self.serve.url, settings)
        self.process = psutil.Process(self.serve.proc.pid)
        self._cpu = 0.0
        self._rss: TreeRss | None = None

    def _cpu_seconds(self) -> float:
        t = self.process.cpu_times()
        return t.user + t.system

    def begin(self) -> None:
        self.link.take_stats()
        self._cpu = self._cpu_seconds()
        self._rss = TreeRss([self.process.pid])

    def end(self, row: Row) -> None:
        assert self._rss is not None
        row.stats = self.link.take_stats()
        row.server_cpu = self._cpu_seconds() - self._cpu
        row.server_rss = self._rss.stop()

    def close(self) -> None:
        self.link.close()
        self.serve.stop()


class ScaleRun:
    def __init__(self, a: Path, b: Path, work: Path) -> None:
        self.a, self.b, self.work = a, b, work
        self.size = {a: corpus.tree_bytes(a)[1], b: corpus.tree_bytes(b)[1]}
        self.tables: dict[str, list[Row]] = {}
        self.failures: list[str] = []

    def fail(self, message: str) -> None:
        log(f"FAILED: {message}")
        self.failures.append(message)

    def check(self, what: str, expected: Path, actual: Path) -> str:
        t0 = time.monotonic()
        diffs = tree_differences(expected, actual)
        log(f"checked {what} against {expected.name} in {time.monotonic() - t0:.0f} s")
        if diffs:
            self.fail(f"{what}: {len(diffs)} differences, e.g. " + "; ".join(diffs[:5]))
            return "NOT EXACT"
        return "exact"

    def steps(self, mode: str, store: str, store_root: Path, server: Server | None) -> None:
        """The six steps against one empty store; a failed step ends them (and is a failure)."""
        try:
            self._steps(mode, store, store_root, server)
        except StepFailed as exc:
            self.fail(f"{mode}: {exc}")
        finally:
            for path in (self.work / "dest", *self.work.glob("cache-*")):
                rmtree(path)

    def _steps(self, mode: str, store: str, store_root: Path, server: Server | None) -> None:
        rows = self.tables.setdefault(mode, [])
        a, b = self.a, self.b

        def cas(cache: str, *args: str, token: str = TOKEN, **env: str) -> Sample:
            environ = {**os.environ, "CI": "1", "CAS_TOKEN": token, **env}
            environ["CAS_CACHE_DIR"] = str(self.work / f"cache-{cache}")
            environ.pop("CAS_STORE", None)
            return run(
                [[*Cas.cas_cmd, args[0], "--store", store, "--json", *args[1:]]], env=environ
            )

        def timed(step: str, per: int, cache: str, *args: str, **kw: str) -> tuple[Row, dict]:
            if server:
                server.begin()
            row = Row(step, cas(cache, *args, **kw), per)
            if server:
                server.end(row)
            rows.append(row)
            moved = f", {row.stats.requests} requests" if row.stats else ""
            log(f"{mode}: {step}: {row.sample.wall:.1f} s{moved}")
            return row, json.loads(row.sample.stdout or b"{}")

        row, put_a = timed("put A", self.size[a], "put-a", "put", "--ref", "scale/1", str(a))
        row.note = uploaded(put_a)
        id_a = put_a["manifest"]

        row, put_b = timed(
            "put B, fresh runner", self.size[b], "put-b", "put", "--ref", "scale/2", str(b)
        )
        row.note = uploaded(put_b)
        id_b = put_b["manifest"]
        if id_a not in put_b["parents"]:
            self.fail(f"{mode}: put B's parents are {put_b['parents']}, not A ({id_a})")

        dest = self.work / "dest"
        dest.mkdir()
        row, got = timed("get B, empty", self.size[b], "get-b", "get", id_b, str(dest))
        row.note = self.check(f"{mode}: get B, empty", b, dest) + f"; {sources(got)}"
        rmtree(dest)
        rmtree(self.work / "cache-get-b")

        log(f"{mode}: restoring A (not timed)")
        cas("got-a", "get", id_a, str(dest))
        self.check(f"{mode}: get A (the untimed restore)", a, dest)
        step = "get --delete B into dir holding A, A's cache"
        row, got = timed(step, self.size[b], "got-a", "get", "--delete", id_b, str(dest))
        row.note = self.check(f"{mode}: {step}", b, dest) + f"; {sources(got)}"
        rmtree(dest)
        rmtree(self.work / "cache-got-a")

        before = store_counts(store_root)
        step = "gc --keep-last 1 'scale/*' --grace 0s"
        args = ("gc", "--keep-last", "1", "scale/*", "--grace", "0s")
        row, report = timed(step, self.size[a] + self.size[b], "gc", *args, token=ADMIN)
        row.note = gc_note(report, before, store_counts(store_root))
        if report["refs_expired"] != ["scale/1"]:
            self.fail(f"{mode}: gc expired {report['refs_expired']}, not ['scale/1']")

        row, _ = timed(
            "verify B after gc", self.size[b], "verify", "verify", id_b, CAS_CACHE_SIZE="0"
        )
        row.note = "intact"

    def table(self, mode: str) -> list[str]:
        remote = mode != "local"
        head = ["step", "wall", "CPU", "peak RSS"]
        if remote:
            head += ["requests", "requests / GiB", "MB over the link"]
            head += ["server CPU", "server peak RSS"]
        lines = ["| " + " | ".join([*head, "result"]) + " |", "|---" * (len(head) + 1) + "|"]
        for r in self.tables.get(mode, []):
            s = r.sample
            cells = [r.step, f"{s.wall:,.1f} s", f"{s.cpu:,.1f} s", f"{s.rss / 2**20:,.0f} MiB"]
            if remote and r.stats is not None:
                moved = r.stats.bytes_up + r.stats.bytes_down
                cells += [
                    f"{r.stats.requests:,}",
                    f"{r.stats.requests / (r.per_bytes / GIB):,.1f}",
                    f"{moved / 1e6:,.1f}",
                    f"{r.server_cpu:,.1f} s",
                    f"{r.server_rss / 2**20:,.0f} MiB",
                ]
            lines.append("| " + " | ".join([*cells, r.note]) + " |")
        return lines


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "es" if word.endswith("x") else "s")


def uploaded(put: dict) -> str:
    return f"{put['bytes_uploaded'] / 1e6:,.1f} MB uploaded in {plural(put['packs'], 'pack')}"


def sources(got: dict) -> str:
    """Where a get's bytes came from (stored bytes for store and cache)."""
    parts = [
        f"{got[f'bytes_from_{k}'] / 1e6:,.1f} MB {k}"
        for k in ("store", "cache", "destination")
        if got.get(f"bytes_from_{k}")
    ]
    untouched = got.get("files_untouched", 0)
    return ", ".join(parts + ([f"{plural(untouched, 'file')} untouched"] if untouched else []))


def gc_note(report: dict, before: dict, after: dict) -> str:
    """What gc deleted, and the packs repacking wrote (counted on the store)."""
    deleted = report["deleted"]
    gone = ", ".join(
        f"{plural(c['objects'], kind)} ({c['bytes'] / 1e6:,.1f} MB)"
        for kind, c in deleted.items()
        if c["objects"]
    )
    written = after["pack"][0] - before["pack"][0] + deleted["pack"]["objects"]
    return (
        f"deleted {gone or 'nothing'}; {plural(written, 'pack')} written by repacking; "
        f"packs {before['pack'][0]} -> {after['pack'][0]} "
        f"({before['pack'][1] / 1e6:,.1f} -> {after['pack'][1] / 1e6:,.1f} MB)"
    )


def describe(settings: netproxy.LinkSettings) -> str:
    lo, hi = settings.latency_min * 1e3, settings.latency_max * 1e3
    lat = f"{lo:.0f}-{hi:.0f} ms per request" if hi else "no added latency"
    bw = f"{settings.bandwidth * 8 / 1e6:,.0f} Mbit/s each way" if settings.bandwidth else "no cap"
    return f"{lat}, {bw}"


def git_rev() -> str:
    """The checkout's commit (`-dirty` with local changes): what the numbers measured."""
    cmd = ["git", "-C", str(ROOT), "describe", "--always", "--dirty"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--corpus-dir", type=Path, default=corpus.default_dir())
    ap.add_argument("--parts", type=int, default=11, help="sub-builds (~1 GB each; default 11)")
    ap.add_argument("--local", action="store_true", help="also run the steps on a local store")
    ap.add_argument(
        "--latency", type=netproxy.parse_latency, default=(0.0, 0.0), help="e.g. 20-50ms"
    )
    ap.add_argument("--bandwidth", type=netproxy.parse_bandwidth, default=None, help="e.g. 100Mbit")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: temp)")
    ap.add_argument("--doc", type=Path, default=None, help="write the text into this file")
    ap.add_argument("--smoke", action="store_true", help=f"{SMOKE_PARTS} tiny parts; seconds")
    args = ap.parse_args(argv)
    command = "python benchmarks/scale.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    settings = netproxy.LinkSettings(*args.latency, bandwidth=args.bandwidth)
    Cas.prepare()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cas-scale-", dir=args.work) as tmp:
        work = Path(tmp)
        if args.smoke:
            pool = lambda: corpus.synthetic_pool(8 << 20)  # noqa: E731
            a, b = corpus.build_scaled(work / "corpus", pool, corpus.SMOKE_SCALE, SMOKE_PARTS)
        else:
            cache = args.corpus_dir.resolve()
            pool = lambda: corpus.torch_pool(cache)  # noqa: E731
            a, b = corpus.build_scaled(cache, pool, corpus.BuildScale(), args.parts)
        bench = ScaleRun(a, b, work)
        need, free = 1.8 * bench.size[a], shutil.disk_usage(work).free
        if free < need:
            raise SystemExit(f"{work}: {free / 1e9:.1f} GB free, the run needs ~{need / 1e9:.1f}")
        server = Server(work, settings)
        try:
            bench.steps("serve", server.link.url, server.serve.root, server)
        finally:
            server.close()
        rmtree(server.serve.root)
        if args.local:
            store = work / "local-store"
            bench.steps("local", str(store), store, None)
            rmtree(store)

        fa, fb = corpus.tree_bytes(a)[0], corpus.tree_bytes(b)[0]
        parts = len(list(a.glob("part[0-9][0-9]")))
        mem = psutil.virtual_memory().total / 2**30
        rows = [r for table in bench.tables.values() for r in table]
        foreign = max((r.sample.foreign for r in rows), default=0.0)
        out = [
            f"A = `{a.name}` ({parts} generated builds side by side: {fa:,} files, "
            f"{bench.size[a] / 1e9:,.2f} GB), B = `{b.name}` ({fb:,} files, "
            f"{bench.size[b] / 1e9:,.2f} GB); one run on {os.cpu_count()} cores, "
            f"{mem:.0f} GiB RAM, trees read from disk (not warmed), cas {git_rev()}. "
            f"`cas serve` on this machine through benchmarks/netproxy.py "
            f"({describe(settings)}); CPU and peak RSS are those of the cas command's "
            "process tree, the server's are beside them. Requests per GiB of the step's "
            f"tree (gc: A + B). Other processes used at most {foreign:.0%} of the cores "
            "during a step.",
            "",
            *bench.table("serve"),
        ]
        if args.local:
            out += ["", "The same steps on a local directory store (`--store PATH`):", ""]
            out += bench.table("local")
        out += ["", f"Command: `{command}` ({time.strftime('%Y-%m-%d')})", ""]
        text = "\n".join(out)
        print(text)
        if args.doc and not bench.failures:
            write_doc(args.doc, "scale smoke" if args.smoke else "scale", text)
    log(f"done in {time.monotonic() - t0:.0f} s")
    for f in bench.failures:
        print(f"FAILED: {f}", file=sys.stderr)
    if args.smoke and not bench.failures:
        print("smoke: every restore was exact, gc kept B intact", file=sys.stderr)
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
