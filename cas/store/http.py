"""A store served by `cas serve` over HTTP(S): `--store http://HOST:PORT`.

The client side of docs/http-api.md. One pooled `aiohttp` session per
event loop carries every call; `missing` is one request per up to
`MAX_MISSING_IDS` ids. Failures are typed once, in `_translate_status` and
`_transport_error`:

- 408, 429, 5xx, timeouts and dropped connections -> `StoreUnavailable` (the
  `RetryingStore` around this backend retries those);
- 401 / 403 -> `PermissionDenied` naming the server and the scope needed;
- 404 -> `ObjectNotFound`; 409 / 412 -> `AlreadyExists` (refs);
- 400 / 413 / 416 -> `UsageError`; 422 -> `IntegrityError` (also for a
  range past an object's end);
- an untrusted TLS certificate -> `UsageError` (fix the CA bundle, do not retry).

`get_range` sends `Range: bytes=FIRST-LAST` and accepts only a 206 with
exactly that range. Packs are uploaded one `PUT` each (the batch endpoint
refuses them), a few at a time.

The server verifies uploads, but reads are still verified by the
`Repository` like those of every other backend. Listings must end with the
server's `end` record; one cut short raises instead of looking complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from datetime import datetime
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import aiohttp

from cas.aiotools import gather_or_cancel
from cas.errors import (
    AlreadyExists,
    CasError,
    IntegrityError,
    ObjectNotFound,
    PermissionDenied,
    StoreUnavailable,
    UsageError,
)
from cas.httpapi import (
    ABSENT,
    API_PREFIX,
    END_KEY,
    ERROR_KEY,
    FAILED,
    FAILURE_HEADER,
    MAX_BATCH_BODY,
    MAX_BATCH_OBJECTS,
    MAX_MISSING_IDS,
    MTIME_HEADER,
    OCTETS,
    RECORD_HEADER,
    SIZE_HEADER,
)
from cas.ids import ObjectId, is_object_id
from cas.store.base import (
    Capabilities,
    Kind,
    ObjectInfo,
    RefInfo,
    Store,
    check_id,
    check_range,
    validate_ref_name,
)

T = TypeVar("T")

DEFAULT_CONCURRENCY: Final = 32
_CONNECT_TIMEOUT: Final = 10.0
_READ_TIMEOUT: Final = 120.0
_MAX_LIST_LINE: Final = 1 << 16
_MAX_ERROR_BODY: Final = 1 << 16
_PACK_UPLOADS: Final = 4
"""Pack PUTs in flight from one `put_many`: the server verifies a few at a time anyway."""
_CONTENT_RANGE: Final = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")

# Server-side error classes a client re-raises as the same typed error.
_NAMED_ERRORS: Final[dict[str, type[CasError]]] = {
    cls.__name__: cls
    for cls in (UsageError, ObjectNotFound, AlreadyExists, PermissionDenied, StoreUnavailable)
}


def parse_http_url(url: str) -> str:
    """The base URL (`scheme://host[:port][/path]`, no trailing slash), or `UsageError`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"store URL must be http(s)://HOST[:PORT][/PATH], got {url!r}")
    if parts.username or parts.password:
        raise UsageError(f"put the token in CAS_TOKEN, not in the store URL {parts.hostname!r}")
    if parts.query or parts.fragment:
        raise UsageError(f"store URL may not have a query or fragment: {url!r}")
    try:
        parts.port  # noqa: B018 (validates the port)
    except ValueError:
        raise UsageError(f"store URL has an invalid port: {url!r}") from None
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


class HttpStore(Store):
    """A `Store` that calls a `cas serve` server."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        max_concurrency: int = DEFAULT_CONCURRENCY,
        read_timeout: float = _READ_TIMEOUT,
    ) -> None:
        self.url = parse_http_url(url)
        self._api = self.url + API_PREFIX
        self._token = token or None
        self._read_timeout = read_timeout
        self._max_concurrency = max_concurrency
        self.capabilities = Capabilities(
            max_concurrency=max_concurrency, atomic_create=True, native_missing=True
        )
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}

    def opener(self) -> Callable[[], Store]:
        """The same server and token, for put's worker processes."""
        return functools.partial(
            HttpStore,
            self.url,
            self._token,
            max_concurrency=self._max_concurrency,
            read_timeout=self._read_timeout,
        )

    # ------------------------------------------------------------ transport

    def _session(self) -> aiohttp.ClientSession:
        """The pooled session of the running loop (sessions cannot cross loops)."""
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            self._sessions = {k: v for k, v in self._sessions.items() if not k.is_closed()}
            headers = {"User-Agent": "cas"}
            if self._token:
                headers["Authorization"] = f"Bearer {self._token}"
            session = aiohttp.ClientSession(
                headers=headers,
                connector=aiohttp.TCPConnector(limit=self._max_concurrency),
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=_CONNECT_TIMEOUT, sock_read=self._read_timeout
                ),
                raise_for_status=False,
            )
            self._sessions[loop] = session
        return session

    @contextlib.asynccontextmanager
    async def _response(
        self,
        method: str,
        path: str,
        what: str,
        scope: str,
        *,
        ok: Collection[int] = (200,),
        **kwargs: Any,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """An answer with an `ok` status; others, and transport failures, become typed errors.

        Failures while the caller reads the body are translated too.
        """
        kwargs.setdefault("allow_redirects", False)  # the token goes to this server only
        try:
            async with self._session().request(method, self._api + path, **kwargs) as response:
                if response.status not in ok:
                    body = await response.content.read(_MAX_ERROR_BODY)
                    raise self._translate_status(response.status, body, what, scope)
                yield response
        except CasError:
            raise
        except aiohttp.ClientConnectorCertificateError as exc:
            raise UsageError(
                f"{what} on {self.url}: the server's TLS certificate is not trusted "
                f"({exc.certificate_error}); set SSL_CERT_FILE to its CA bundle"
            ) from None
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            raise self._transport_error(exc, what) from None

    async def _call(
        self,
        method: str,
        path: str,
        what: str,
        scope: str,
        *,
        ok: Collection[int] = (200,),
        **kwargs: Any,
    ) -> tuple[int, bytes, dict[str, str]]:
        """One request, its answer read whole."""
        async with self._response(method, path, what, scope, ok=ok, **kwargs) as response:
            return response.status, await response.read(), dict(response.headers)

    def _transport_error(self, exc: BaseException, what: str) -> StoreUnavailable:
        if isinstance(exc, aiohttp.ClientConnectorError):
            # Nothing answered: say so in the user's terms, not the socket library's.
            return StoreUnavailable(
                f"{what}: cannot reach cas serve at {self.url} ({exc.os_error.strerror or exc}); "
                "is it running?"
            )
        detail = str(exc) or type(exc).__name__
        return StoreUnavailable(f"{what} on {self.url}: {detail}")

    def _translate_status(self, status: int, body: bytes, what: str, scope: str) -> CasError:
        """Map an HTTP answer onto `cas.errors`, keeping the server's one-line reason."""
        reason = _server_reason(body)
        on = f"{what} on {self.url}"
        if status == 401:
            token = "CAS_TOKEN is not accepted" if self._token else "CAS_TOKEN is not set"
            return PermissionDenied(
                f"{on}: {token}; a token with the '{scope}' scope is needed"
                + (f" ({reason})" if reason else "")
            )
        if status == 403:
            return PermissionDenied(f"{on}: {reason or f'needs the {scope!r} scope'}")
        if status == 404:
            return ObjectNotFound.named(what, f"{what} not found on {self.url}")
        if status in (409, 412):
            return AlreadyExists(f"{what} already exists on {self.url}")
        if status in (400, 413, 416):
            return UsageError(f"{on}: {reason or f'HTTP {status}'}")
        if status == 422:
            return _error_from_record(_json_object(body), on)
        if status in (408, 429) or status >= 500:
            return StoreUnavailable(f"{on}: HTTP {status}" + (f" ({reason})" if reason else ""))
        return CasError(f"{on}: unexpected HTTP {status}" + (f" ({reason})" if reason else ""))

    # ------------------------------------------------------------ objects

    async def put_if_absent(self, kind: Kind, object_id: ObjectId, data: bytes) -> bool:
        """PUT: 201 created, 200 already present."""
        check_id(object_id)
        status, _, _ = await self._call(
            "PUT",
            f"/{Kind(kind).value}/{object_id}",
            f"{kind} {object_id}",
            "write",
            ok=(200, 201),
            data=data,
            headers={"Content-Type": OCTETS},
        )
        return status == 201

    async def get(self, kind: Kind, object_id: ObjectId, *, max_size: int) -> bytes:
        """GET, refusing (before reading it) a body larger than `max_size`."""
        check_id(object_id)
        path = f"/{Kind(kind).value}/{object_id}"
        async with self._response("GET", path, f"{kind} {object_id}", "read") as response:
            declared = response.content_length
            if declared is not None and declared > max_size:
                raise IntegrityError(
                    str(kind), str(object_id), f"stored size {declared} exceeds {max_size}"
                )
            body = bytearray()
            async for piece in response.content.iter_any():
                body += piece
                if len(body) > max_size:
                    raise IntegrityError(
                        str(kind), str(object_id), f"stored size exceeds {max_size}"
                    )
            return bytes(body)

    async def get_range(self, kind: Kind, object_id: ObjectId, offset: int, length: int) -> bytes:
        """GET with `Range: bytes=FIRST-LAST`; only a 206 of exactly that range is accepted."""
        check_id(object_id)
        check_range(offset, length)
        last = offset + length - 1
        what = f"{kind} {object_id} bytes {offset}-{last}"
        async with self._response(
            "GET",
            f"/{Kind(kind).value}/{object_id}",
            what,
            "read",
            ok=(200, 206),
            headers={"Range": f"bytes={offset}-{last}"},
        ) as response:
            if response.status == 200:
                raise CasError(
                    f"{what} on {self.url}: the server ignored the Range header "
                    "(a cas serve older than store format 2?)"
                )
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            if match is None or (int(match[1]), int(match[2])) != (offset, last):
                raise StoreUnavailable(f"{what} on {self.url}: answer is for another range")
            if response.content_length not in (None, length):
                raise StoreUnavailable(f"{what} on {self.url}: answer has the wrong length")
            body = bytearray()
            async for piece in response.content.iter_any():
                body += piece
                if len(body) > length:
                    break
        if len(body) != length:
            raise StoreUnavailable(f"{what} on {self.url}: answer has the wrong length")
        return bytes(body)

    async def put_many(self, kind: Kind, items: Sequence[tuple[ObjectId, bytes]]) -> list[bool]:
        """Batches of up to `MAX_BATCH_OBJECTS` objects (and ~`MAX_BATCH_BODY` bytes) per request.

        A latency-bound link pays one round trip per batch, not per object.
        An object too large to share a batch goes alone, as a plain `PUT`;
        packs always do, a few at a time.
        """
        for object_id, _ in items:
            check_id(object_id)
        if Kind(kind) is Kind.PACK:
            return await self._put_each(kind, items, _PACK_UPLOADS)
        created: list[bool] = []
        for batch in _batches(items):
            if len(batch) == 1:
                created.append(await self.put_if_absent(kind, *batch[0]))
                continue
            body = b"".join(RECORD_HEADER.pack(i, len(d)) + d for i, d in batch)
            _, answer, _ = await self._call(
                "POST",
                f"/{Kind(kind).value}/put",
                f"{kind} batch of {len(batch)}",
                "write",
                data=body,
                headers={"Content-Type": OCTETS},
            )
            flags = _json_field(answer, "created", list, self.url)
            if len(flags) != len(batch) or not all(isinstance(f, bool) for f in flags):
                raise StoreUnavailable(f"{self.url}: batch answer does not match the batch")
            created.extend(flags)
        return created

    async def _put_each(
        self, kind: Kind, items: Sequence[tuple[ObjectId, bytes]], in_flight: int
    ) -> list[bool]:
        """One `PUT` per object, `in_flight` at a time, answers in item order."""
        limit = asyncio.Semaphore(in_flight)

        async def one(object_id: ObjectId, data: bytes) -> bool:
            async with limit:
                return await self.put_if_absent(kind, object_id, data)

        return await gather_or_cancel(one(i, d) for i, d in items)

    async def get_many(
        self, kind: Kind, ids: Sequence[ObjectId], *, max_size: int
    ) -> dict[ObjectId, bytes]:
        """Up to `MAX_BATCH_OBJECTS` objects per request, streamed back in order."""
        wanted = list(dict.fromkeys(check_id(i) for i in ids))
        found: dict[ObjectId, bytes] = {}
        for start in range(0, len(wanted), MAX_BATCH_OBJECTS):
            batch = wanted[start : start + MAX_BATCH_OBJECTS]
            what = f"{kind} batch of {len(batch)}"
            async with self._response(
                "POST",
                f"/{Kind(kind).value}/get",
                what,
                "read",
                json={"ids": [str(i) for i in batch], "max_size": max_size},
            ) as response:
                found.update(await self._read_records(response, kind, batch, max_size, what))
        return found

    async def _read_records(
        self,
        response: aiohttp.ClientResponse,
        kind: Kind,
        batch: list[ObjectId],
        max_size: int,
        what: str,
    ) -> dict[ObjectId, bytes]:
        """The records of a batch get, each checked against the id asked for in its place."""
        out: dict[ObjectId, bytes] = {}
        content = response.content
        try:
            for expected in batch:
                raw_id, length = RECORD_HEADER.unpack(await content.readexactly(RECORD_HEADER.size))
                if length == FAILED:
                    (size,) = FAILURE_HEADER.unpack(await content.readexactly(FAILURE_HEADER.size))
                    error = json.loads(await content.readexactly(min(size, 1 << 16)))
                    raise _error_from_record(error, f"{what} on {self.url}")
                if raw_id != expected:
                    raise StoreUnavailable(f"{what} on {self.url}: answer out of order")
                if length == ABSENT:
                    raise ObjectNotFound(
                        f"{kind} {expected} not found on {self.url}",
                        kind=kind,
                        object_id=str(expected),
                    )
                if length > max_size:
                    raise IntegrityError(
                        str(kind), str(expected), f"stored size {length} exceeds {max_size}"
                    )
                out[expected] = await content.readexactly(length)
        except asyncio.IncompleteReadError:
            raise StoreUnavailable(f"{what} on {self.url}: answer was cut off") from None
        except (ValueError, AttributeError, RecursionError) as exc:
            raise StoreUnavailable(f"{what} on {self.url}: garbled answer ({exc})") from None
        return out

    async def stat(self, kind: Kind, object_id: ObjectId) -> ObjectInfo:
        """HEAD: size and creation time from the server's headers."""
        check_id(object_id)
        what = f"{kind} {object_id}"
        _, _, headers = await self._call("HEAD", f"/{Kind(kind).value}/{object_id}", what, "read")
        try:
            size = int(headers[SIZE_HEADER])
            mtime = datetime.fromisoformat(headers[MTIME_HEADER])
        except (KeyError, ValueError):
            raise StoreUnavailable(
                f"{what} on {self.url}: stat answer lacks size or time"
            ) from None
        return ObjectInfo(Kind(kind), object_id, size, mtime)

    async def missing(self, kind: Kind, ids: Collection[ObjectId]) -> set[ObjectId]:
        """One POST per `MAX_MISSING_IDS` ids."""
        unique = list(dict.fromkeys(check_id(i) for i in ids))
        absent: set[ObjectId] = set()
        for start in range(0, len(unique), MAX_MISSING_IDS):
            batch = unique[start : start + MAX_MISSING_IDS]
            _, body, _ = await self._call(
                "POST",
                f"/{Kind(kind).value}/missing",
                f"{kind} missing",
                "read",
                json={"ids": [str(i) for i in batch]},
            )
            asked = set(batch)
            for text in _json_field(body, "missing", list, self.url):
                if not is_object_id(text) or (object_id := ObjectId.parse(text)) not in asked:
                    raise StoreUnavailable(f"{self.url}: missing answer names an id not asked")
                absent.add(object_id)
        return absent

    async def list(self, kind: Kind, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Stream the server's listing."""
        if prefix and not all(c in "0123456789abcdef" for c in prefix):
            raise UsageError(f"list prefix must be lower-case hex: {prefix!r}")
        kind = Kind(kind)
        async for record in self._records(f"/{kind.value}", {"prefix": prefix}, f"{kind} list"):
            yield self._parse(
                record,
                lambda r: ObjectInfo(
                    kind,
                    ObjectId.parse(r["id"]),
                    int(r["size"]),
                    datetime.fromisoformat(r["mtime"]),
                ),
            )

    async def delete(self, kind: Kind, object_id: ObjectId) -> None:
        """DELETE (admin scope); absent is fine."""
        check_id(object_id)
        await self._call(
            "DELETE",
            f"/{Kind(kind).value}/{object_id}",
            f"delete {kind} {object_id}",
            "admin",
            ok=(200, 204),
        )

    # ------------------------------------------------------------ refs

    async def create_ref(self, name: str, target: ObjectId) -> None:
        """PUT a ref; 409 means the name is taken."""
        validate_ref_name(name)
        check_id(target)
        await self._call(
            "PUT",
            f"/refs/{name}",
            f"ref {name!r}",
            "write",
            ok=(200, 201),
            json={"target": str(target)},
        )

    async def read_ref(self, name: str) -> ObjectId:
        """GET a ref's target."""
        validate_ref_name(name)
        _, body, _ = await self._call("GET", f"/refs/{name}", f"ref {name!r}", "read")
        target = _json_field(body, "target", str, self.url)
        if not is_object_id(target):
            raise IntegrityError("ref", name, "does not hold a valid id")
        return ObjectId.parse(target)

    async def list_refs(self, prefix: str = "") -> AsyncIterator[RefInfo]:
        """Stream the server's ref listing."""
        async for record in self._records("/refs", {"prefix": prefix}, "ref list"):
            yield self._parse(
                record,
                lambda r: RefInfo(
                    str(r["name"]), ObjectId.parse(r["target"]), datetime.fromisoformat(r["mtime"])
                ),
            )

    async def delete_ref(self, name: str) -> None:
        """DELETE a ref (admin scope); absent is fine."""
        validate_ref_name(name)
        await self._call("DELETE", f"/refs/{name}", f"delete ref {name!r}", "admin", ok=(200, 204))

    # ------------------------------------------------------------ listings

    async def _records(
        self, path: str, params: dict[str, str], what: str
    ) -> AsyncIterator[dict[str, Any]]:
        """JSON lines up to the `end` record; an `error` record or a cut-off raises."""
        async with self._response("GET", path, what, "read", params=params) as response:
            while True:
                line = await response.content.readline()
                if not line.endswith(b"\n") or len(line) > _MAX_LIST_LINE:
                    raise StoreUnavailable(f"{what} on {self.url}: listing was cut off")
                try:
                    record = json.loads(line)
                except (ValueError, RecursionError):
                    raise StoreUnavailable(f"{what} on {self.url}: garbled listing") from None
                if not isinstance(record, dict):
                    raise StoreUnavailable(f"{what} on {self.url}: garbled listing")
                if record.get(END_KEY):
                    return
                if ERROR_KEY in record:
                    raise _error_from_record(record, f"{what} on {self.url}")
                yield record

    def _parse(self, record: dict[str, Any], build: Callable[[dict[str, Any]], T]) -> T:
        try:
            return build(record)
        except (KeyError, TypeError, ValueError, OverflowError, UsageError):
            raise StoreUnavailable(
                f"{self.url}: malformed listing record {record!r:.200}"
            ) from None

    async def aclose(self) -> None:
        """Close the session of the running loop (and forget those of finished loops)."""
        sessions, self._sessions = self._sessions, {}
        for loop, session in sessions.items():
            if not loop.is_closed() and not session.closed:
                await session.close()


def _batches(items: Sequence[tuple[ObjectId, bytes]]) -> Iterator[list[tuple[ObjectId, bytes]]]:
    """Consecutive groups within the server's batch limits (headers counted)."""
    batch: list[tuple[ObjectId, bytes]] = []
    size = 0
    for item in items:
        cost = RECORD_HEADER.size + len(item[1])
        if batch and (len(batch) == MAX_BATCH_OBJECTS or size + cost > MAX_BATCH_BODY):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += cost
    if batch:
        yield batch


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # a hostile body can nest deeper than the parser goes
        return {}
    return value if isinstance(value, dict) else {}


def _server_reason(body: bytes) -> str:
    """The `message` of the server's JSON error body, cut to one line."""
    message = _json_object(body).get("message", "")
    return str(message).splitlines()[0][:300] if message else ""


def _error_from_record(record: dict[str, Any], where: str) -> CasError:
    """The typed error a server's JSON error body or record describes."""
    name = str(record.get(ERROR_KEY, ""))
    message = str(record.get("message", "")).splitlines()[0][:300] if record.get("message") else ""
    if name == "IntegrityError":
        return IntegrityError(
            str(record.get("kind", "object")),
            str(record.get("id", "?")),
            f"{record.get('detail', message)} (reported by {where})",
        )
    known = _NAMED_ERRORS.get(name)
    if known is None:
        # A bug or a newer server: retrying would not help, so say what came back.
        return CasError(
            f"{where}: the server answered with an error this client does not know "
            f"({name or 'no error name'}: {message or 'no message'}); is it a newer cas?"
        )
    return known(f"{where}: {message}")


def _json_field(body: bytes, key: str, expected: type, url: str) -> Any:
    try:
        value = json.loads(body)[key]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise StoreUnavailable(f"{url}: answer without '{key}'") from None
    if not isinstance(value, expected):
        raise StoreUnavailable(f"{url}: '{key}' in the answer has the wrong type")
    return value
