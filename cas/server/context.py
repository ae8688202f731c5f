"""Keys for what the app and each request carry; how refusals and errors are answered."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final, TypeVar

from aiohttp import web

from cas.errors import CasError, IntegrityError
from cas.httpapi import ERROR_KEY
from cas.server.metrics import Metrics
from cas.server.tokens import Scope, TokenTable
from cas.server.verify import Limits
from cas.store.base import Store

STORE: Final = web.AppKey("store", Store)
LIMITS: Final = web.AppKey("limits", Limits)
TOKENS: Final = web.AppKey("tokens", TokenTable)
ANONYMOUS_READ: Final = web.AppKey("anonymous_read", bool)
METRICS: Final = web.AppKey("metrics", Metrics)
# Uploads buffered at once: bounds the server's memory to about this many bodies.
UPLOAD_SLOTS: Final = web.AppKey("upload_slots", asyncio.Semaphore)
# Pack uploads buffered and verified at once (each up to 128 MiB): taken before
# an upload slot, so a burst of packs cannot hold every slot or all the memory.
PACK_SLOTS: Final = web.AppKey("pack_slots", asyncio.Semaphore)

# Per request: the scope it was allowed with, and the body bytes it sent.
SCOPE: Final = "cas.scope"
BYTES_IN: Final = "cas.bytes_in"


H = TypeVar("H", bound=Callable[..., object])


class Refusal(Exception):
    """A request refused with an HTTP status and a one-line reason for the client."""

    def __init__(self, status: int, error: str, message: str, **extra: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.extra = extra


def error_body(exc: CasError) -> dict[str, str]:
    """`{"error", "message"}`, plus the object and detail of an `IntegrityError`."""
    body = {ERROR_KEY: type(exc).__name__, "message": str(exc)}
    if isinstance(exc, IntegrityError):
        body.update(kind=exc.kind, id=exc.object_id, detail=exc.detail)
    return body


def required_scope(scope: Scope) -> Callable[[H], H]:
    """Mark a handler with the scope it needs; the auth middleware enforces it."""

    def mark(handler: H) -> H:
        handler.cas_scope = scope  # type: ignore[attr-defined]
        return handler

    return mark
