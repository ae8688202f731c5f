"""cas through a cloud-like link: requests per GB, wall time, and the bound the link sets.

    python benchmarks/remote.py --corpus-dir DIR build                 # starts `cas serve`
    python benchmarks/remote.py --corpus-dir DIR build --store gcs-emulator
    python benchmarks/remote.py build --store http://HOST:PORT         # CAS_TOKEN in the env
    STORAGE_EMULATOR_HOST=http://HOST:PORT \
        python benchmarks/remote.py build --store gs://BUCKET/PREFIX   # bucket must exist
    python benchmarks/remote.py --smoke                                # seconds (CI)

Everything between cas and the store goes through benchmarks/netproxy.py
(default 20-50 ms per request, 100 Mbit/s each way). For the pair (A, B)
cas puts A into an empty store, puts B after A, puts B again unchanged
(the same machine's caches: only existence checks should cross the link),
gets A into an empty
directory with an empty cache and gets B into the directory holding A. The
baseline ships one `.tar.zst` through an identical link: `tar -I 'zstd -T0
-3' -cf - | curl -T -` to a blob server and `curl | tar -x` back.

For each step the table shows wall time, the requests and bytes that
crossed the link, requests per GB of the tree, and the bound
max(bytes crossing the link / bandwidth, CPU seconds of the step / cores):
a step can be no faster than its transfer or its computation on this
machine. Every restore is checked against its source.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import compare  # noqa: E402
import corpus  # noqa: E402
import netproxy  # noqa: E402
from measure import Sample, run  # noqa: E402
from tools.cas import Cas  # noqa: E402
from verify import split_stale, tree_differences  # noqa: E402

TOKEN = "bench-write-token-0123456789abcdef"
GCS_BUCKET = "cas-bench"


class Link:
    """A `NetProxy` on its own event loop thread, so timed subprocesses can run meanwhile."""

    def __init__(self, upstream: str, settings: netproxy.LinkSettings) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.proxy = netproxy.NetProxy(upstream, settings)
        self.url = self.call(self.proxy.start())

    def call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def take_stats(self) -> netproxy.Stats:
        """What crossed since the last call (and reset)."""

        async def swap() -> netproxy.Stats:
            stats, self.proxy.stats = self.proxy.stats, netproxy.Stats()
            return stats

        return self.call(swap())

    def close(self) -> None:
        self.call(self.proxy.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


class BlobServer:
    """One file behind PUT/GET /blob: where the `.tar.zst` baseline is shipped to and from."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result()

    async def _start(self) -> str:
        app = web.Application(client_max_size=0)
        app.router.add_put("/blob", self._put)
        app.router.add_get("/blob", self._get)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def _put(self, request: web.Request) -> web.Response:
        with self.path.open("wb") as f:
            async for piece in request.content.iter_chunked(1 << 20):
                f.write(piece)
        return web.Response(status=201)

    async def _get(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(self.path)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


@dataclass
class Endpoint:
    """Where cas sends requests: the store URL and the environment pointing it at the link."""

    store: str
    env: dict[str, str]
    link: Link


@contextmanager
def endpoint(spec: str | None, settings: netproxy.LinkSettings, work: Path) -> Iterator[Endpoint]:
    """Start (or use) the store endpoint and put a `Link` in front of it."""
    stops = []
    try:
        env = dict(os.environ)
        if spec is None or spec == "serve":
            from tests.serve_process import start_serve

            server = start_serve(work / "serve", tokens={"write": TOKEN})
            stops.append(server.stop)
            upstream, store, env["CAS_TOKEN"] = server.url, None, TOKEN
        elif spec == "gcs-emulator":
            from tests.gcs_emulator import start_emulator

            (work / "gcs").mkdir(parents=True)
            emulator = start_emulator(work / "gcs")
            stops.append(emulator.stop)
            emulator.create_bucket(GCS_BUCKET)
            upstream, store = emulator.url, f"gs://{GCS_BUCKET}/bench-{os.getpid()}"
        elif spec.startswith("gs://"):
            upstream = os.environ.get("STORAGE_EMULATOR_HOST", "")
            if not upstream:
                raise SystemExit("--store gs://... needs STORAGE_EMULATOR_HOST (the emulator)")
            if "://" not in upstream:
                upstream = "http://" + upstream
            store = spec
        elif spec.startswith(("http://", "https://")):
            upstream, store = spec, None
        else:
            raise SystemExit(f"--store {spec!r}: use serve, gcs-emulator, http://... or gs://...")
        link = Link(upstream, settings)
        stops.append(link.close)
        if store is None:
            store = link.url
        else:
            env["STORAGE_EMULATOR_HOST"] = link.url
        env["CI"] = "1"
        env.pop("CAS_STORE", None)
        yield Endpoint(store, env, link)
    finally:
        for stop in reversed(stops):
            stop()


@dataclass
class Row:
    step: str
    sample: Sample
    stats: netproxy.Stats
    tree_bytes: int
    ok: bool

    def bound(self, bandwidth: float | None) -> float:
        moved = self.stats.bytes_up + self.stats.bytes_down
        transfer = moved / bandwidth if bandwidth else 0.0
        return max(transfer, self.sample.cpu / (os.cpu_count() or 1))


class RemoteBench:
    def __init__(self, a: Path, b: Path, settings: netproxy.LinkSettings, work: Path) -> None:
        self.a, self.b, self.settings, self.work = a, b, settings, work
        self.rows: list[Row] = []
        self.failures: list[str] = []

    def check(self, step: str, expected: Path, actual: Path) -> bool:
        stale, wrong = split_stale(tree_differences(expected, actual))
        bad = wrong + (stale if step.startswith("cas") else [])
        if bad:
            self.failures.append(f"{step}: {len(bad)} differences, e.g. " + "; ".join(bad[:5]))
        return not bad

    def record(self, step: str, sample: Sample, link: Link, tree: Path, ok: bool) -> None:
        size = corpus.tree_bytes(tree)[1]
        self.rows.append(Row(step, sample, link.take_stats(), size, ok))
        r = self.rows[-1]
        print(
            f"[remote] {step}: {sample.wall:.2f} s, {r.stats.requests} requests, "
            f"{(r.stats.bytes_up + r.stats.bytes_down) / 1e6:,.1f} MB",
            file=sys.stderr,
            flush=True,
        )

    def cas(self, spec: str | None) -> None:
        cas = Cas.cas_cmd
        with endpoint(spec, self.settings, self.work / "endpoint") as ep:
            link = ep.link
            link.take_stats()

            def cas_run(cache: str, *args: str) -> Sample:
                env = {**ep.env, "CAS_CACHE_DIR": str(self.work / f"cache-{cache}")}
                return run([[*cas, *args[:1], "--store", ep.store, "-q", *args[1:]]], env=env)

            # As CI names its runs: B's parent is the newest ref beside its own (A's).
            put_a = cas_run("put", "put", str(self.a), "--ref", "bench/1")
            id_a = put_a.stdout.decode().strip()
            self.record("cas put A", put_a, link, self.a, True)
            # A fresh runner (empty caches) puts B: it reads A's index, nothing else.
            put_b = cas_run("put-b", "put", str(self.b), "--ref", "bench/2")
            id_b = put_b.stdout.decode().strip()
            self.record("cas put B after A, fresh runner", put_b, link, self.b, True)
            again = cas_run("put-b", "put", str(self.b), "--ref", "bench/3")
            self.record("cas re-put B unchanged", again, link, self.b, True)
            dest = self.work / "cas-dest"
            s = cas_run("get", "get", id_a, str(dest))
            self.record("cas get A, empty", s, link, self.a, self.check("cas get A", self.a, dest))
            s = cas_run("get-b", "get", "--delete", id_b, str(dest))
            ok = self.check("cas get B into dir holding A", self.b, dest)
            self.record("cas get B into dir holding A", s, link, self.b, ok)
            compare.rmtree(dest)

    def tar(self) -> None:
        blob = BlobServer(self.work / "blob.tar.zst")
        link = Link(blob.url, self.settings)
        try:
            for step, tree in (("tar+zstd -3 put A", self.a), ("tar+zstd -3 put B", self.b)):
                s = run(
                    [
                        ["tar", "-I", "zstd -T0 -3", "-cf", "-", "-C", str(tree), "."],
                        ["curl", "-sSf", "-T", "-", f"{link.url}/blob"],
                    ]
                )
                self.record(step, s, link, tree, True)
                dest = self.work / "tar-dest"
                dest.mkdir()
                get = step.replace("put", "get")
                s = run(
                    [
                        ["curl", "-sSf", f"{link.url}/blob"],
                        ["tar", "-I", "zstd -T0", "-xf", "-", "-C", str(dest)],
                    ]
                )
                self.record(get, s, link, tree, self.check(get, tree, dest))
                compare.rmtree(dest)
        finally:
            link.close()
            blob.close()

    def table(self) -> list[str]:
        bw = self.settings.bandwidth
        lines = [
            "| step | wall | requests | requests / GB | MB over the link | bound | wall / bound "
            "| exact |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            moved = r.stats.bytes_up + r.stats.bytes_down
            bound = r.bound(bw)
            lines.append(
                f"| {r.step} | {r.sample.wall:.2f} s | {r.stats.requests:,} | "
                f"{r.stats.requests / (r.tree_bytes / 1e9):,.0f} | {moved / 1e6:,.1f} | "
                f"{bound:.2f} s | {r.sample.wall / bound if bound else 0:.2f}x | "
                f"{'yes' if r.ok else 'NO'} |"
            )
        return lines


def describe(settings: netproxy.LinkSettings) -> str:
    lat = f"{settings.latency_min * 1e3:.0f}-{settings.latency_max * 1e3:.0f} ms per request"
    bw = f"{settings.bandwidth * 8 / 1e6:,.0f} Mbit/s each way" if settings.bandwidth else "no cap"
    return f"{lat}, {bw}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("pair", nargs="?", default="build", help="a pair name or A:B (default build)")
    ap.add_argument("--corpus-dir", type=Path, default=corpus.default_dir())
    ap.add_argument(
        "--store",
        default=None,
        help="serve (default: start `cas serve`), gcs-emulator (start fake-gcs-server), "
        "http(s)://HOST:PORT of a running cas serve, or gs://BUCKET/PREFIX with "
        "STORAGE_EMULATOR_HOST",
    )
    ap.add_argument(
        "--latency", type=netproxy.parse_latency, default=(0.02, 0.05), help="default 20-50ms"
    )
    ap.add_argument(
        "--bandwidth",
        type=netproxy.parse_bandwidth,
        default=12.5e6,
        help="cap each way (default 100Mbit)",
    )
    ap.add_argument("--cas", default=None, help="cas command (default: the one beside python)")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: temp)")
    ap.add_argument("--doc", type=Path, default=None, help="write the table into this file")
    ap.add_argument("--smoke", action="store_true", help="tiny generated pair, correctness only")
    args = ap.parse_args(argv)
    command = "python benchmarks/remote.py " + shlex.join(
        argv if argv is not None else sys.argv[1:]
    )
    if args.cas:
        Cas.cas_cmd = shlex.split(args.cas)
    settings = netproxy.LinkSettings(*args.latency, bandwidth=args.bandwidth)
    with tempfile.TemporaryDirectory(prefix="cas-remote-", dir=args.work) as tmp:
        work = Path(tmp)
        if args.smoke:
            a, b = corpus.build_smoke(work / "corpus")
        else:
            c = compare.corpora_from([args.pair], args.corpus_dir)[0]
            if c.b is None:
                raise SystemExit(f"{args.pair!r} is not a pair")
            a, b = c.a, c.b
        compare.warm_page_cache(a)
        compare.warm_page_cache(b)
        bench = RemoteBench(a, b, settings, work)
        t0 = time.monotonic()
        bench.tar()
        bench.cas(args.store)
        where = args.store or "serve"
        text = "\n".join(
            [
                f"Through a link of {describe(settings)} (benchmarks/netproxy.py) to "
                f"`{where}` on this machine; A = `{a.name}` ({corpus.tree_bytes(a)[1] / 1e6:,.0f} "
                f"MB), B = `{b.name}`; one run. Bound: max(bytes over the link / bandwidth, "
                f"CPU seconds / {os.cpu_count()} cores).",
                "",
                *bench.table(),
                "",
                f"Command: `{command}`",
                "",
            ]
        )
        print(text)
        print(f"[remote] done in {time.monotonic() - t0:.0f} s", file=sys.stderr)
        if args.doc and not args.smoke:
            from report import write_doc

            kind = "gs" if where == "gcs-emulator" or where.startswith("gs://") else "serve"
            write_doc(args.doc, f"remote {a.name}-{b.name} {kind}", text)
    for f in bench.failures:
        print(f"FAILED: {f}", file=sys.stderr)
    if not bench.failures and args.smoke:
        print("smoke: every restore through the link was exact", file=sys.stderr)
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
