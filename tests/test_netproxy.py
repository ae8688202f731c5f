"""The benchmarks' delaying proxy really delays and really caps, on loopback.

A real upstream HTTP server (aiohttp) and the real proxy in front of it; the
last test puts and gets a tree through the proxy in front of a real `cas serve`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.serve_process import TOKENS, ServeProcess

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import netproxy  # noqa: E402

BLOB = bytes(range(256)) * 4096  # 1 MiB


async def start_upstream() -> web.AppRunner:
    async def blob(request: web.Request) -> web.Response:
        return web.Response(body=BLOB, headers={"X-Kind": "blob"})

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=body, status=201, headers={"X-Got": str(len(body))})

    app = web.Application(client_max_size=64 << 20)
    app.router.add_get("/blob", blob)
    app.router.add_put("/echo", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner


def upstream_url(runner: web.AppRunner) -> str:
    port = runner.addresses[0][1]
    return f"http://127.0.0.1:{port}"


async def through_proxy(link: netproxy.LinkSettings):
    upstream = await start_upstream()
    proxy = netproxy.NetProxy(upstream_url(upstream), link)
    await proxy.start()
    return upstream, proxy


async def test_each_request_waits_at_least_the_latency():
    upstream, proxy = await through_proxy(netproxy.LinkSettings(0.04, 0.06))
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                t0 = time.monotonic()
                async with session.put(proxy.url + "/echo", data=b"x" * 10) as resp:
                    assert resp.status == 201
                    assert resp.headers["X-Got"] == "10"
                    assert await resp.read() == b"x" * 10
                elapsed = time.monotonic() - t0
                assert 0.04 <= elapsed < 0.5
        assert proxy.stats.requests == 3
        assert proxy.stats.bytes_up == 30
        assert proxy.stats.bytes_down == 30
    finally:
        await proxy.stop()
        await upstream.cleanup()


async def test_transfers_respect_the_bandwidth_cap_shared_by_parallel_requests():
    rate = 4e6  # 4 MB/s: two parallel 1 MiB downloads need >= 0.52 s in all
    upstream, proxy = await through_proxy(netproxy.LinkSettings(0, 0, bandwidth=rate))
    try:
        async with aiohttp.ClientSession() as session:

            async def fetch() -> bytes:
                async with session.get(proxy.url + "/blob") as resp:
                    assert resp.headers["X-Kind"] == "blob"
                    return await resp.read()

            t0 = time.monotonic()
            bodies = await asyncio.gather(fetch(), fetch())
            elapsed = time.monotonic() - t0
        assert bodies == [BLOB, BLOB]
        floor = (2 * len(BLOB) - netproxy.PIECE) / rate
        assert floor <= elapsed < floor * 3
        assert proxy.stats.bytes_down == 2 * len(BLOB)
    finally:
        await proxy.stop()
        await upstream.cleanup()


async def test_uploads_are_capped_too_and_stats_reset():
    rate = 4e6
    upstream, proxy = await through_proxy(netproxy.LinkSettings(0, 0, bandwidth=rate))
    try:
        async with aiohttp.ClientSession() as session:
            t0 = time.monotonic()
            async with session.put(proxy.url + "/echo", data=BLOB) as resp:
                assert resp.headers["X-Got"] == str(len(BLOB))
                assert await resp.read() == BLOB
            elapsed = time.monotonic() - t0
            # up and down have their own buckets, so the echo costs ~2x len/rate
            assert elapsed >= 2 * (len(BLOB) - netproxy.PIECE) / rate
            async with session.post(proxy.url + netproxy.STATS_PATH) as resp:
                stats = await resp.json()
            async with session.get(proxy.url + netproxy.STATS_PATH) as resp:
                after = await resp.json()
        assert stats["requests"] == 1
        assert stats["bytes_up"] == len(BLOB)
        assert after == {"requests": 0, "bytes_up": 0, "bytes_down": 0, "errors": 0}
    finally:
        await proxy.stop()
        await upstream.cleanup()


def test_link_settings_parse():
    assert netproxy.parse_latency("20-50ms") == (0.02, 0.05)
    assert netproxy.parse_latency("0.1s") == (0.1, 0.1)
    assert netproxy.parse_bandwidth("100Mbit") == 12.5e6
    assert netproxy.parse_bandwidth("12.5MB") == 12.5e6
    with pytest.raises(Exception, match="reversed"):
        netproxy.parse_latency("50-20ms")
    with pytest.raises(Exception, match="bandwidth"):
        netproxy.parse_bandwidth("fast")


async def run_cas(*args: str, env: dict[str, str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cas_cli.main",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_cas_put_and_get_through_the_proxy_in_front_of_cas_serve(
    serve_process: ServeProcess, tmp_path: Path
):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "big").write_bytes(os.urandom(300_000))
    (src / "small").write_text("hello\n")
    proxy = netproxy.NetProxy(serve_process.url, netproxy.LinkSettings(0.02, 0.03, bandwidth=20e6))
    await proxy.start()
    try:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "CAS_TOKEN": TOKENS["write"],
            "CAS_CACHE_DIR": str(tmp_path / "cache-put"),
        }
        put = json.loads(await run_cas("put", "--json", "--store", proxy.url, str(src), env=env))
        sent = proxy.stats
        assert sent.requests >= 2 and sent.bytes_up >= 300_000
        env["CAS_CACHE_DIR"] = str(tmp_path / "cache-get")
        await run_cas(
            "get", "-q", "--store", proxy.url, put["manifest"], str(tmp_path / "out"), env=env
        )
        assert (tmp_path / "out" / "sub" / "big").read_bytes() == (src / "sub" / "big").read_bytes()
        assert (tmp_path / "out" / "small").read_text() == "hello\n"
        assert proxy.stats.bytes_down >= 300_000
        assert proxy.stats.errors == 0
    finally:
        await proxy.stop()
