"""The http store against a server that misbehaves on purpose.

`cas serve` itself never sends these answers; proxies, overloaded hosts and
broken networks do. A small aiohttp server on 127.0.0.1 plays them, and the
client must turn each into the right typed error, never into wrong data.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from cas.errors import (
    AlreadyExists,
    CasError,
    IntegrityError,
    ObjectNotFound,
    PermissionDenied,
    StoreUnavailable,
)
from cas.httpapi import RECORD_HEADER
from cas.ids import hash_bytes
from cas.store.base import Kind
from cas.store.http import HttpStore
from cas.store.limited import LimitedStore
from cas.store.retrying import RetryingStore, RetryPolicy

OID = hash_bytes(b"x")


@pytest.fixture
async def hostile():
    """Start an app built by the test; yield a factory giving an HttpStore for it."""
    runners, stores = [], []

    async def start(routes: web.RouteTableDef, **store_options) -> HttpStore:
        app = web.Application()
        app.add_routes(routes)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        store = HttpStore(f"http://{host}:{port}", "token-0123456789abcdef", **store_options)
        stores.append(store)
        return store

    yield start
    for store in stores:
        await store.aclose()
    for runner in runners:
        await runner.cleanup()


def answering(status: int, body: dict | None = None) -> web.RouteTableDef:
    routes = web.RouteTableDef()

    @routes.route("*", "/{tail:.*}")
    async def any_request(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(body or {"error": "X", "message": "from the test"}, status=status)

    return routes


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
async def test_transient_statuses_are_store_unavailable(hostile, status):
    store = await hostile(answering(status))
    with pytest.raises(StoreUnavailable, match=f"HTTP {status}"):
        await store.get(Kind.CHUNK, OID, max_size=10)
    with pytest.raises(StoreUnavailable):
        await store.put_if_absent(Kind.CHUNK, OID, b"x")


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, PermissionDenied), (403, PermissionDenied), (404, ObjectNotFound), (409, AlreadyExists)],
)
async def test_permanent_statuses_are_typed(hostile, status, error):
    store = await hostile(answering(status))
    with pytest.raises(error, match=r"127\.0\.0\.1"):
        await store.create_ref("ci/1", OID)


async def test_forbidden_names_the_scope_needed(hostile):
    store = await hostile(answering(401))
    with pytest.raises(
        PermissionDenied, match="CAS_TOKEN is not accepted; a token with the 'admin'"
    ):
        await store.delete(Kind.CHUNK, OID)


async def test_transient_failures_are_retried_by_the_remote_layers(hostile):
    calls = 0
    routes = web.RouteTableDef()

    @routes.head("/v1/chunk/{object_id}")
    async def flaky(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls < 3:
            return web.Response(status=503)
        return web.Response(
            headers={"Cas-Object-Size": "7", "Cas-Object-Mtime": "2026-01-01T00:00:00+00:00"}
        )

    store = await hostile(routes)
    layered = RetryingStore(LimitedStore(store), RetryPolicy(initial=0.01, maximum=0.05))
    assert (await layered.stat(Kind.CHUNK, OID)).size == 7
    assert calls == 3


async def test_a_listing_without_its_end_record_is_not_complete(hostile):
    routes = web.RouteTableDef()
    record = {"id": str(OID), "size": 1, "mtime": "2026-01-01T00:00:00+00:00"}

    @routes.get("/v1/chunk")
    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(json.dumps(record).encode() + b"\n")
        return response

    @routes.get("/v1/tree")
    async def failed(request: web.Request) -> web.StreamResponse:
        lines = [json.dumps(record), json.dumps({"error": "PermissionDenied", "message": "no"})]
        return web.Response(body="\n".join(lines) + "\n")

    store = await hostile(routes)
    seen = []
    with pytest.raises(StoreUnavailable, match="cut off"):
        async for info in store.list(Kind.CHUNK):
            seen.append(info.id)
    assert seen == [OID]
    with pytest.raises(PermissionDenied):
        _ = [info async for info in store.list(Kind.TREE)]


async def test_a_body_cut_short_is_store_unavailable(hostile):
    routes = web.RouteTableDef()

    @routes.get("/v1/chunk/{object_id}")
    async def short(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"only part of it")
        request.transport.close()
        return response

    store = await hostile(routes)
    with pytest.raises(StoreUnavailable):
        await store.get(Kind.CHUNK, OID, max_size=10_000)


async def test_an_answer_larger_than_max_size_is_refused_before_reading(hostile):
    routes = web.RouteTableDef()

    @routes.get("/v1/chunk/{object_id}")
    async def big(request: web.Request) -> web.Response:
        return web.Response(body=bytes(5000))

    store = await hostile(routes)
    with pytest.raises(IntegrityError, match="exceeds 100"):
        await store.get(Kind.CHUNK, OID, max_size=100)


async def test_batch_answers_out_of_order_or_cut_off_are_refused(hostile):
    other = hash_bytes(b"y")
    routes = web.RouteTableDef()

    @routes.post("/v1/chunk/get")
    async def swapped(request: web.Request) -> web.Response:
        return web.Response(body=RECORD_HEADER.pack(other, 1) + b"y")

    @routes.post("/v1/tree/get")
    async def cut(request: web.Request) -> web.Response:
        return web.Response(body=RECORD_HEADER.pack(OID, 10) + b"abc")

    store = await hostile(routes)
    with pytest.raises(StoreUnavailable, match="out of order"):
        await store.get_many(Kind.CHUNK, [OID], max_size=100)
    with pytest.raises(StoreUnavailable, match="cut off"):
        await store.get_many(Kind.TREE, [OID], max_size=100)


async def test_a_server_that_stops_answering_times_out(hostile):
    routes = web.RouteTableDef()

    @routes.post("/v1/chunk/missing")
    async def stall(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.json_response({"missing": []})

    store = await hostile(routes, read_timeout=0.3)
    with pytest.raises(StoreUnavailable):
        await store.missing(Kind.CHUNK, [OID])


async def test_a_missing_answer_naming_ids_not_asked_is_refused(hostile):
    routes = web.RouteTableDef()

    @routes.post("/v1/chunk/missing")
    async def invent(request: web.Request) -> web.Response:
        return web.json_response({"missing": [str(hash_bytes(b"never asked"))]})

    store = await hostile(routes)
    with pytest.raises(StoreUnavailable, match="not asked"):
        await store.missing(Kind.CHUNK, [OID])


async def test_redirects_are_not_followed_so_the_token_stays_with_the_server(hostile):
    stolen = []
    routes = web.RouteTableDef()

    @routes.get("/v1/refs/{name:.+}")
    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/elsewhere")

    @routes.get("/elsewhere")
    async def elsewhere(request: web.Request) -> web.Response:
        stolen.append(request.headers.get("Authorization"))
        return web.json_response({"target": str(OID)})

    store = await hostile(routes)
    with pytest.raises(CasError, match="unexpected HTTP 307"):
        await store.read_ref("ci/1")
    assert stolen == []
