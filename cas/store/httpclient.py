"""Talking to `cas serve`: pooled sessions, requests, and every failure as a typed error.

One pooled `aiohttp` session per event loop carries every call. Failures
are typed once, here:
- 408, 429, 5xx, timeouts and dropped connections -> `StoreUnavailable` (the
  `RetryingStore` around the backend retries those);
- 401 / 403 -> `PermissionDenied` naming the server and the scope needed;
- 404 -> `ObjectNotFound`; 409 / 412 -> `AlreadyExists` (refs);
- 400 / 413 / 416 -> `UsageError`; 422 -> `IntegrityError` (also for a
  range past an object's end);
- an untrusted TLS certificate -> `UsageError` (fix the CA bundle, do not retry);
- an error name this client does not know -> `CasError`, not retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Collection
from typing import Any, Final

import aiohttp

from cas.errors import (
    AlreadyExists,
    CasError,
    IntegrityError,
    ObjectName,
    ObjectNotFound,
    PermissionDenied,
    StoreUnavailable,
    UsageError,
)
from cas.httpapi import API_PREFIX, END_KEY, ERROR_KEY

_CONNECT_TIMEOUT: Final = 10.0
_MAX_LIST_LINE: Final = 1 << 16
_MAX_ERROR_BODY: Final = 1 << 16

# Server-side error classes a client re-raises as the same typed error.
_NAMED_ERRORS: Final[dict[str, type[CasError]]] = {
    cls.__name__: cls
    for cls in (UsageError, ObjectNotFound, AlreadyExists, PermissionDenied, StoreUnavailable)
}


class ServeClient:
    """Requests to one `cas serve` with one token; answers checked, failures typed."""

    def __init__(
        self, url: str, token: str | None, max_concurrency: int, read_timeout: float
    ) -> None:
        self.url = url
        self.token = token
        self.max_concurrency = max_concurrency
        self.read_timeout = read_timeout
        self._api = url + API_PREFIX
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}

    def session(self) -> aiohttp.ClientSession:
        """The pooled session of the running loop (sessions cannot cross loops)."""
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            self._sessions = {k: v for k, v in self._sessions.items() if not k.is_closed()}
            headers = {"User-Agent": "cas"}
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            session = aiohttp.ClientSession(
                headers=headers,
                connector=aiohttp.TCPConnector(limit=self.max_concurrency),
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=_CONNECT_TIMEOUT, sock_read=self.read_timeout
                ),
                raise_for_status=False,
            )
            self._sessions[loop] = session
        return session

    @contextlib.asynccontextmanager
    async def response(
        self,
        method: str,
        path: str,
        what: str,
        scope: str,
        *,
        ok: Collection[int] = (200,),
        name: ObjectName | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """An answer with an `ok` status; others, and transport failures, become typed errors.

        Failures while the caller reads the body are translated too; `name` is
        the object the call is on, if one, named by a 404's `ObjectNotFound`.
        """
        kwargs.setdefault("allow_redirects", False)  # the token goes to this server only
        try:
            async with self.session().request(method, self._api + path, **kwargs) as response:
                if response.status not in ok:
                    body = await response.content.read(_MAX_ERROR_BODY)
                    raise self.translate_status(response.status, body, what, scope, name)
                yield response
        except CasError:
            raise
        except aiohttp.ClientConnectorCertificateError as exc:
            raise UsageError(
                f"{what} on {self.url}: the server's TLS certificate is not trusted "
                f"({exc.certificate_error}); set SSL_CERT_FILE to its CA bundle"
            ) from None
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            raise self.transport_error(exc, what) from None

    async def call(
        self,
        method: str,
        path: str,
        what: str,
        scope: str,
        *,
        ok: Collection[int] = (200,),
        name: ObjectName | None = None,
        **kwargs: Any,
    ) -> tuple[int, bytes, dict[str, str]]:
        """One request, its answer read whole."""
        async with self.response(method, path, what, scope, ok=ok, name=name, **kwargs) as response:
            return response.status, await response.read(), dict(response.headers)

    def transport_error(self, exc: BaseException, what: str) -> StoreUnavailable:
        """A failure of the connection itself: worth retrying."""
        if isinstance(exc, aiohttp.ClientConnectorError):
            # Nothing answered: say so in the user's terms, not the socket library's.
            return StoreUnavailable(
                f"{what}: cannot reach cas serve at {self.url} ({exc.os_error.strerror or exc}); "
                "is it running?"
            )
        detail = str(exc) or type(exc).__name__
        return StoreUnavailable(f"{what} on {self.url}: {detail}")

    def translate_status(
        self, status: int, body: bytes, what: str, scope: str, name: ObjectName | None = None
    ) -> CasError:
        """Map an HTTP answer onto `cas.errors`, keeping the server's one-line reason."""
        reason = server_reason(body)
        on = f"{what} on {self.url}"
        if status == 401:
            token = "CAS_TOKEN is not accepted" if self.token else "CAS_TOKEN is not set"
            return PermissionDenied(
                f"{on}: {token}; a token with the '{scope}' scope is needed"
                + (f" ({reason})" if reason else "")
            )
        if status == 403:
            return PermissionDenied(f"{on}: {reason or f'needs the {scope!r} scope'}")
        if status == 404:
            return ObjectNotFound.of(f"{what} not found on {self.url}", name)
        if status in (409, 412):
            return AlreadyExists(f"{what} already exists on {self.url}")
        if status in (400, 413, 416):
            return UsageError(f"{on}: {reason or f'HTTP {status}'}")
        if status == 422:
            return error_from_record(json_object(body), on)
        if status in (408, 429) or status >= 500:
            return StoreUnavailable(f"{on}: HTTP {status}" + (f" ({reason})" if reason else ""))
        return CasError(f"{on}: unexpected HTTP {status}" + (f" ({reason})" if reason else ""))

    async def records(
        self, path: str, params: dict[str, str], what: str
    ) -> AsyncIterator[dict[str, Any]]:
        """JSON lines up to the `end` record; an `error` record or a cut-off raises."""
        async with self.response("GET", path, what, "read", params=params) as response:
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
                    raise error_from_record(record, f"{what} on {self.url}")
                yield record

    async def close(self) -> None:
        """Close the session of the running loop (and forget those of finished loops)."""
        sessions, self._sessions = self._sessions, {}
        for loop, session in sessions.items():
            if not loop.is_closed() and not session.closed:
                await session.close()


def json_object(body: bytes) -> dict[str, Any]:
    """A JSON object from an answer body, or {} for anything else."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # a hostile body can nest deeper than the parser goes
        return {}
    return value if isinstance(value, dict) else {}


def server_reason(body: bytes) -> str:
    """The `message` of the server's JSON error body, cut to one line."""
    message = json_object(body).get("message", "")
    return str(message).splitlines()[0][:300] if message else ""


def error_from_record(record: dict[str, Any], where: str) -> CasError:
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
