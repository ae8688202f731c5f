"""GCS answers and network failures as `cas.errors`, in one place.

Transient (`StoreUnavailable`, retried by `RetryingStore`): 408, 429, 5xx,
403 rate-limit reasons, timeouts and dropped connections. Permanent: 400 is a
`UsageError`, 401/403 a `PermissionDenied` naming the permission the call
needs, 404 an `ObjectNotFound` naming either the object or the bucket, 416 a
`RangeNotSatisfiable` that the store turns into an `IntegrityError`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Final

from cas.errors import (
    AlreadyExists,
    CasError,
    ObjectName,
    ObjectNotFound,
    PermissionDenied,
    StoreUnavailable,
    UsageError,
)
from cas.ids import ObjectId
from cas.store.gcs.location import GcsLocation

_PERMISSION: Final = re.compile(r"storage\.[a-zA-Z]+\.[a-zA-Z]+")
_RATE_LIMIT_REASONS: Final = {"rateLimitExceeded", "userRateLimitExceeded"}


@dataclass(frozen=True)
class GcsCall:
    """What a request was for: named in messages, and the IAM permission it needs."""

    what: str
    permission: str
    # A 404 can only mean "no such bucket" for uploads and listings.
    bucket_level: bool = False
    # The stored object the call is on, if one: its `ObjectNotFound` names it.
    name: ObjectName | None = None


def create_call(what: str) -> GcsCall:
    """An upload: needs `storage.objects.create`; 404 means the bucket is missing."""
    return GcsCall(what, "storage.objects.create", bucket_level=True)


def read_call(what: str) -> GcsCall:
    """A metadata or media GET."""
    return GcsCall(what, "storage.objects.get")


def list_call(what: str) -> GcsCall:
    """A listing: needs `storage.objects.list`; 404 means the bucket is missing."""
    return GcsCall(what, "storage.objects.list", bucket_level=True)


def delete_call(what: str) -> GcsCall:
    """A delete: only the gc job's credentials should have this permission."""
    return GcsCall(what, "storage.objects.delete")


def object_call(make: Callable[[str], GcsCall], kind: str, object_id: ObjectId) -> GcsCall:
    """`make`'s call on one stored object, named in messages and in its `ObjectNotFound`."""
    return replace(make(f"{kind} {object_id}"), name=ObjectName(str(kind), str(object_id)))


def _parse_body(body: bytes) -> tuple[str, set[str]]:
    """The error message and reasons of a JSON API error body (or the text itself)."""
    try:
        error = json.loads(body)["error"]
        message = str(error.get("message", ""))
        reasons = {str(e.get("reason", "")) for e in error.get("errors", []) if isinstance(e, dict)}
        return message, reasons
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return body[:300].decode("utf-8", "replace").strip(), set()


class RangeNotSatisfiable(CasError):
    """A 416: the range asked starts at or past the object's end (`GcsStore` names the object)."""


class BucketNotFound(ObjectNotFound):
    """The bucket itself does not exist, so no object can be read or written."""


def bucket_missing(location: GcsLocation) -> BucketNotFound:
    """The message for a bucket that does not exist."""
    return BucketNotFound(f"bucket gs://{location.bucket} does not exist (store {location.url})")


def translate_status(status: int, body: bytes, call: GcsCall, location: GcsLocation) -> CasError:
    """Map a non-success HTTP answer onto `cas.errors`."""
    message, reasons = _parse_body(body)
    detail = f" ({status}: {message})" if message else f" ({status})"
    if status == 404:
        lowered = message.lower()
        if call.bucket_level or ("bucket" in lowered and "not exist" in lowered):
            return bucket_missing(location)
        return ObjectNotFound.of(f"{call.what} not found in {location.url}", call.name)
    if status == 403 and reasons & _RATE_LIMIT_REASONS:
        return StoreUnavailable(f"GCS rate limit on {location.url} for {call.what}{detail}")
    if status == 403:
        named = _PERMISSION.search(message)
        permission = named.group(0) if named else call.permission
        return PermissionDenied(
            f"the credentials lack {permission} on {location.url} ({call.what}){detail}"
        )
    if status == 401:
        return PermissionDenied(f"GCS did not accept the credentials for {location.url}{detail}")
    if status == 412:
        return AlreadyExists(f"{call.what} already exists in {location.url}")
    if status == 416:
        return RangeNotSatisfiable(f"{call.what}: range past its end in {location.url}")
    if status in (408, 429) or status >= 500:
        return StoreUnavailable(f"GCS unavailable for {call.what} on {location.url}{detail}")
    if status == 400:
        return UsageError(f"GCS rejected the request for {call.what} on {location.url}{detail}")
    return CasError(f"unexpected GCS answer for {call.what} on {location.url}{detail}")


def translate_exception(exc: BaseException, call: GcsCall, location: GcsLocation) -> CasError:
    """Network failures: every one is worth retrying except a malformed URL."""
    import aiohttp

    if isinstance(exc, aiohttp.InvalidURL):
        return UsageError(f"invalid GCS endpoint URL for {location.url}: {exc}")
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return StoreUnavailable(f"GCS timed out on {call.what} ({location.url})")
    return StoreUnavailable(
        f"connection to GCS failed on {call.what} ({location.url}): {type(exc).__name__}: {exc}"
    )


def parse_answer(body: bytes, call: GcsCall, location: GcsLocation) -> dict[str, Any]:
    """A JSON answer; anything else (say, a proxy's HTML page) is worth another try."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        parsed = None
    if not isinstance(parsed, dict):
        raise StoreUnavailable(
            f"GCS sent an answer that is not a JSON object for {call.what} ({location.url})"
        )
    return parsed
