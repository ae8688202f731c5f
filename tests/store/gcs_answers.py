"""A small real HTTP server on 127.0.0.1 that answers GCS JSON API calls as scripted.

The emulator cannot produce 403s, 5xx, rate limits, dropped connections or
real GCS error texts, so error-mapping tests aim `GcsStore` at this server
instead. It records every request so tests can check what the client sent.

The store's layout check (one `delimiter=/` listing on a store's first call)
is answered apart, from `layout_answer` (by default: a format 2 store with
its marker), and recorded in `layout_checks`, so the scripts and request
lists of other tests hold only the calls they are about.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def gcs_error(status: int, message: str, reason: str = "") -> tuple[int, bytes]:
    """An error body shaped like the real JSON API's."""
    body = {
        "error": {
            "code": status,
            "message": message,
            "errors": [{"message": message, "domain": "global", "reason": reason or "x"}],
        }
    }
    return status, json.dumps(body).encode()


def layout_listing(
    prefix: str = "p/", layout: str | None = "cas.gcs-store/2", prefixes: tuple[str, ...] = ()
) -> tuple[int, bytes]:
    """A top-level listing of a store: its marker (unless `layout` is None) and sub-prefixes."""
    page: dict = {"prefixes": list(prefixes)}
    if layout is not None:
        page["items"] = [{"name": f"{prefix}cas-store.json", "metadata": {"cas-layout": layout}}]
    return 200, json.dumps(page).encode()


def object_resource(name: str, size: int = 1) -> tuple[int, bytes]:
    resource = {
        "name": name,
        "size": str(size),
        "timeCreated": "2026-01-02T03:04:05.123Z",
        "updated": "2026-01-02T03:04:05.123Z",
    }
    return 200, json.dumps(resource).encode()


@dataclass
class Recorded:
    method: str
    path: str
    raw_path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class ScriptedGcs:
    """Answers requests from `script` in order (then `default`); `token` serves OAuth."""

    script: list[tuple[int, bytes] | Handler] = field(default_factory=list)
    default: tuple[int, bytes] = (200, b"{}")
    requests: list[Recorded] = field(default_factory=list)
    layout_answer: tuple[int, bytes] = field(default_factory=layout_listing)
    layout_checks: list[Recorded] = field(default_factory=list)
    token_requests: int = 0
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/token", self._token)
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _token(self, request: web.Request) -> web.Response:
        """An OAuth token endpoint: each call issues the next token, tok1, tok2, ..."""
        await request.read()
        self.token_requests += 1
        await asyncio.sleep(0.05)  # long enough for concurrent callers to pile up
        return web.json_response(
            {
                "access_token": f"tok{self.token_requests}",
                "expires_in": 3600,
                "token_type": "Bearer",
            }
        )

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        recorded = Recorded(
            request.method,
            request.path,
            request.raw_path,
            dict(request.query),
            dict(request.headers),
            await request.read(),
        )
        if request.method == "GET" and request.query.get("delimiter") == "/":
            self.layout_checks.append(recorded)
            status, body = self.layout_answer
            return web.Response(status=status, body=body, content_type="application/json")
        self.requests.append(recorded)
        answer = self.script.pop(0) if self.script else self.default
        if callable(answer):
            return await answer(request)
        status, body = answer
        if request.path == "/batch/storage/v1":
            return batch_of(status, body, self.requests[-1].body.count(b"Content-ID: <"))
        return web.Response(status=status, body=body, content_type="application/json")


def batch_of(status: int, body: bytes, count: int) -> web.Response:
    """A batch answer in which every inner call got `status` and `body`."""
    boundary = "batch_b0undary"
    parts = [
        f"--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <response-{i}>\r\n\r\n"
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\r\n".encode()
        + body
        + b"\r\n"
        for i in range(count)
    ]
    return web.Response(
        status=200,
        body=b"".join(parts) + f"--{boundary}--\r\n".encode(),
        headers={"Content-Type": f"multipart/mixed; boundary={boundary}"},
    )


async def drop_connection(request: web.Request) -> web.StreamResponse:
    """Close the socket without answering (a load balancer resetting the connection)."""
    assert request.transport is not None
    request.transport.close()
    return web.Response()


def stall(seconds: float) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.Response(status=200, body=b"{}")

    return handler


def unsized(body: bytes) -> Handler:
    """A chunked answer with no Content-Length, so only counting can bound it."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(body), 1000):
            await resp.write(body[i : i + 1000])
        await resp.write_eof()
        return resp

    return handler
