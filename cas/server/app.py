"""The `cas serve` application: middlewares around the routes, and running it.

Request path:

1. `errors` turns typed errors, and aiohttp's own 4xx (no such route,
   method not allowed), into a status and a JSON body
   `{"error": CLASS, "message": ONE_LINE}` (docs/http-api.md lists them);
2. `refuse_dot_segments` answers `400` to `..` tricks;
3. `authorize` finds the scope the route needs, checks the bearer token
   (401 without a valid one, 403 when its scope is too low; anonymous
   requests get `read` only when the server was started to allow that);
4. the handler (`cas.server.routes`).

After the response is sent, `cas.server.accesslog` writes the access line
and counts the request in `/metrics`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable
from typing import Final
from urllib.parse import unquote

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
from cas.server.accesslog import LOGGER_NAME, AccessLogger
from cas.server.context import (
    ANONYMOUS_READ,
    LIMITS,
    METRICS,
    PACK_SLOTS,
    SCOPE,
    STORE,
    TOKENS,
    UPLOAD_SLOTS,
    Refusal,
    error_body,
)
from cas.server.metrics import Metrics
from cas.server.routes import add_routes
from cas.server.tokens import Scope, TokenTable
from cas.server.verify import Limits
from cas.store.base import Store

DEFAULT_MAX_UPLOADS: Final = 16
DEFAULT_MAX_PACK_UPLOADS: Final = 4

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The status each typed error is answered with; any other `CasError` is a 500.
_STATUS: Final[tuple[tuple[type[CasError], int], ...]] = (
    (UsageError, 400),
    (PermissionDenied, 403),
    (ObjectNotFound, 404),
    (AlreadyExists, 409),
    (IntegrityError, 422),
    (StoreUnavailable, 503),
)


def _error_response(status: int, error: str, message: str, **extra: str) -> web.Response:
    return web.json_response({"error": error, "message": message, **extra}, status=status)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Typed errors become statuses with a one-line message; nothing else is caught."""
    try:
        return await handler(request)
    except Refusal as exc:
        response = _error_response(exc.status, exc.error, exc.message, **exc.extra)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="cas"'
        return response
    except CasError as exc:
        status = next((code for cls, code in _STATUS if isinstance(exc, cls)), 500)
        return web.json_response(error_body(exc), status=status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # aiohttp's own refusals (no such route 404, method 405) get the
        # documented JSON body too, instead of aiohttp's plain text. The raw
        # (still percent-encoded) path keeps the message on one line.
        response = _error_response(
            exc.status,
            exc.reason.replace(" ", ""),
            f"{request.method} {request.raw_path[:200]}: {exc.reason}",
        )
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response


@web.middleware
async def refuse_dot_segments(request: web.Request, handler: Handler) -> web.StreamResponse:
    """`400` for `.` or `..` path segments, raw or percent-encoded, before any routing result.

    aiohttp would resolve them away and answer 404; saying what is wrong is
    clearer, and no name with them is ever valid.
    """
    path = request.raw_path.partition("?")[0]
    if any(unquote(segment) in (".", "..") for segment in path.split("/")):
        raise UsageError("path segments '.' and '..' are not allowed")
    return await handler(request)


@web.middleware
async def authorize(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Enforce the scope marked on the matched handler (routes without one are public)."""
    needed: Scope | None = getattr(request.match_info.handler, "cas_scope", None)
    if needed is None:
        return await handler(request)
    header = request.headers.get("Authorization")
    if header is None:
        if needed is Scope.READ and request.app[ANONYMOUS_READ]:
            return await handler(request)
        raise Refusal(401, "Unauthorized", "a bearer token is required", scope=needed.label)
    kind, _, token = header.partition(" ")
    granted = request.app[TOKENS].scope_of(token.strip()) if kind.lower() == "bearer" else None
    if granted is None:
        raise Refusal(401, "Unauthorized", "the bearer token is not valid", scope=needed.label)
    request[SCOPE] = granted
    if granted < needed:
        resource = request.match_info.route.resource
        action = f"{request.method} {resource.canonical if resource else request.path}"
        raise Refusal(
            403,
            "PermissionDenied",
            f"a '{granted.label}' token may not {action}: it needs the '{needed.label}' scope",
            scope=needed.label,
        )
    return await handler(request)


def build_app(
    store: Store,
    tokens: TokenTable,
    *,
    anonymous_read: bool = False,
    limits: Limits | None = None,
    max_uploads: int = DEFAULT_MAX_UPLOADS,
    max_pack_uploads: int = DEFAULT_MAX_PACK_UPLOADS,
) -> web.Application:
    """An application serving `store`; the caller owns (and closes) the store.

    At most `max_uploads` upload bodies are buffered at once (others wait),
    and of those at most `max_pack_uploads` packs, so memory stays near
    `max_pack_uploads` x 128 MiB plus the other bodies.
    """
    limits = limits or Limits()
    app = web.Application(middlewares=[errors, refuse_dot_segments, authorize])
    app[STORE] = store
    app[TOKENS] = tokens
    app[ANONYMOUS_READ] = anonymous_read
    app[LIMITS] = limits
    app[METRICS] = Metrics()
    app[UPLOAD_SLOTS] = asyncio.Semaphore(max(1, max_uploads))
    app[PACK_SLOTS] = asyncio.Semaphore(max(1, max_pack_uploads))
    add_routes(app)
    return app


async def serve(
    app: web.Application,
    host: str,
    port: int,
    *,
    tls: ssl.SSLContext | None = None,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Listen (HTTPS when given a TLS context) until SIGINT or SIGTERM, then return.

    Requests in flight are finished first.
    """
    runner = web.AppRunner(
        app,
        access_log_class=AccessLogger,
        access_log=logging.getLogger(LOGGER_NAME),
        handle_signals=False,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=tls)
        try:
            await site.start()
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        if announce is not None:
            bound_host, bound_port = runner.addresses[0][:2]
            shown = f"[{bound_host}]" if ":" in bound_host else bound_host
            scheme = "https" if tls is not None else "http"
            announce(f"{scheme}://{shown}:{bound_port}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def configure_logging(quiet: bool) -> None:
    """Access lines on stderr, one per request, unless quiet."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger = logging.getLogger(LOGGER_NAME)
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
