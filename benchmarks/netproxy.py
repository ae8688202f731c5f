"""A delaying HTTP proxy: a cloud-like link (latency per request, a bandwidth cap) on loopback.

    python benchmarks/netproxy.py --upstream http://127.0.0.1:8750 \
        --latency 20-50ms --bandwidth 100Mbit --listen 127.0.0.1:0

prints its URL as the first line on stdout, then serves until SIGINT/SIGTERM.

It sits in front of any HTTP store endpoint (`cas serve`, a GCS emulator) and
forwards every request unchanged after waiting the request's latency (drawn
uniformly from the range, from a seed, so runs are repeatable). Bodies in
both directions pass through one token bucket per direction shared by all
connections, like an access link: many parallel requests share the cap,
they do not each get it. It counts requests and bytes per direction;
`GET /__netproxy__/stats` returns them as JSON (and `POST` to it also resets
them), never forwarded upstream.

The latency stands for a whole round trip (request out, first byte back);
connection set-up is not delayed separately, as clients keep connections
alive. Redirects and compressed bodies are passed through as they are.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass

import aiohttp
from aiohttp import web

STATS_PATH = "/__netproxy__/stats"
PIECE = 64 * 1024
# Headers that describe one hop, not the message (RFC 9110 7.6.1), plus those aiohttp sets.
HOP_HEADERS = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
    )
)


class TokenBucket:
    """Lets `rate` bytes per second through, shared first come first served by all callers.

    Each call reserves its bytes at the end of the queue ("virtual finish time")
    and sleeps until its reservation is due; `burst` bytes may pass at once
    after an idle period, like a link's buffer.
    """

    def __init__(self, rate: float, burst: int = PIECE) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst_seconds = burst / rate
        self._due = 0.0

    async def take(self, n: int) -> None:
        now = time.monotonic()
        self._due = max(self._due, now - self.burst_seconds) + n / self.rate
        delay = self._due - now
        if delay > 0:
            await asyncio.sleep(delay)


@dataclass
class Stats:
    """What crossed the link since the last reset."""

    requests: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    errors: int = 0


@dataclass
class LinkSettings:
    """The simulated link: latency range in seconds and the cap in bytes per second."""

    latency_min: float = 0.02
    latency_max: float = 0.05
    bandwidth: float | None = None  # bytes/s each way; None: no cap
    seed: int = 1


class NetProxy:
    """The proxy application; `start()` binds it, `url` is where clients go."""

    def __init__(self, upstream: str, link: LinkSettings) -> None:
        self.upstream = upstream.rstrip("/")
        self.link = link
        self.stats = Stats()
        self._random = random.Random(link.seed)
        rate = link.bandwidth
        self._up = TokenBucket(rate) if rate else None
        self._down = TokenBucket(rate) if rate else None
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application(client_max_size=0)
        app.router.add_route("*", STATS_PATH, self._stats)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sockets = site._server.sockets if site._server else []  # the bound port when port=0
        bound = sockets[0].getsockname()[1] if sockets else port
        self.url = f"http://{host}:{bound}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _stats(self, request: web.Request) -> web.Response:
        body = asdict(self.stats)
        if request.method == "POST":
            self.stats = Stats()
        return web.json_response(body)

    def _latency(self) -> float:
        return self._random.uniform(self.link.latency_min, self.link.latency_max)

    async def _body_up(self, request: web.Request) -> AsyncIterator[bytes]:
        async for piece in request.content.iter_chunked(PIECE):
            if self._up is not None:
                await self._up.take(len(piece))
            self.stats.bytes_up += len(piece)
            yield piece

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        self.stats.requests += 1
        await asyncio.sleep(self._latency())
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        has_body = request.body_exists
        if has_body and request.content_length is not None:
            headers["Content-Length"] = str(request.content_length)
        try:
            upstream = await self._session.request(
                request.method,
                self.upstream + request.rel_url.raw_path_qs,
                headers=headers,
                data=self._body_up(request) if has_body else None,
                allow_redirects=False,
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            self.stats.errors += 1
            return web.Response(status=502, text=f"netproxy: upstream failed: {exc}\n")
        # past this point a failure drops the client's connection, as a real link would
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in HOP_HEADERS:
                    response.headers.add(key, value)
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            async for piece in upstream.content.iter_chunked(PIECE):
                if self._down is not None:
                    await self._down.take(len(piece))
                self.stats.bytes_down += len(piece)
                await response.write(piece)
            await response.write_eof()
            return response


_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}


def parse_bandwidth(text: str) -> float:
    """'100Mbit', '12.5MB', '800kbit' -> bytes per second (decimal units, per second)."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kmgKMG]?)(bit|b|B)?(/s|ps)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"bandwidth {text!r}: use e.g. 100Mbit or 12.5MB")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    unit = m.group(3) or "B"
    return value / 8 if unit in ("bit", "b") else value


def parse_latency(text: str) -> tuple[float, float]:
    """'20-50ms', '30ms', '0.02-0.05s' -> (min, max) seconds."""
    m = re.fullmatch(r"\s*([0-9.]+)(?:\s*-\s*([0-9.]+))?\s*(ms|s)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"latency {text!r}: use e.g. 20-50ms or 30ms")
    scale = 1.0 if m.group(3) == "s" else 1e-3
    lo = float(m.group(1)) * scale
    hi = float(m.group(2)) * scale if m.group(2) else lo
    if hi < lo:
        raise argparse.ArgumentTypeError(f"latency {text!r}: the range is reversed")
    return lo, hi


async def serve(upstream: str, link: LinkSettings, host: str, port: int) -> None:
    proxy = NetProxy(upstream, link)
    url = await proxy.start(host, port)
    print(url, flush=True)  # the first line on stdout, for scripts that start the proxy
    print(f"netproxy: {upstream} on {url}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await proxy.stop()
    print(f"netproxy: {json.dumps(asdict(proxy.stats))}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upstream", required=True, help="base URL of the real endpoint")
    ap.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any free one)")
    ap.add_argument("--latency", type=parse_latency, default=(0.02, 0.05), help="e.g. 20-50ms")
    ap.add_argument(
        "--bandwidth", type=parse_bandwidth, default=None, help="cap each way, e.g. 100Mbit"
    )
    ap.add_argument("--seed", type=int, default=1, help="seed of the latency draws")
    args = ap.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    link = LinkSettings(*args.latency, bandwidth=args.bandwidth, seed=args.seed)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.upstream, link, host or "127.0.0.1", int(port)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
