"""Which GCS client for `GcsStore`: google-cloud-storage in threads, or aiohttp on the JSON API.

    pip install google-cloud-storage   # the client compared; cas itself does not use it
    python benchmarks/gcs_clients.py [--objects 2000] [--size 2048] [--inflight 32,64,128]
                                     [--latency-ms 30]

Starts `fake-gcs-server` on loopback (tests/gcs_emulator.py) and, for each
client and each number of requests in flight, runs the calls a put and a get
make for many small files, on fresh names each round:

1. `missing` checks on objects that are absent (metadata GET, 404),
2. create-only uploads (multipart, `ifGenerationMatch=0`),
3. `missing` checks on the now present objects,
4. downloads.

It prints requests per second per phase, wall time and the client's CPU
seconds. The emulator runs on the same cores, so the CPU column matters as
much as the rates: CPU the client burns is CPU the chunker cannot use.
Both clients get a connection pool as large as the number in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.gcs_emulator import start_emulator

BUCKET = "bench"
PHASES = ("missing-absent", "create", "missing-present", "get")


def run_threads(url: str, names: list[str], payloads: list[bytes], inflight: int) -> dict:
    """google-cloud-storage, one blocking call per thread."""
    import requests.adapters
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(
        project="bench",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": url},
    )
    adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=inflight)
    client._http.mount("http://", adapter)
    bucket = client.bucket(BUCKET)
    timings: dict[str, float] = {}

    with ThreadPoolExecutor(inflight) as pool:

        def phase(name: str, fn: Callable[[int], object]) -> list:
            start = time.perf_counter()
            out = list(pool.map(fn, range(len(names))))
            timings[name] = time.perf_counter() - start
            return out

        absent = phase("missing-absent", lambda i: not bucket.blob(names[i]).exists())
        assert all(absent)
        phase(
            "create",
            lambda i: bucket.blob(names[i]).upload_from_string(
                payloads[i], content_type="application/octet-stream", if_generation_match=0
            ),
        )
        present = phase("missing-present", lambda i: bucket.blob(names[i]).exists())
        assert all(present)
        got = phase("get", lambda i: bucket.blob(names[i]).download_as_bytes())
        assert got == payloads
    return timings


def run_aiohttp(url: str, names: list[str], payloads: list[bytes], inflight: int) -> dict:
    """aiohttp on the JSON API, one event loop, a semaphore for the number in flight."""
    import aiohttp

    async def main() -> dict:
        timings: dict[str, float] = {}
        limit = asyncio.Semaphore(inflight)
        connector = aiohttp.TCPConnector(limit=inflight)
        async with aiohttp.ClientSession(connector=connector) as session:
            base = f"{url}/storage/v1/b/{BUCKET}/o/"

            async def exists(i: int) -> bool:
                async with (
                    limit,
                    session.get(base + quote(names[i], safe=""), params={"fields": "name"}) as resp,
                ):
                    await resp.read()
                    return resp.status == 200

            async def create(i: int) -> None:
                boundary = secrets.token_hex(16)
                meta = json.dumps({"name": names[i]}).encode()
                body = b"".join(
                    [
                        f"--{boundary}\r\nContent-Type: application/json\r\n\r\n".encode(),
                        meta,
                        f"\r\n--{boundary}\r\n".encode(),
                        b"Content-Type: application/octet-stream\r\n\r\n",
                        payloads[i],
                        f"\r\n--{boundary}--\r\n".encode(),
                    ]
                )
                async with (
                    limit,
                    session.post(
                        f"{url}/upload/storage/v1/b/{BUCKET}/o",
                        params={"uploadType": "multipart", "ifGenerationMatch": "0"},
                        data=body,
                        headers={"Content-Type": f"multipart/related; boundary={boundary}"},
                    ) as resp,
                ):
                    await resp.read()
                    assert resp.status == 200, resp.status

            async def get(i: int) -> bytes:
                async with (
                    limit,
                    session.get(base + quote(names[i], safe=""), params={"alt": "media"}) as resp,
                ):
                    return await resp.read()

            async def phase(name: str, fn: Callable[[int], Awaitable]) -> list:
                start = time.perf_counter()
                out = await asyncio.gather(*(fn(i) for i in range(len(names))))
                timings[name] = time.perf_counter() - start
                return out

            assert not any(await phase("missing-absent", exists))
            await phase("create", create)
            assert all(await phase("missing-present", exists))
            assert await phase("get", get) == payloads
        return timings

    return asyncio.run(main())


def run_store(url: str, names: list[str], payloads: list[bytes], inflight: int) -> dict:
    """`GcsStore` itself (aiohttp underneath), through the layers `open_store` adds."""
    from cas.ids import hash_bytes
    from cas.store.base import Kind
    from cas.store.gcs.location import GcsLocation
    from cas.store.gcs.store import GcsStore
    from cas.store.registry import wrap_remote

    ids = [hash_bytes(p) for p in payloads]

    async def main() -> dict:
        timings: dict[str, float] = {}
        inner = GcsStore(
            GcsLocation(BUCKET, "store"), endpoint=url, anonymous=True, max_concurrency=inflight
        )
        async with wrap_remote(inner) as store:

            async def phase(name: str, call: Awaitable) -> object:
                start = time.perf_counter()
                out = await call
                timings[name] = time.perf_counter() - start
                return out

            assert await phase("missing-absent", store.missing(Kind.PACK, ids)) == set(ids)
            created = await phase(
                "create", store.put_many(Kind.PACK, list(zip(ids, payloads, strict=True)))
            )
            assert all(created)
            assert await phase("missing-present", store.missing(Kind.PACK, ids)) == set()
            got = await phase("get", store.get_many(Kind.PACK, ids, max_size=1 << 20))
            assert [got[i] for i in ids] == payloads
        return timings

    return asyncio.run(main())


CLIENTS = {"gcs-threads": run_threads, "aiohttp": run_aiohttp, "GcsStore": run_store}


def start_proxy(upstream: str, latency_ms: float) -> tuple[subprocess.Popen, str]:
    """benchmarks/netproxy.py in its own process, so its CPU is not the client's."""
    proc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).parent / "netproxy.py"),
            "--upstream",
            upstream,
            "--latency",
            f"{latency_ms}ms",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--size", type=int, default=2048, help="bytes per object")
    parser.add_argument("--inflight", default="32,64,128")
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0,
        help="put benchmarks/netproxy.py with this delay per request in front",
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="cas-gcs-bench-"))
    print(
        f"{args.objects} objects of {args.size} B, a fresh emulator per row, "
        f"{args.latency_ms:g} ms added per request; "
        "requests/s per phase; client CPU s over all phases",
        file=sys.stderr,
    )
    header = f"{'client':12} {'inflight':>8} " + " ".join(f"{p:>16}" for p in PHASES)
    print(header + f" {'wall s':>8} {'cpu s':>7}")
    clients = args.clients.split(",")
    for round_ in range(args.repeat):
        for inflight in (int(x) for x in args.inflight.split(",")):
            # Alternate the order so neither client always runs on a warmer machine.
            for client in clients if round_ % 2 == 0 else clients[::-1]:
                payloads = [os.urandom(args.size) for _ in range(args.objects)]
                names = [f"bench/{i:06d}" for i in range(args.objects)]
                # The in-memory emulator slows down as it fills, so each row gets its own.
                emulator = start_emulator(workdir)
                proxy = None
                try:
                    emulator.create_bucket(BUCKET)
                    url = emulator.url
                    if args.latency_ms:
                        proxy, url = start_proxy(emulator.url, args.latency_ms)
                    cpu0, wall0 = time.process_time(), time.perf_counter()
                    timings = CLIENTS[client](url, names, payloads, inflight)
                    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
                finally:
                    if proxy is not None:
                        proxy.terminate()
                        proxy.wait()
                    emulator.stop()
                rates = " ".join(f"{args.objects / timings[p]:16.0f}" for p in PHASES)
                print(f"{client:12} {inflight:8d} {rates} {wall:8.2f} {cpu:7.2f}", flush=True)


if __name__ == "__main__":
    main()
