"""A store in a Google Cloud Storage bucket: `--store gs://BUCKET/PREFIX`.

It speaks the GCS JSON API over `aiohttp` from the event loop. Measured
against the emulator (benchmarks/gcs_clients.py, docs/gcs.md), that beat the
`google-cloud-storage` client in a thread pool on every phase but uploads
(where the emulator was the limit) and used a fourth to a fifth of its
client CPU, which put needs for chunking and compression.

1. Every object is one bucket object named `PREFIX/<kind>/<hex id>`; a ref is
   `PREFIX/refs/<name>` holding the target id (also kept in the object's
   custom metadata, so listing refs needs no extra reads).
2. Writes are single multipart uploads with `ifGenerationMatch=0`: GCS creates
   the object only if no live object has that name (412 otherwise), so
   nothing is ever overwritten and a runner needs `storage.objects.create`
   but never `storage.objects.delete`. An upload is invisible until it is
   complete, so listings never show partial objects. The CRC32C of the data
   travels with the upload and GCS refuses the object if the bytes arrived
   different, so a flipped bit in transit cannot become a permanent,
   create-only corrupt object.
3. `missing` asks for each id's metadata (`fields=name`), 100 ids to a batch
   request (cas/store/gcs/batch.py), so checking the chunks of a large put
   costs a hundredth of the round trips.
4. Failures are mapped once, in cas/store/gcs/errors.py; retries happen in
   `RetryingStore` around this class (`registry.wrap_remote`).
5. Pack frames are read with `get_range`: one media GET with a `Range`
   header, answered 206 with exactly the bytes asked.
6. The store says what it is: `PREFIX/cas-store.json` holds
   `{"layout": "cas.gcs-store/2"}` (also in its custom metadata). The first
   call of a `GcsStore` lists the prefix's top level once (one request,
   `delimiter=/`): a format 1 store (objects under `chunk/` or `tree/`) or a
   marker of another layout is refused with a `UsageError`. The marker is
   written, create-only, before the first write to a store that lacks it, so
   read-only credentials never need to write.

Credentials come from Application Default Credentials (cas/store/gcs/auth.py);
with `STORAGE_EMULATOR_HOST` set, requests go to that emulator, unauthenticated.
"""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator, Callable, Collection
from datetime import datetime
from typing import Any, Final

from cas.aiotools import for_each
from cas.errors import (
    AlreadyExists,
    CasError,
    IntegrityError,
    ObjectNotFound,
    StoreUnavailable,
    UsageError,
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
    range_past_end,
    validate_ref_name,
)
from cas.store.gcs.batch import MAX_CALLS as MAX_BATCH_CALLS
from cas.store.gcs.errors import (
    BucketNotFound,
    GcsCall,
    RangeNotSatisfiable,
    create_call,
    delete_call,
    list_call,
    object_call,
    parse_answer,
    read_call,
)
from cas.store.gcs.existence import absent_among
from cas.store.gcs.http import BodyTooLarge, GcsHttp
from cas.store.gcs.layout import GcsLayout
from cas.store.gcs.location import DEFAULT_ENDPOINT, GcsLocation, emulator_endpoint

DEFAULT_CONCURRENCY: Final = 64
_PAGE_SIZE: Final = 1000
_REF_MAX_BYTES: Final = 1024
_TARGET_KEY: Final = "cas-target"
_LIST_FIELDS: Final = "items(name,size,timeCreated,updated,metadata),nextPageToken"
_CONTENT_RANGE: Final = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def _info(
    kind: Kind, object_id: ObjectId, item: dict[str, Any], call: GcsCall, location: GcsLocation
) -> ObjectInfo:
    try:
        size = int(item["size"])
    except (KeyError, ValueError, TypeError):
        raise StoreUnavailable(
            f"GCS sent object metadata without a valid size for {call.what} ({location.url})"
        ) from None
    return ObjectInfo(Kind(kind), object_id, size, _mtime(item, call, location))


def _mtime(item: dict[str, Any], call: GcsCall, location: GcsLocation) -> datetime:
    """The later of creation and metadata-update time: never earlier than creation.

    Objects here are never rewritten, so this is the creation time unless
    someone changed the metadata; gc's grace period only gets longer then.
    """
    try:
        return max(
            datetime.fromisoformat(item[k]) for k in ("timeCreated", "updated") if item.get(k)
        )
    except (ValueError, TypeError):
        raise StoreUnavailable(
            f"GCS sent object metadata without a valid time for {call.what} ({location.url})"
        ) from None


class GcsStore(Store):
    """A `Store` in `gs://BUCKET/PREFIX` over the GCS JSON API."""

    def __init__(
        self,
        location: GcsLocation,
        *,
        endpoint: str | None = None,
        anonymous: bool | None = None,
        max_concurrency: int = DEFAULT_CONCURRENCY,
        timeout: float = 120.0,
    ) -> None:
        emulator = emulator_endpoint()
        self.location = location
        self.endpoint = (endpoint or emulator or DEFAULT_ENDPOINT).rstrip("/")
        self.anonymous = emulator is not None if anonymous is None else anonymous
        self.url = location.url
        self.capabilities = Capabilities(max_concurrency=max_concurrency, atomic_create=True)
        self._timeout = timeout
        self._http = GcsHttp(
            location,
            endpoint=self.endpoint,
            anonymous=self.anonymous,
            max_connections=max_concurrency,
            timeout=timeout,
        )
        # Each batch is up to 100 calls on the server side; a few at once is plenty.
        self._batches_in_flight = max(1, max_concurrency // 8)
        self.layout = GcsLayout(self._http, location)

    @classmethod
    def from_url(cls, url: str) -> GcsStore:
        """Open `gs://BUCKET/PREFIX` (the endpoint and credentials come from the environment)."""
        return cls(GcsLocation.parse(url))

    def opener(self) -> Callable[[], Store]:
        """The same bucket and prefix, with its own connections, in another process."""
        return functools.partial(
            GcsStore,
            self.location,
            endpoint=self.endpoint,
            anonymous=self.anonymous,
            max_concurrency=self.capabilities.max_concurrency,
            timeout=self._timeout,
        )

    # ------------------------------------------------------------ requests

    async def _metadata(self, name: str, call: GcsCall, fields: str) -> dict[str, Any]:
        answer = await self._http.send(
            "GET", self._http.object_url(name), call, params={"fields": fields}
        )
        return parse_answer(answer.body, call, self.location)

    async def _download(self, name: str, call: GcsCall, max_size: int) -> bytes:
        answer = await self._http.send(
            "GET", self._http.object_url(name), call, params={"alt": "media"}, max_body=max_size
        )
        return answer.body

    async def _remove(self, name: str, call: GcsCall) -> None:
        """Delete; an absent object is fine, an absent bucket is not."""
        try:
            await self._http.send("DELETE", self._http.object_url(name), call, expect=(200, 204))
        except BucketNotFound:
            raise
        except ObjectNotFound:
            pass

    async def _list(self, prefix: str, call: GcsCall) -> AsyncIterator[dict[str, Any]]:
        """Every object whose name starts with `prefix`, page by page."""
        params = {"prefix": prefix, "maxResults": str(_PAGE_SIZE), "fields": _LIST_FIELDS}
        while True:
            answer = await self._http.send("GET", self._http.objects_url, call, params=params)
            page = parse_answer(answer.body, call, self.location)
            for item in page.get("items") or ():
                if isinstance(item, dict) and isinstance(item.get("name"), str):
                    yield item
            token = page.get("nextPageToken")
            if not token:
                return
            params = {**params, "pageToken": token}

    # ------------------------------------------------------------ objects

    async def put_if_absent(self, kind: Kind, object_id: ObjectId, data: bytes) -> bool:
        """One create-only upload; False when the object already exists (same name, same bytes)."""
        name = self.location.object_name(kind, object_id)
        await self.layout.ready(writing=True)
        return await self._http.create(name, data, object_call(create_call, kind, object_id))

    async def get(self, kind: Kind, object_id: ObjectId, *, max_size: int) -> bytes:
        """Download, refusing to read past `max_size`."""
        name = self.location.object_name(kind, object_id)
        await self.layout.ready()
        try:
            return await self._download(name, object_call(read_call, kind, object_id), max_size)
        except BodyTooLarge as exc:
            raise IntegrityError(
                str(kind), str(object_id), f"stored size {exc.size} exceeds {max_size}"
            ) from None

    async def get_range(self, kind: Kind, object_id: ObjectId, offset: int, length: int) -> bytes:
        """One media GET with `Range: bytes=FIRST-LAST`, answered 206 with exactly those bytes."""
        name = self.location.object_name(kind, object_id)
        check_range(offset, length)
        await self.layout.ready()
        call = object_call(read_call, kind, object_id)
        try:
            answer = await self._http.send(
                "GET",
                self._http.object_url(name),
                call,
                expect=(200, 206),
                params={"alt": "media"},
                headers={"Range": f"bytes={offset}-{offset + length - 1}"},
                max_body=length,
            )
        except RangeNotSatisfiable:
            raise range_past_end(kind, object_id, offset, length) from None
        except BodyTooLarge:
            raise CasError(
                f"GCS sent more than the {length} bytes asked for {call.what} "
                f"({self.location.url}): was the Range header ignored?"
            ) from None
        start, size = _answered_range(answer.status, answer.content_range, call, self.location)
        if start != offset:
            raise CasError(
                f"GCS sent bytes from {start} instead of {offset} for {call.what} "
                f"({self.location.url})"
            )
        if len(answer.body) != length:
            raise range_past_end(kind, object_id, offset, length, size)
        return answer.body

    async def stat(self, kind: Kind, object_id: ObjectId) -> ObjectInfo:
        """Size and creation time from the object's metadata."""
        name = self.location.object_name(kind, object_id)
        await self.layout.ready()
        call = object_call(read_call, kind, object_id)
        item = await self._metadata(name, call, "name,size,timeCreated,updated")
        return _info(kind, object_id, item, call, self.location)

    async def missing(self, kind: Kind, ids: Collection[ObjectId]) -> set[ObjectId]:
        """Existence checks, 100 to a batch request, a few batches in flight, as one call."""
        unique = list(dict.fromkeys(check_id(i) for i in ids))
        await self.layout.ready()
        groups = [unique[i : i + MAX_BATCH_CALLS] for i in range(0, len(unique), MAX_BATCH_CALLS)]
        absent: set[ObjectId] = set()

        async def probe(group: list[ObjectId]) -> None:
            absent.update(await absent_among(self._http, self.location, kind, group))

        await for_each(groups, probe, self._batches_in_flight)
        return absent

    async def list(self, kind: Kind, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Objects of one kind; names that are not ids (foreign files) are skipped."""
        check_list_prefix(prefix)
        base = self.location.kind_prefix(kind)
        await self.layout.ready()
        call = list_call(f"{kind} listing")
        async for item in self._list(base + prefix, call):
            rest = item["name"][len(base) :]
            if is_object_id(rest):
                yield _info(kind, ObjectId.parse(rest), item, call, self.location)

    async def delete(self, kind: Kind, object_id: ObjectId) -> None:
        """Delete; absent is fine."""
        name = self.location.object_name(kind, object_id)
        await self.layout.ready()
        await self._remove(name, object_call(delete_call, kind, object_id))

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    # ------------------------------------------------------------ refs

    async def create_ref(self, name: str, target: ObjectId) -> None:
        """Create-only, like objects; `AlreadyExists` when the name is taken."""
        object_name = self.location.ref_name(name)
        check_id(target)
        await self.layout.ready(writing=True)
        created = await self._http.create(
            object_name,
            f"{target}\n".encode(),
            create_call(f"ref {name!r}"),
            metadata={_TARGET_KEY: str(target)},
        )
        if not created:
            raise AlreadyExists(f"ref {name!r} already exists in {self.location.url}")

    async def read_ref(self, name: str) -> ObjectId:
        """Read and parse the ref object."""
        object_name = self.location.ref_name(name)
        await self.layout.ready()
        try:
            data = await self._download(object_name, read_call(f"ref {name!r}"), _REF_MAX_BYTES)
        except BodyTooLarge:
            raise IntegrityError("ref", name, "is too large to hold an id") from None
        text = data.decode("ascii", "replace").strip()
        if not is_object_id(text):
            raise IntegrityError("ref", name, "does not hold a valid id")
        return ObjectId.parse(text)

    async def list_refs(self, prefix: str = "") -> AsyncIterator[RefInfo]:
        """Refs in name order; targets come from metadata, else from the ref's content."""
        base = self.location.refs_prefix
        await self.layout.ready()
        call = list_call("refs listing")
        found: list[RefInfo] = []
        async for item in self._list(base + prefix, call):
            name = item["name"][len(base) :]
            try:
                validate_ref_name(name)
            except UsageError:
                continue
            mtime = _mtime(item, call, self.location)
            metadata = item.get("metadata")
            target = metadata.get(_TARGET_KEY, "") if isinstance(metadata, dict) else ""
            if is_object_id(target):
                found.append(RefInfo(name, ObjectId.parse(target), mtime))
                continue
            try:
                found.append(RefInfo(name, await self.read_ref(name), mtime))
            except (ObjectNotFound, IntegrityError):
                continue  # deleted meanwhile, or not a ref
        for info in sorted(found, key=lambda r: r.name):
            yield info

    async def delete_ref(self, name: str) -> None:
        """Delete; absent is fine."""
        object_name = self.location.ref_name(name)
        await self.layout.ready()
        await self._remove(object_name, delete_call(f"ref {name!r}"))


def _answered_range(
    status: int, content_range: str, call: GcsCall, location: GcsLocation
) -> tuple[int, int | None]:
    """(first byte, object size if known) of a range answer; a 200 is the whole object."""
    if status == 200:
        return 0, None
    match = _CONTENT_RANGE.fullmatch(content_range.strip())
    if match is None:
        raise StoreUnavailable(
            f"GCS sent a 206 without a valid Content-Range for {call.what} "
            f"({location.url}): {content_range[:80]!r}"
        )
    total = match.group(3)
    return int(match.group(1)), int(total) if total != "*" else None
