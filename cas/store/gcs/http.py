"""HTTP to the GCS JSON API: connection pool, auth headers, uploads, typed failures.

`GcsStore` decides what to ask; this module only knows how: one aiohttp
session per event loop, a bearer token on every request (refreshed once on
a 401), create-only multipart uploads, bounded (and ranged) downloads, and
every failure mapped by cas/store/gcs/errors.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import Collection
from typing import Any, NamedTuple
from urllib.parse import quote

import aiohttp

from cas import __version__
from cas.errors import CasError
from cas.store.gcs.auth import GcsAuth
from cas.store.gcs.errors import GcsCall, translate_exception, translate_status
from cas.store.gcs.location import GcsLocation


class Answer(NamedTuple):
    """An expected answer: its status, body, content type and content range."""

    status: int
    body: bytes
    content_type: str
    content_range: str = ""


class BodyTooLarge(Exception):
    """A download longer than the caller allows (the store makes it an `IntegrityError`)."""

    def __init__(self, size: int) -> None:
        self.size = size


def crc32c(data: bytes) -> str:
    """Base64 of the big-endian CRC32C, the form GCS metadata uses."""
    import google_crc32c

    return base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode()


class GcsHttp:
    """Requests to one bucket's JSON API endpoints."""

    def __init__(
        self,
        location: GcsLocation,
        *,
        endpoint: str,
        anonymous: bool,
        max_connections: int,
        timeout: float,
    ) -> None:
        self.location = location
        self.anonymous = anonymous
        self._auth = GcsAuth(anonymous=anonymous, where=location.url)
        self._max_connections = max_connections
        self._timeout = timeout
        bucket = quote(location.bucket, safe="")
        self.objects_url = f"{endpoint}/storage/v1/b/{bucket}/o"
        self.upload_url = f"{endpoint}/upload/storage/v1/b/{bucket}/o"
        self.batch_url = f"{endpoint}/batch/storage/v1"
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    def object_url(self, name: str) -> str:
        """The metadata/media URL of one object (the name as one escaped path segment)."""
        return f"{self.objects_url}/{quote(name, safe='')}"

    def _pool(self) -> aiohttp.ClientSession:
        """One connection pool per event loop (a session cannot move between loops)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                timeout=aiohttp.ClientTimeout(
                    total=self._timeout, sock_connect=15, sock_read=self._timeout / 2
                ),
                headers={"User-Agent": f"cas/{__version__}"},
                # Bytes exactly as stored: never let a transport encoding change them.
                auto_decompress=False,
                raise_for_status=False,
            )
            self._session_loop = loop
        return self._session

    async def send(
        self,
        method: str,
        url: str,
        call: GcsCall,
        *,
        expect: Collection[int] = (200,),
        params: dict[str, str] | None = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        max_body: int | None = None,
    ) -> Answer:
        """One request; an expected status gives its answer, any other a typed error.

        A 401 is answered once by refreshing the token and trying again, since
        a token can expire between the check and the request.
        """
        for attempt in range(2):
            request_headers = dict(headers or {})
            request_headers.update(await self._auth.headers())
            try:
                async with self._pool().request(
                    method, url, params=params, data=data, headers=request_headers
                ) as resp:
                    if resp.status in expect:
                        body = await _read_body(resp, max_body)
                        return Answer(
                            resp.status,
                            body,
                            resp.headers.get("Content-Type", ""),
                            resp.headers.get("Content-Range", ""),
                        )
                    body = await resp.content.read(8192)
                    if resp.status == 401 and attempt == 0 and not self.anonymous:
                        await self._auth.force_refresh()
                        continue
                    raise translate_status(resp.status, body, call, self.location)
            except (CasError, BodyTooLarge):
                raise
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise translate_exception(exc, call, self.location) from None
        raise AssertionError("unreachable: the second 401 raises")

    async def create(
        self, name: str, data: bytes, call: GcsCall, metadata: dict[str, str] | None = None
    ) -> bool:
        """Create-only multipart upload: True if created, False if the name was taken.

        Multipart (metadata and data in one request) because it is the one
        upload type whose `ifGenerationMatch=0` the emulator enforces too, so
        the create-only tests are real; and one request is all a chunk needs.
        """
        boundary = secrets.token_hex(16)
        resource: dict[str, Any] = {
            "name": name,
            "contentType": "application/octet-stream",
            "crc32c": crc32c(data),
        }
        if metadata:
            resource["metadata"] = metadata
        body = b"".join(
            (
                f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode(),
                json.dumps(resource).encode(),
                f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n".encode(),
                data,
                f"\r\n--{boundary}--\r\n".encode(),
            )
        )
        answer = await self.send(
            "POST",
            self.upload_url,
            call,
            expect=(200, 412),
            params={"uploadType": "multipart", "ifGenerationMatch": "0", "fields": "name"},
            data=body,
            headers={"Content-Type": f"multipart/related; boundary={boundary}"},
        )
        return answer.status == 200

    async def aclose(self) -> None:
        """Close the connection pool of the current event loop."""
        session, self._session = self._session, None
        current = self._session_loop is asyncio.get_running_loop()
        if session is not None and not session.closed and current:
            await session.close()


async def _read_body(resp: aiohttp.ClientResponse, limit: int | None) -> bytes:
    """The whole body, or `BodyTooLarge` as soon as it exceeds `limit`."""
    if limit is None:
        return await resp.read()
    if resp.content_length is not None:
        if resp.content_length > limit:
            raise BodyTooLarge(resp.content_length)
        return await resp.read()
    received = bytearray()
    async for piece in resp.content.iter_chunked(1 << 16):
        received += piece
        if len(received) > limit:
            raise BodyTooLarge(len(received))
    return bytes(received)
