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
    UsageError,
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
        await store.get(Kind.PACK, OID, max_size=10)
    with pytest.raises(StoreUnavailable):
        await store.put_if_absent(Kind.PACK, OID, b"x")


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
        await store.delete(Kind.PACK, OID)


async def test_transient_failures_are_retried_by_the_remote_layers(hostile):
    calls = 0
    routes = web.RouteTableDef()

    @routes.head("/v1/pack/{object_id}")
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
    assert (await layered.stat(Kind.PACK, OID)).size == 7
    assert calls == 3


async def test_a_listing_without_its_end_record_is_not_complete(hostile):
    routes = web.RouteTableDef()
    record = {"id": str(OID), "size": 1, "mtime": "2026-01-01T00:00:00+00:00"}

    @routes.get("/v1/pack")
    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(json.dumps(record).encode() + b"\n")
        return response

    @routes.get("/v1/index")
    async def failed(request: web.Request) -> web.StreamResponse:
        lines = [json.dumps(record), json.dumps({"error": "PermissionDenied", "message": "no"})]
        return web.Response(body="\n".join(lines) + "\n")

    store = await hostile(routes)
    seen = []
    with pytest.raises(StoreUnavailable, match="cut off"):
        async for info in store.list(Kind.PACK):
            seen.append(info.id)
    assert seen == [OID]
    with pytest.raises(PermissionDenied):
        _ = [info async for info in store.list(Kind.INDEX)]


async def test_a_body_cut_short_is_store_unavailable(hostile):
    routes = web.RouteTableDef()

    @routes.get("/v1/pack/{object_id}")
    async def short(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"only part of it")
        request.transport.close()
        return response

    store = await hostile(routes)
    with pytest.raises(StoreUnavailable):
        await store.get(Kind.PACK, OID, max_size=10_000)


async def test_an_answer_larger_than_max_size_is_refused_before_reading(hostile):
    routes = web.RouteTableDef()

    @routes.get("/v1/pack/{object_id}")
    async def big(request: web.Request) -> web.Response:
        return web.Response(body=bytes(5000))

    store = await hostile(routes)
    with pytest.raises(IntegrityError, match="exceeds 100"):
        await store.get(Kind.PACK, OID, max_size=100)


async def test_batch_answers_out_of_order_or_cut_off_are_refused(hostile):
    other = hash_bytes(b"y")
    routes = web.RouteTableDef()

    @routes.post("/v1/pack/get")
    async def swapped(request: web.Request) -> web.Response:
        return web.Response(body=RECORD_HEADER.pack(other, 1) + b"y")

    @routes.post("/v1/index/get")
    async def cut(request: web.Request) -> web.Response:
        return web.Response(body=RECORD_HEADER.pack(OID, 10) + b"abc")

    store = await hostile(routes)
    with pytest.raises(StoreUnavailable, match="out of order"):
        await store.get_many(Kind.PACK, [OID], max_size=100)
    with pytest.raises(StoreUnavailable, match="cut off"):
        await store.get_many(Kind.INDEX, [OID], max_size=100)


async def test_a_server_that_stops_answering_times_out(hostile):
    routes = web.RouteTableDef()

    @routes.post("/v1/pack/missing")
    async def stall(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.json_response({"missing": []})

    store = await hostile(routes, read_timeout=0.3)
    with pytest.raises(StoreUnavailable):
        await store.missing(Kind.PACK, [OID])


async def test_a_missing_answer_naming_ids_not_asked_is_refused(hostile):
    routes = web.RouteTableDef()

    @routes.post("/v1/pack/missing")
    async def invent(request: web.Request) -> web.Response:
        return web.json_response({"missing": [str(hash_bytes(b"never asked"))]})

    store = await hostile(routes)
    with pytest.raises(StoreUnavailable, match="not asked"):
        await store.missing(Kind.PACK, [OID])


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


def ranged(status: int, body: bytes, content_range: str | None) -> web.RouteTableDef:
    routes = web.RouteTableDef()

    @routes.get("/v1/pack/{object_id}")
    async def answer(request: web.Request) -> web.Response:
        headers = {"Content-Range": content_range} if content_range else {}
        return web.Response(status=status, body=body, headers=headers)

    return routes


async def test_a_range_read_sends_one_range_and_takes_exactly_it(hostile):
    seen = []
    routes = web.RouteTableDef()

    @routes.get("/v1/pack/{object_id}")
    async def answer(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Range"))
        return web.Response(status=206, body=b"2345", headers={"Content-Range": "bytes 2-5/*"})

    store = await hostile(routes)
    assert await store.get_range(Kind.PACK, OID, 2, 4) == b"2345"
    assert seen == ["bytes=2-5"]


@pytest.mark.parametrize(
    ("answer", "error", "text"),
    [
        ((200, b"0123456789", None), CasError, "ignored the Range header"),
        ((206, b"3456", "bytes 3-6/10"), StoreUnavailable, "another range"),
        ((206, b"2345", None), StoreUnavailable, "another range"),
        ((206, b"23456", "bytes 2-5/10"), StoreUnavailable, "wrong length"),
        ((206, b"23", "bytes 2-5/10"), StoreUnavailable, "wrong length"),
        ((416, b'{"error": "RangeNotSatisfiable", "message": "no"}', None), UsageError, "no"),
    ],
)
async def test_range_answers_other_than_the_range_asked_are_refused(hostile, answer, error, text):
    store = await hostile(ranged(*answer))
    with pytest.raises(error, match=text):
        await store.get_range(Kind.PACK, OID, 2, 4)


async def test_a_range_past_the_end_reported_by_the_server_is_an_integrity_error(hostile):
    record = {
        "error": "IntegrityError",
        "message": "pack is corrupt",
        "kind": "pack",
        "id": str(OID),
        "detail": "bytes 2-5 asked, but it is only 3 bytes long",
    }
    store = await hostile(answering(422, record))
    with pytest.raises(IntegrityError, match="only 3 bytes long") as raised:
        await store.get_range(Kind.PACK, OID, 2, 4)
    assert (raised.value.kind, raised.value.object_id) == ("pack", str(OID))


async def test_packs_are_put_one_request_each_a_few_at_a_time(hostile):
    in_flight = peak = 0
    paths = []
    routes = web.RouteTableDef()

    @routes.route("*", "/v1/{tail:.*}")
    async def put(request: web.Request) -> web.Response:
        nonlocal in_flight, peak
        paths.append((request.method, request.path, len(await request.read())))
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return web.Response(status=201)

    store = await hostile(routes)
    packs = [(hash_bytes(b"%d" % i), b"p" * (i + 1)) for i in range(10)]
    assert await store.put_many(Kind.PACK, packs) == [True] * 10
    assert sorted(paths) == sorted(("PUT", f"/v1/pack/{i}", len(d)) for i, d in packs)
    assert peak == 4


async def test_an_unknown_error_name_fails_once_and_clearly(hostile):
    """A bug or a newer server: not retried as if the store were busy."""
    calls = 0
    routes = web.RouteTableDef()

    @routes.route("*", "/{tail:.*}")
    async def any_request(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        await request.read()
        record = {"error": "QuotaExceededV9", "message": "a newer server's error"}
        return web.json_response(record, status=422)

    store = RetryingStore(await hostile(routes), RetryPolicy(attempts=4, initial=0.01))
    with pytest.raises(CasError, match=r"does not know .*QuotaExceededV9") as raised:
        await store.put_if_absent(Kind.PACK, OID, b"x")
    assert not isinstance(raised.value, StoreUnavailable)
    assert calls == 1
