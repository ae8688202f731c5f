"""A store served by `cas serve` over HTTP(S): `--store http://HOST:PORT`.

The client side of docs/http-api.md. One pooled `aiohttp` session per
event loop carries every call; `missing` is one request per up to
`MAX_MISSING_IDS` ids. Failures are typed once, in `cas.store.httpclient`
(the status table is there); answers are checked in `cas.store.httpstreams`.

`get_range` sends `Range: bytes=FIRST-LAST` and accepts only a 206 with
exactly that range. Packs are uploaded one `PUT` each (the batch endpoint
refuses them), a few at a time.

The server verifies uploads, but reads are still verified by the
`Repository` like those of every other backend. Listings must end with the
server's `end` record; one cut short raises instead of looking complete.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from datetime import datetime
from typing import Any, Final
from urllib.parse import urlsplit

from cas.aiotools import gather_or_cancel
from cas.batching import batch_by_size
from cas.errors import (
    IntegrityError,
    ObjectName,
    StoreUnavailable,
    UsageError,
)
from cas.httpapi import (
    MAX_BATCH_BODY,
    MAX_BATCH_OBJECTS,
    MAX_MISSING_IDS,
    OCTETS,
    RECORD_HEADER,
)
from cas.ids import ObjectId, check_list_prefix, is_object_id
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
from cas.store.httpclient import ServeClient
from cas.store.httpstreams import object_info, parse_record, read_batch, read_range

DEFAULT_CONCURRENCY: Final = 32
_READ_TIMEOUT: Final = 120.0
_PACK_UPLOADS: Final = 4
"""Pack PUTs in flight from one `put_many`: the server verifies a few at a time anyway."""


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
        self.capabilities = Capabilities(
            max_concurrency=max_concurrency, atomic_create=True, native_missing=True
        )
        self.client = ServeClient(self.url, token or None, max_concurrency, read_timeout)

    def opener(self) -> Callable[[], Store]:
        """The same server and token, for put's worker processes."""
        return functools.partial(
            HttpStore,
            self.url,
            self.client.token,
            max_concurrency=self.client.max_concurrency,
            read_timeout=self.client.read_timeout,
        )

    # ------------------------------------------------------------ objects

    async def put_if_absent(self, kind: Kind, object_id: ObjectId, data: bytes) -> bool:
        """PUT: 201 created, 200 already present."""
        check_id(object_id)
        status, _, _ = await self.client.call(
            "PUT",
            f"/{Kind(kind).value}/{object_id}",
            f"{kind} {object_id}",
            "write",
            ok=(200, 201),
            name=ObjectName(str(kind), str(object_id)),
            data=data,
            headers={"Content-Type": OCTETS},
        )
        return status == 201

    async def get(self, kind: Kind, object_id: ObjectId, *, max_size: int) -> bytes:
        """GET, refusing (before reading it) a body larger than `max_size`."""
        check_id(object_id)
        path = f"/{Kind(kind).value}/{object_id}"
        name = ObjectName(str(kind), str(object_id))
        async with self.client.response(
            "GET", path, f"{kind} {object_id}", "read", name=name
        ) as response:
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
        async with self.client.response(
            "GET",
            f"/{Kind(kind).value}/{object_id}",
            what,
            "read",
            ok=(200, 206),
            name=ObjectName(str(kind), str(object_id)),
            headers={"Range": f"bytes={offset}-{last}"},
        ) as response:
            return await read_range(response, offset, length, f"{what} on {self.url}")

    async def put_many(self, kind: Kind, items: Sequence[tuple[ObjectId, bytes]]) -> list[bool]:
        """Batches of up to `MAX_BATCH_OBJECTS` objects (and ~`MAX_BATCH_BODY` bytes) per request.

        A latency-bound link pays one round trip per batch, not per object.
        An object too large to share a batch goes alone, as a plain `PUT`;
        packs always do, a few at a time.
        """
        for object_id, _ in items:
            check_id(object_id)
        if Kind(kind) is Kind.PACK:
            return await _put_each(self, kind, items, _PACK_UPLOADS)
        created: list[bool] = []
        for batch in _batches(items):
            if len(batch) == 1:
                created.append(await self.put_if_absent(kind, *batch[0]))
                continue
            body = b"".join(RECORD_HEADER.pack(i, len(d)) + d for i, d in batch)
            _, answer, _ = await self.client.call(
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

    async def get_many(
        self, kind: Kind, ids: Sequence[ObjectId], *, max_size: int
    ) -> dict[ObjectId, bytes]:
        """Up to `MAX_BATCH_OBJECTS` objects per request, streamed back in order."""
        wanted = list(dict.fromkeys(check_id(i) for i in ids))
        found: dict[ObjectId, bytes] = {}
        for start in range(0, len(wanted), MAX_BATCH_OBJECTS):
            batch = wanted[start : start + MAX_BATCH_OBJECTS]
            what = f"{kind} batch of {len(batch)}"
            async with self.client.response(
                "POST",
                f"/{Kind(kind).value}/get",
                what,
                "read",
                json={"ids": [str(i) for i in batch], "max_size": max_size},
            ) as response:
                where = f"{what} on {self.url}"
                found.update(await read_batch(response, kind, batch, max_size, where))
        return found

    async def stat(self, kind: Kind, object_id: ObjectId) -> ObjectInfo:
        """HEAD: size and creation time from the server's headers."""
        check_id(object_id)
        what = f"{kind} {object_id}"
        _, _, headers = await self.client.call(
            "HEAD",
            f"/{Kind(kind).value}/{object_id}",
            what,
            "read",
            name=ObjectName(str(kind), str(object_id)),
        )
        return object_info(Kind(kind), object_id, headers, f"{what} on {self.url}")

    async def missing(self, kind: Kind, ids: Collection[ObjectId]) -> set[ObjectId]:
        """One POST per `MAX_MISSING_IDS` ids."""
        unique = list(dict.fromkeys(check_id(i) for i in ids))
        absent: set[ObjectId] = set()
        for start in range(0, len(unique), MAX_MISSING_IDS):
            batch = unique[start : start + MAX_MISSING_IDS]
            _, body, _ = await self.client.call(
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
        check_list_prefix(prefix)
        kind = Kind(kind)
        async for record in self.client.records(
            f"/{kind.value}", {"prefix": prefix}, f"{kind} list"
        ):
            yield parse_record(
                self.url,
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
        await self.client.call(
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
        await self.client.call(
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
        _, body, _ = await self.client.call("GET", f"/refs/{name}", f"ref {name!r}", "read")
        target = _json_field(body, "target", str, self.url)
        if not is_object_id(target):
            raise IntegrityError("ref", name, "does not hold a valid id")
        return ObjectId.parse(target)

    async def list_refs(self, prefix: str = "") -> AsyncIterator[RefInfo]:
        """Stream the server's ref listing."""
        async for record in self.client.records("/refs", {"prefix": prefix}, "ref list"):
            yield parse_record(
                self.url,
                record,
                lambda r: RefInfo(
                    str(r["name"]), ObjectId.parse(r["target"]), datetime.fromisoformat(r["mtime"])
                ),
            )

    async def delete_ref(self, name: str) -> None:
        """DELETE a ref (admin scope); absent is fine."""
        validate_ref_name(name)
        await self.client.call(
            "DELETE", f"/refs/{name}", f"delete ref {name!r}", "admin", ok=(200, 204)
        )

    # ------------------------------------------------------------ listings

    async def aclose(self) -> None:
        """Close the client's sessions."""
        await self.client.close()


async def _put_each(
    store: Store, kind: Kind, items: Sequence[tuple[ObjectId, bytes]], in_flight: int
) -> list[bool]:
    """One `PUT` per object, `in_flight` at a time, answers in item order."""
    limit = asyncio.Semaphore(in_flight)

    async def one(object_id: ObjectId, data: bytes) -> bool:
        async with limit:
            return await store.put_if_absent(kind, object_id, data)

    return await gather_or_cancel(one(i, d) for i, d in items)


def _batches(items: Sequence[tuple[ObjectId, bytes]]) -> list[list[tuple[ObjectId, bytes]]]:
    """Consecutive groups within the server's batch limits (headers counted)."""
    return batch_by_size(
        items,
        lambda item: RECORD_HEADER.size + len(item[1]),
        max_bytes=MAX_BATCH_BODY,
        max_items=MAX_BATCH_OBJECTS,
        alone_from=MAX_BATCH_BODY,
    )


def _json_field(body: bytes, key: str, expected: type, url: str) -> Any:
    try:
        value = json.loads(body)[key]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise StoreUnavailable(f"{url}: answer without '{key}'") from None
    if not isinstance(value, expected):
        raise StoreUnavailable(f"{url}: '{key}' in the answer has the wrong type")
    return value
