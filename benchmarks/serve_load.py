"""`cas serve` under load on loopback: latency, errors, memory, and slow clients vs the rest.

    python benchmarks/serve_load.py --seed 1 --seconds 60 [--clients 4] [--json out.json]

Starts a real `cas serve` subprocess on 127.0.0.1 over a new local store
(tests/serve_process.py), then runs two phases of `--seconds / 2` each:

1. `base`: `--clients` processes that each put a changing tree through the
   real client (`HttpStore` with the remote layers, as `--store http://` opens
   it) and get it back into an empty directory, checking every byte; a
   process flooding small requests (`HEAD` stat, `missing`, ref reads) with
   `--flood` requests in flight; and, twice a second, oversize uploads (a
   manifest body past its limit, once with `Content-Length` and once
   chunked), which must be refused with `413`.
2. `slow`: the same, plus `--slow` clients that start a pack upload and
   trickle its body one byte every 100 ms until the phase ends.

Printed: requests the server answered (its `/metrics`), p50/p99/max latency
per operation for each phase (a put or get is the whole operation; the small
requests are single requests), unexpected errors (anything but `413` for
the oversize bodies; any failed put, get or small request; any 5xx), what
happened to the tricklers, and the server's RSS at the start, at the end
and its peak (VmHWM). A slow client must not stall the others: compare the
p99 of the two phases.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from tests.serve_process import TOKENS, start_serve  # noqa: E402

PHASES = ("base", "slow")
TRICKLE_PERIOD = 0.1
_METRIC = re.compile(r"^cas_http_requests_total\{(.*)\} ([0-9.e+]+)$", re.M)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


# ---------------------------------------------------------------- helpers


def phase_of(started: float, t0: float, half: float) -> str:
    return PHASES[0] if started - t0 < half else PHASES[1]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def make_tree(root: Path, rng: random.Random, shared: list[bytes]) -> dict[str, bytes]:
    """A small build-like tree: some files shared across puts (dedup), some new."""
    files: dict[str, bytes] = {}
    for i in range(24):
        blob = rng.choice(shared) if i % 3 else rng.randbytes(rng.randint(1 << 10, 160 << 10))
        files[f"d{i % 4}/f{i}.o"] = blob
    for rel, blob in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
    return files


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def vm_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


# ---------------------------------------------------------------- normal clients


def normal_client(
    url: str, index: int, seed: int, t0: float, half: float, work: str, queue: Any
) -> None:
    """Put a tree, get it back, compare; repeat until the end of the second phase."""
    from cas.get.downloader import restore_manifest
    from cas.put.uploader import PutOptions, Uploader
    from cas.repo import Repository
    from cas.store.http import HttpStore
    from cas.store.registry import wrap_remote

    rng = random.Random(seed * 1000 + index)
    shared = [random.Random(seed + k).randbytes((8 << 10) + k * 512) for k in range(32)]
    samples: list[tuple[str, str, float]] = []
    errors: list[str] = []

    async def run() -> None:
        store = wrap_remote(HttpStore(url, TOKENS["write"]))
        repo = Repository(store)
        n = 0
        try:
            while time.time() < t0 + 2 * half:
                n += 1
                base = Path(work) / f"c{index}-{n}"
                src, dst = base / "src", base / "dst"
                files = make_tree(src, rng, shared)
                options = PutOptions(ref=f"load/{index}/{n}", workers=2, processes=False)
                started = time.time()
                try:
                    result = await Uploader(repo, options).put(src)
                except Exception as exc:  # a failed put is the figure, not a crash
                    errors.append(f"put: {type(exc).__name__}: {exc}")
                    continue
                samples.append((phase_of(started, t0, half), "put", time.time() - started))
                started = time.time()
                try:
                    await restore_manifest(repo, result.manifest_id, dst)
                except Exception as exc:
                    errors.append(f"get: {type(exc).__name__}: {exc}")
                    continue
                samples.append((phase_of(started, t0, half), "get", time.time() - started))
                if tree_bytes(dst) != files:
                    errors.append(f"get: {result.manifest_id} did not restore its tree")
                shutil.rmtree(base, ignore_errors=True)
        finally:
            await store.aclose()

    asyncio.run(run())
    queue.put({"samples": samples, "errors": errors})


# ---------------------------------------------------------------- small-request flood


def flood_client(
    url: str, seed: int, t0: float, half: float, width: int, known: dict, queue: Any
) -> None:
    """`width` loops of HEAD stat / POST missing / GET ref, as fast as the server answers."""
    samples: list[tuple[str, str, float]] = []
    errors: list[str] = []
    rng = random.Random(seed)
    api = url + "/v1"
    absent = [f"{rng.getrandbits(256):064x}" for _ in range(50)]

    async def one(session: aiohttp.ClientSession) -> None:
        while time.time() < t0 + 2 * half:
            op = rng.choice(("stat", "missing", "ref"))
            started = time.time()
            try:
                if op == "stat":
                    kind, object_id = rng.choice(known["objects"])
                    async with session.head(f"{api}/{kind}/{object_id}") as r:
                        ok = r.status == 200
                elif op == "missing":
                    ids = [oid for k, oid in known["objects"] if k == "pack"][:50] + absent
                    async with session.post(f"{api}/pack/missing", json={"ids": ids}) as r:
                        ok = r.status == 200 and len((await r.json())["missing"]) == len(absent)
                else:
                    async with session.get(f"{api}/refs/{known['ref']}") as r:
                        ok = r.status == 200 and (await r.json())["target"] == known["manifest"]
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors.append(f"{op}: {type(exc).__name__}: {exc}")
                continue
            if not ok:
                errors.append(f"{op}: status {r.status}")
            samples.append((phase_of(started, t0, half), op, time.time() - started))

    async def run() -> None:
        headers = {"Authorization": f"Bearer {TOKENS['read']}"}
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
            await asyncio.gather(*(one(session) for _ in range(width)))

    asyncio.run(run())
    queue.put({"samples": samples, "errors": errors})


# ---------------------------------------------------------------- hostile clients


async def oversize(url: str, t0: float, half: float, limit: int) -> dict[str, Any]:
    """Manifest bodies past the limit, declared and chunked, twice a second; each must be 413."""
    statuses: dict[str, int] = {}
    errors: list[str] = []
    headers = {"Authorization": f"Bearer {TOKENS['write']}"}
    body = b"\0" * (limit + 4096)

    async def chunked():
        step = 64 << 10
        for start in range(0, len(body), step):
            yield body[start : start + step]

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        n = 0
        while time.time() < t0 + 2 * half:
            n += 1
            data = body if n % 2 else chunked()
            target = f"{url}/v1/manifest/{n:064x}"
            try:
                async with session.put(target, data=data) as r:
                    statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
                    if r.status != 413:
                        errors.append(f"oversize: status {r.status}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors.append(f"oversize: {type(exc).__name__}: {exc}")
            await asyncio.sleep(0.5)
    return {"statuses": statuses, "errors": errors}


async def trickler(host: str, port: int, index: int, until: float) -> dict[str, Any]:
    """A pack upload whose body arrives one byte per 100 ms; how long the server lets it run."""
    started = time.time()
    reader, writer = await asyncio.open_connection(host, port)
    head = (
        f"PUT /v1/pack/{index + 1:064x} HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {TOKENS['write']}\r\nContent-Length: {1 << 20}\r\n\r\n"
    )
    writer.write(head.encode())
    sent, outcome = 0, "held until the phase ended"
    try:
        while time.time() < until:
            if reader.at_eof() or writer.is_closing():
                outcome = "closed by the server"
                break
            writer.write(b"\0")
            await writer.drain()
            sent += 1
            try:
                line = await asyncio.wait_for(reader.readline(), TRICKLE_PERIOD)
            except TimeoutError:
                continue
            outcome = f"answered {line.decode(errors='replace').strip()!r}" if line else "closed"
            break
    except ConnectionError as exc:
        outcome = f"connection error: {type(exc).__name__}"
    finally:
        writer.close()
    return {"bytes_sent": sent, "seconds": round(time.time() - started, 2), "outcome": outcome}


# ---------------------------------------------------------------- setup and report


async def seed_store(url: str, work: Path, seed: int) -> dict[str, Any]:
    """One put, so the flood has real objects and a ref to read."""
    from cas.put.uploader import PutOptions, Uploader
    from cas.repo import Repository
    from cas.store.base import Kind
    from cas.store.http import HttpStore
    from cas.store.registry import wrap_remote

    store = wrap_remote(HttpStore(url, TOKENS["write"]))
    try:
        src = work / "seed"
        make_tree(src, random.Random(seed), [random.Random(seed).randbytes(9000)])
        result = await Uploader(Repository(store), PutOptions(ref="load/seed")).put(src)
        objects = []
        for kind in (Kind.PACK, Kind.MANIFEST, Kind.INDEX):
            objects += [(kind.value, str(info.id)) async for info in store.list(kind)]
    finally:
        await store.aclose()
    return {"ref": "load/seed", "manifest": str(result.manifest_id), "objects": objects}


def server_requests(url: str) -> dict[str, int]:
    """Requests the server answered, by status, from its `/metrics`."""
    import urllib.request

    text = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    counts: dict[str, int] = {}
    for labels, value in _METRIC.findall(text):
        status = dict(_LABEL.findall(labels))["status"]
        counts[status] = counts.get(status, 0) + int(float(value))
    return counts


def run(args: argparse.Namespace) -> dict[str, Any]:
    from cas.server.verify import Limits
    from cas.store.base import Kind

    work = Path(args.work or tempfile.mkdtemp(prefix="cas-serve-load-"))
    extra = ["--body-timeout", str(args.body_timeout)] if args.body_timeout else []
    server = start_serve(work / "server", *extra)
    try:
        pid = server.proc.pid
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        known = asyncio.run(seed_store(server.url, work, args.seed))
        rss_start = vm_status(pid)
        half = args.seconds / 2
        t0 = time.time() + 1.0  # every process starts its clock at the same moment
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        procs = [
            ctx.Process(
                target=normal_client,
                args=(server.url, i, args.seed, t0, half, str(work / "clients"), queue),
            )
            for i in range(args.clients)
        ]
        procs.append(
            ctx.Process(
                target=flood_client,
                args=(server.url, args.seed, t0, half, args.flood, known, queue),
            )
        )
        for proc in procs:
            proc.start()

        peak_rss = [rss_start["VmRSS"]]
        rss_series: list[tuple[float, int]] = []

        async def hostile() -> tuple[dict, list[dict]]:
            async def sample_rss() -> None:
                while time.time() < t0 + 2 * half:
                    peak_rss.append(vm_status(pid)["VmRSS"])
                    if len(peak_rss) % 20 == 0:  # every 5 s, for the JSON
                        rss_series.append((round(time.time() - t0, 1), peak_rss[-1]))
                    await asyncio.sleep(0.25)

            async def slow_phase() -> list[dict]:
                await asyncio.sleep(max(0.0, t0 + half - time.time()))
                until = t0 + 2 * half
                return await asyncio.gather(
                    *(trickler(host, int(port), i, until) for i in range(args.slow))
                )

            await asyncio.sleep(max(0.0, t0 - time.time()))
            big, slow, _ = await asyncio.gather(
                oversize(server.url, t0, half, Limits().body(Kind.MANIFEST)),
                slow_phase(),
                sample_rss(),
            )
            return big, slow

        big, slow = asyncio.run(hostile())
        results = []
        for _ in procs:
            results.append(queue.get(timeout=args.seconds + 300))
        for proc in procs:
            proc.join(30)
        rss_end = vm_status(pid)
        requests = server_requests(server.url)
        server_alive = server.proc.poll() is None
    finally:
        server.stop()
        if not args.work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    samples = [s for r in results for s in r["samples"]]
    errors = [e for r in results for e in r["errors"]] + big["errors"]
    errors += [f"server answered {n} x {s}" for s, n in requests.items() if s.startswith("5")]
    if not server_alive:
        errors.append("the server died")
    latency: dict[str, dict[str, dict[str, float]]] = {}
    for phase, op, seconds in samples:
        latency.setdefault(op, {}).setdefault(phase, []).append(seconds)  # type: ignore[arg-type]
    table = {
        op: {
            phase: {
                "n": len(values),
                "p50": percentile(values, 0.5),
                "p99": percentile(values, 0.99),
                "max": max(values),
                "mean": statistics.fmean(values),
            }
            for phase, values in by_phase.items()
        }
        for op, by_phase in latency.items()
    }
    return {
        "seed": args.seed,
        "seconds": args.seconds,
        "clients": args.clients,
        "flood": args.flood,
        "slow": args.slow,
        "body_timeout": args.body_timeout,
        "requests_by_status": requests,
        "requests_total": sum(requests.values()),
        "latency": table,
        "oversize": big["statuses"],
        "tricklers": slow,
        "rss_kib": {
            "start": rss_start["VmRSS"],
            "end": rss_end["VmRSS"],
            "peak_sampled": max(peak_rss),
            "hwm": rss_end["VmHWM"],
            "every_5s": rss_series,
        },
        "unexpected_errors": errors,
    }


def report(out: dict[str, Any]) -> str:
    lines = [
        f"cas serve load: seed {out['seed']}, {out['seconds']} s "
        f"({out['seconds'] / 2:g} s without, {out['seconds'] / 2:g} s with {out['slow']} "
        f"tricklers), {out['clients']} put+get clients, flood width {out['flood']}",
        "",
        "| operation | phase | n | p50 ms | p99 ms | max ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for op in ("put", "get", "stat", "missing", "ref"):
        for phase in PHASES:
            row = out["latency"].get(op, {}).get(phase)
            if row:
                lines.append(
                    f"| {op} | {phase} | {row['n']} | {row['p50'] * 1000:.1f} | "
                    f"{row['p99'] * 1000:.1f} | {row['max'] * 1000:.1f} |"
                )
    rss = out["rss_kib"]
    lines += [
        "",
        f"server requests: {out['requests_total']} by status {out['requests_by_status']}",
        f"oversize answers: {out['oversize']}",
        f"server RSS: start {rss['start'] / 1024:.1f} MiB, end {rss['end'] / 1024:.1f} MiB, "
        f"peak sampled {rss['peak_sampled'] / 1024:.1f} MiB, VmHWM {rss['hwm'] / 1024:.1f} MiB",
        "server RSS every 5 s (MiB): "
        + " ".join(f"{kib / 1024:.0f}" for _, kib in rss["every_5s"]),
    ]
    for i, t in enumerate(out["tricklers"]):
        lines.append(f"trickler {i}: {t['bytes_sent']} bytes in {t['seconds']} s, {t['outcome']}")
    errors = out["unexpected_errors"]
    lines.append(f"unexpected errors: {len(errors)}")
    lines += [f"  {e}" for e in errors[:20]]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=60, help="both phases together")
    ap.add_argument("--clients", type=int, default=4, help="put+get client processes")
    ap.add_argument("--flood", type=int, default=8, help="small requests in flight")
    ap.add_argument("--slow", type=int, default=6, help="trickling uploads in the second phase")
    ap.add_argument(
        "--body-timeout", type=float, help="the server's --body-timeout (default: its own)"
    )
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--work", help="working directory (default: a new temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    out = run(args)
    print(report(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 1 if out["unexpected_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
