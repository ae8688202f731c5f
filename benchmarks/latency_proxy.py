"""An HTTP proxy on loopback that holds every request for a fixed time before forwarding it.

    python benchmarks/latency_proxy.py --upstream http://127.0.0.1:PORT --latency-ms 30

Prints its own URL on stdout once listening. Put in front of the GCS
emulator it makes each request cost what a round trip to a cloud bucket
costs, so the number of requests in flight and per call decides speed as
it does in production. The proxy itself is a Python process: beyond ~2000
requests/s its own CPU becomes a second limit.
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
from aiohttp import web

_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}


async def serve(upstream: str, latency: float) -> None:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        await asyncio.sleep(latency)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        async with session.request(
            request.method, upstream + request.raw_path, data=body, headers=headers
        ) as resp:
            payload = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP_HEADERS}
            return web.Response(status=resp.status, body=payload, headers=out)

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print(f"http://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--latency-ms", type=float, default=30.0)
    args = parser.parse_args()
    asyncio.run(serve(args.upstream.rstrip("/"), args.latency_ms / 1000))


if __name__ == "__main__":
    main()
