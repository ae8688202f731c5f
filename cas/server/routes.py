"""The handlers of the HTTP API (docs/http-api.md is the specification).

Every name in a URL is parsed strictly (kinds from `Kind`, ids as 64
lower-case hex, refs by `validate_ref_name`) before the store is touched,
so `..`, encoded slashes and other path tricks end as `400`. Uploads are
read with a size cap and verified (`cas.server.verify`) before the store
sees them; packs, the large ones, travel one per `PUT` and only a few are
buffered at once. A `GET` with `Range: bytes=FIRST-LAST` reads one pack
frame (or any slice) through the store's `get_range`. Listings stream
newline-delimited JSON and end with an `end` record, so a cut-off listing
is never taken for a complete one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web import RequestPayloadError

from cas import __version__
from cas.errors import CasError, ObjectNotFound, UsageError
from cas.httpapi import (
    ABSENT,
    API_PREFIX,
    END_KEY,
    FAILED,
    FAILURE_HEADER,
    JSON_LINES,
    MAX_BATCH_BODY,
    MAX_BATCH_OBJECTS,
    MAX_JSON_BODY,
    MAX_MISSING_IDS,
    MTIME_HEADER,
    OCTETS,
    RECORD_HEADER,
    SIZE_HEADER,
)
from cas.ids import ObjectId, is_id_prefix
from cas.server.context import (
    BYTES_IN,
    LIMITS,
    METRICS,
    PACK_SLOTS,
    STORE,
    UPLOAD_SLOTS,
    Refusal,
    error_body,
    required_scope,
)
from cas.server.metrics import CONTENT_TYPE
from cas.server.tokens import Scope
from cas.server.verify import verify_upload
from cas.store.base import Kind, validate_ref_name

_MAX_PREFIX = 64
_GET_WINDOW = 8  # objects fetched from the store at once for one batch get
_RANGE_SPEC = re.compile(r"\s*(\d{0,19})\s*-\s*(\d{0,19})\s*")
_KINDS = ", ".join(k.value for k in Kind)


# ---------------------------------------------------------------- parsing


def _kind(request: web.Request) -> Kind:
    text = request.match_info["kind"]
    try:
        return Kind(text)
    except ValueError:
        raise UsageError(f"unknown object kind {text[:40]!r}: expected one of {_KINDS}") from None


def _object_id(request: web.Request) -> ObjectId:
    return ObjectId.parse(request.match_info["object_id"])


def _ref_name(request: web.Request) -> str:
    return validate_ref_name(request.match_info["name"])


def _hex_prefix(request: web.Request) -> str:
    prefix = request.query.get("prefix", "")
    if len(prefix) > _MAX_PREFIX or not is_id_prefix(prefix):
        raise UsageError(f"list prefix must be at most 64 lower-case hex digits: {prefix[:80]!r}")
    return prefix


async def read_body(request: web.Request, limit: int, what: str) -> bytes:
    """The whole request body, refusing (413) anything past `limit` bytes without reading it all.

    The body must arrive within the grace period plus one second per
    `min_body_rate` bytes received (`Limits`), else `408`: the caller may
    hold an upload slot meanwhile, and a trickling client must not keep it.
    A client that goes away mid-body is `400`, not a server error.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        raise Refusal(413, "TooLarge", f"{what}: body of {declared} bytes exceeds {limit}")
    limits = request.app[LIMITS]
    started = asyncio.get_running_loop().time()
    body = bytearray()
    while True:
        deadline = started + limits.body_grace + len(body) / limits.min_body_rate
        try:
            async with asyncio.timeout_at(deadline):
                piece = await request.content.readany()
        except TimeoutError:
            raise Refusal(
                408,
                "RequestTimeout",
                f"{what}: body arrives too slowly ({len(body)} bytes in "
                f"{asyncio.get_running_loop().time() - started:.0f} s; after "
                f"{limits.body_grace:g} s at least {limits.min_body_rate} bytes/s)",
            ) from None
        except ConnectionResetError:
            raise UsageError(f"{what}: the client went away after {len(body)} bytes") from None
        except (RequestPayloadError, HttpProcessingError) as exc:
            # A Content-Encoding that does not decode, chunking broken mid-body.
            detail = getattr(exc, "message", None) or str(exc)
            raise UsageError(
                f"{what}: unreadable body ({' '.join(str(detail).split())[:200]})"
            ) from None
        if not piece:
            return bytes(body)
        body += piece
        request[BYTES_IN] = len(body)
        if len(body) > limit:
            raise Refusal(413, "TooLarge", f"{what}: body exceeds {limit} bytes")


async def _read_json(request: web.Request, what: str) -> Any:
    body = await read_body(request, MAX_JSON_BODY, what)
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise UsageError(f"{what}: body is not valid JSON") from None


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.json_response(obj, status=status)


# ---------------------------------------------------------------- service


async def health(request: web.Request) -> web.Response:
    """Answer 200 when the store answers; 503 (via StoreUnavailable) when it does not."""
    store = request.app[STORE]
    with contextlib.suppress(ObjectNotFound):
        await store.stat(Kind.MANIFEST, ObjectId(bytes(32)))
    return _json({"status": "ok", "version": __version__})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition text."""
    body = request.app[METRICS].render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


# ---------------------------------------------------------------- objects


@required_scope(Scope.READ)
async def missing(request: web.Request) -> web.Response:
    """Which of up to `MAX_MISSING_IDS` ids the store lacks, in one request."""
    kind = _kind(request)
    payload = await _read_json(request, "missing")
    ids = payload.get("ids") if isinstance(payload, dict) else None
    if not isinstance(ids, list):
        raise UsageError('missing: body must be {"ids": [HEX, ...]}')
    if len(ids) > MAX_MISSING_IDS:
        raise UsageError(f"missing: at most {MAX_MISSING_IDS} ids per request, got {len(ids)}")
    parsed = [ObjectId.parse(i) for i in ids]
    absent = await request.app[STORE].missing(kind, parsed)
    return _json({"missing": sorted(str(i) for i in absent)})


def byte_range(header: str, limit: int, what: str) -> tuple[int, int]:
    """(offset, length) of `Range: bytes=FIRST-LAST`, the one form served.

    Garbage is `400`; a well-formed range the server does not serve
    (several ranges, open-ended, suffix, or longer than any object of the
    kind) is `416`.
    """
    malformed = f"{what}: malformed Range header {header[:80]!r}: use bytes=FIRST-LAST"
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes":
        raise UsageError(malformed)
    if "," in spec:
        raise Refusal(416, "RangeNotSatisfiable", f"{what}: one range per request, not several")
    match = _RANGE_SPEC.fullmatch(spec)
    if match is None:
        raise UsageError(malformed)
    first, last = match.groups()
    if not first or not last:
        raise Refusal(
            416, "RangeNotSatisfiable", f"{what}: only bytes=FIRST-LAST ranges are served"
        )
    offset, end = int(first), int(last)
    if end < offset:
        raise UsageError(f"{what}: Range {header[:80]!r} ends before it starts")
    if end - offset + 1 > limit:
        raise Refusal(
            416, "RangeNotSatisfiable", f"{what}: range longer than the {limit}-byte limit"
        )
    return offset, end - offset + 1


@required_scope(Scope.READ)
async def get_object(request: web.Request) -> web.Response:
    """The stored bytes, as uploaded; or one byte range of them (206)."""
    kind, object_id = _kind(request), _object_id(request)
    limit = request.app[LIMITS].body(kind)
    header = request.headers.get("Range")
    if header is None:
        data = await request.app[STORE].get(kind, object_id, max_size=limit)
        return web.Response(body=data, content_type=OCTETS)
    offset, length = byte_range(header, limit, f"{kind} {object_id}")
    data = await request.app[STORE].get_range(kind, object_id, offset, length)
    return web.Response(
        status=206,
        body=data,
        content_type=OCTETS,
        headers={"Content-Range": f"bytes {offset}-{offset + length - 1}/*"},
    )


@required_scope(Scope.READ)
async def stat_object(request: web.Request) -> web.Response:
    """Size and creation time in headers, no body."""
    kind, object_id = _kind(request), _object_id(request)
    info = await request.app[STORE].stat(kind, object_id)
    return web.Response(headers={SIZE_HEADER: str(info.size), MTIME_HEADER: info.mtime.isoformat()})


@required_scope(Scope.WRITE)
async def put_object(request: web.Request) -> web.Response:
    """Create-only upload: 201 created, 200 already present; the body is verified first.

    A pack first waits for one of the few pack slots, so packs in memory
    (read, hashed, every frame inflated) stay few however many clients push.
    """
    kind, object_id = _kind(request), _object_id(request)
    limits = request.app[LIMITS]
    async with contextlib.AsyncExitStack() as slots:
        pack_slots: asyncio.Semaphore = request.app[PACK_SLOTS]
        upload_slots: asyncio.Semaphore = request.app[UPLOAD_SLOTS]
        if kind is Kind.PACK:
            await slots.enter_async_context(pack_slots)
        await slots.enter_async_context(upload_slots)
        body = await read_body(request, limits.body(kind), f"{kind} {object_id}")
        await asyncio.to_thread(verify_upload, kind, object_id, body, limits)
        created = await request.app[STORE].put_if_absent(kind, object_id, body)
    return web.Response(status=201 if created else 200)


@required_scope(Scope.WRITE)
async def put_batch(request: web.Request) -> web.Response:
    """Many create-only uploads in one request; all are verified before any is stored.

    Answers `{"created": [BOOL, ...]}` in the order of the records. One bad
    record refuses the whole batch (422 naming it), so nothing is half-done.
    """
    kind = _kind(request)
    if kind is Kind.PACK:
        raise UsageError(f"pack batch: packs travel one per request (PUT {API_PREFIX}/pack/ID)")
    limits = request.app[LIMITS]

    def verify_all(items: list[tuple[ObjectId, bytes]]) -> None:
        for object_id, data in items:
            verify_upload(kind, object_id, data, limits)

    async with request.app[UPLOAD_SLOTS]:
        body = await read_body(request, MAX_BATCH_BODY, f"{kind} batch")
        items = _parse_records(body, limits.body(kind), kind)
        del body
        await asyncio.to_thread(verify_all, items)
        created = await request.app[STORE].put_many(kind, items) if items else []
    return _json({"created": created})


def _parse_records(body: bytes, limit: int, kind: Kind) -> list[tuple[ObjectId, bytes]]:
    view = memoryview(body)
    items: list[tuple[ObjectId, bytes]] = []
    offset = 0
    while offset < len(view):
        if len(items) == MAX_BATCH_OBJECTS:
            raise UsageError(f"{kind} batch: more than {MAX_BATCH_OBJECTS} records")
        if offset + RECORD_HEADER.size > len(view):
            raise UsageError(f"{kind} batch: truncated record header at byte {offset}")
        raw_id, length = RECORD_HEADER.unpack_from(view, offset)
        offset += RECORD_HEADER.size
        object_id = ObjectId(raw_id)
        if length > limit:
            raise Refusal(413, "TooLarge", f"{kind} {object_id}: {length} bytes exceeds {limit}")
        if offset + length > len(view):
            raise UsageError(f"{kind} batch: record {object_id} is truncated")
        items.append((object_id, bytes(view[offset : offset + length])))
        offset += length
    return items


@required_scope(Scope.READ)
async def get_batch(request: web.Request) -> web.StreamResponse:
    """Many objects in one streamed answer, as records in the order asked.

    Body `{"ids": [HEX, ...], "max_size": N}`. An absent object is a record
    with length `ABSENT`; a store failure ends the stream with a `FAILED`
    record and a JSON error, so the client never takes a partial answer
    for a whole one.
    """
    kind = _kind(request)
    payload = await _read_json(request, f"{kind} batch get")
    ids = payload.get("ids") if isinstance(payload, dict) else None
    max_size = payload.get("max_size") if isinstance(payload, dict) else None
    if not isinstance(ids, list) or not isinstance(max_size, int) or max_size < 0:
        raise UsageError(f'{kind} batch get: body must be {{"ids": [HEX, ...], "max_size": N}}')
    if len(ids) > MAX_BATCH_OBJECTS:
        raise UsageError(f"{kind} batch get: at most {MAX_BATCH_OBJECTS} ids, got {len(ids)}")
    wanted = [ObjectId.parse(i) for i in ids]
    limit = min(max_size, request.app[LIMITS].body(kind))
    store = request.app[STORE]
    window = 1 if kind is Kind.PACK else _GET_WINDOW  # whole packs are big: one at a time

    async def fetch(object_id: ObjectId) -> bytes | None:
        try:
            return await store.get(kind, object_id, max_size=limit)
        except ObjectNotFound:
            return None

    response = web.StreamResponse(headers={"Content-Type": OCTETS})
    await response.prepare(request)
    try:
        for start in range(0, len(wanted), window):
            group = wanted[start : start + window]
            for object_id, data in zip(
                group, await asyncio.gather(*(fetch(i) for i in group)), strict=True
            ):
                if data is None:
                    await response.write(RECORD_HEADER.pack(object_id, ABSENT))
                else:
                    await response.write(RECORD_HEADER.pack(object_id, len(data)) + data)
    except CasError as exc:
        error = json.dumps(error_body(exc)).encode()
        await response.write(
            RECORD_HEADER.pack(bytes(32), FAILED) + FAILURE_HEADER.pack(len(error)) + error
        )
    await response.write_eof()
    return response


@required_scope(Scope.ADMIN)
async def delete_object(request: web.Request) -> web.Response:
    """Idempotent delete."""
    kind, object_id = _kind(request), _object_id(request)
    await request.app[STORE].delete(kind, object_id)
    return web.Response(status=204)


@required_scope(Scope.READ)
async def list_objects(request: web.Request) -> web.StreamResponse:
    """Every complete object of a kind (optionally under a hex prefix), as JSON lines."""
    kind, prefix = _kind(request), _hex_prefix(request)

    async def records() -> AsyncIterator[dict[str, Any]]:
        async for info in request.app[STORE].list(kind, prefix):
            yield {"id": str(info.id), "size": info.size, "mtime": info.mtime.isoformat()}

    return await _stream(request, records())


# ---------------------------------------------------------------- refs


@required_scope(Scope.READ)
async def list_refs(request: web.Request) -> web.StreamResponse:
    """Refs under a name prefix, as JSON lines."""
    prefix = request.query.get("prefix", "")

    async def records() -> AsyncIterator[dict[str, Any]]:
        async for ref in request.app[STORE].list_refs(prefix):
            yield {"name": ref.name, "target": str(ref.target), "mtime": ref.mtime.isoformat()}

    return await _stream(request, records())


@required_scope(Scope.READ)
async def read_ref(request: web.Request) -> web.Response:
    """The ref's target id."""
    name = _ref_name(request)
    target = await request.app[STORE].read_ref(name)
    return _json({"name": name, "target": str(target)})


@required_scope(Scope.WRITE)
async def create_ref(request: web.Request) -> web.Response:
    """Create-only: 201, or 409 if the name is taken (whatever its target)."""
    name = _ref_name(request)
    payload = await _read_json(request, f"ref {name}")
    target = payload.get("target") if isinstance(payload, dict) else None
    if not isinstance(target, str):
        raise UsageError(f'ref {name}: body must be {{"target": HEX}}')
    await request.app[STORE].create_ref(name, ObjectId.parse(target))
    return web.Response(status=201)


@required_scope(Scope.ADMIN)
async def delete_ref(request: web.Request) -> web.Response:
    """Idempotent delete."""
    await request.app[STORE].delete_ref(_ref_name(request))
    return web.Response(status=204)


# ---------------------------------------------------------------- streaming


async def _stream(
    request: web.Request, records: AsyncIterator[dict[str, Any]]
) -> web.StreamResponse:
    """Send records as JSON lines, then an `end` record with the count.

    The status is sent before the store is read, so a failure half-way is
    reported as a final `error` record instead; the client raises it.
    """
    response = web.StreamResponse(headers={"Content-Type": JSON_LINES})
    await response.prepare(request)
    count = 0
    batch: list[bytes] = []
    try:
        async for record in records:
            batch.append(json.dumps(record).encode() + b"\n")
            count += 1
            if len(batch) >= 256:
                await response.write(b"".join(batch))
                batch.clear()
        batch.append(json.dumps({END_KEY: True, "count": count}).encode() + b"\n")
    except CasError as exc:
        batch.append(json.dumps(error_body(exc)).encode() + b"\n")
    await response.write(b"".join(batch))
    await response.write_eof()
    return response


def add_routes(app: web.Application) -> None:
    """The URL map; refs come first so `refs` is never read as an object kind."""
    p = API_PREFIX
    app.router.add_get(f"{p}/health", health, allow_head=False)
    app.router.add_get("/metrics", metrics, allow_head=False)
    app.router.add_get(f"{p}/refs", list_refs, allow_head=False)
    app.router.add_get(f"{p}/refs/{{name:.+}}", read_ref, allow_head=False)
    app.router.add_put(f"{p}/refs/{{name:.+}}", create_ref)
    app.router.add_delete(f"{p}/refs/{{name:.+}}", delete_ref)
    app.router.add_post(f"{p}/{{kind}}/missing", missing)
    app.router.add_post(f"{p}/{{kind}}/put", put_batch)
    app.router.add_post(f"{p}/{{kind}}/get", get_batch)
    app.router.add_get(f"{p}/{{kind}}", list_objects, allow_head=False)
    app.router.add_get(f"{p}/{{kind}}/{{object_id}}", get_object, allow_head=False)
    app.router.add_head(f"{p}/{{kind}}/{{object_id}}", stat_object)
    app.router.add_put(f"{p}/{{kind}}/{{object_id}}", put_object)
    app.router.add_delete(f"{p}/{{kind}}/{{object_id}}", delete_object)
