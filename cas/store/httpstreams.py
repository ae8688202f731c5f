"""Reading `cas serve`'s answers: batch records, ranges, stat headers, listing records.

Each answer is checked against what was asked before a byte of it is used:
a batch record must carry the id asked for in its place, a range answer
exactly the range, a listing must end with its `end` record. Anything else
is the server's (or the link's) failure, `StoreUnavailable`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final, TypeVar

import aiohttp

from cas.errors import CasError, IntegrityError, ObjectNotFound, StoreUnavailable, UsageError
from cas.httpapi import ABSENT, FAILED, FAILURE_HEADER, MTIME_HEADER, RECORD_HEADER, SIZE_HEADER
from cas.ids import ObjectId
from cas.store.base import Kind, ObjectInfo
from cas.store.httpclient import error_from_record

T = TypeVar("T")
_CONTENT_RANGE: Final = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


async def read_batch(
    response: aiohttp.ClientResponse,
    kind: Kind,
    batch: list[ObjectId],
    max_size: int,
    where: str,
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
                raise error_from_record(error, where)
            if raw_id != expected:
                raise StoreUnavailable(f"{where}: answer out of order")
            if length == ABSENT:
                raise ObjectNotFound(
                    f"{kind} {expected} not found ({where})",
                    kind=kind,
                    object_id=str(expected),
                )
            if length > max_size:
                raise IntegrityError(
                    str(kind), str(expected), f"stored size {length} exceeds {max_size}"
                )
            out[expected] = await content.readexactly(length)
    except asyncio.IncompleteReadError:
        raise StoreUnavailable(f"{where}: answer was cut off") from None
    except (ValueError, AttributeError, RecursionError) as exc:
        raise StoreUnavailable(f"{where}: garbled answer ({exc})") from None
    return out


async def read_range(
    response: aiohttp.ClientResponse, offset: int, length: int, where: str
) -> bytes:
    """The body of a 206 answer for exactly `offset`..`offset + length`."""
    if response.status == 200:
        raise CasError(
            f"{where}: the server ignored the Range header (a cas serve older than store format 2?)"
        )
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
    if match is None or (int(match[1]), int(match[2])) != (offset, offset + length - 1):
        raise StoreUnavailable(f"{where}: answer is for another range")
    if response.content_length not in (None, length):
        raise StoreUnavailable(f"{where}: answer has the wrong length")
    body = bytearray()
    async for piece in response.content.iter_any():
        body += piece
        if len(body) > length:
            break
    if len(body) != length:
        raise StoreUnavailable(f"{where}: answer has the wrong length")
    return bytes(body)


def object_info(
    kind: Kind, object_id: ObjectId, headers: Mapping[str, str], where: str
) -> ObjectInfo:
    """Size and creation time from a stat answer's headers."""
    try:
        size = int(headers[SIZE_HEADER])
        mtime = datetime.fromisoformat(headers[MTIME_HEADER])
    except (KeyError, ValueError):
        raise StoreUnavailable(f"{where}: stat answer lacks size or time") from None
    return ObjectInfo(kind, object_id, size, mtime)


def parse_record(url: str, record: dict[str, Any], build: Callable[[dict[str, Any]], T]) -> T:
    """A listing record built into its value; a malformed one is the server's failure."""
    try:
        return build(record)
    except (KeyError, TypeError, ValueError, OverflowError, UsageError):
        raise StoreUnavailable(f"{url}: malformed listing record {record!r:.200}") from None
