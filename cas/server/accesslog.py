"""One line per request, and the metrics hook that shares its vantage point.

aiohttp calls the access logger once a response has been sent, with the
bytes actually written, which is also the right moment to count the request
in the metrics. The line is::

    REMOTE SCOPE "METHOD PATH" STATUS BYTES_IN BYTES_OUT SECONDS

`PATH` is the raw, still percent-encoded request target (cut to 300
characters), so a hostile name cannot forge extra log lines.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from cas.server.context import BYTES_IN, METRICS, SCOPE

LOGGER_NAME = "cas.serve.access"
_MAX_PATH = 300


def route_label(request: web.BaseRequest) -> str:
    """The URL template that matched, or `unmatched`: few, fixed label values."""
    match_info = getattr(request, "match_info", None)
    route = getattr(match_info, "route", None)
    resource = getattr(route, "resource", None)
    return resource.canonical if resource is not None else "unmatched"


def _app_of(request: web.BaseRequest) -> web.Application | None:
    """The application that handled `request`; None for one aiohttp could not parse.

    A request refused by the HTTP parser (a bad Content-Length, broken
    chunking) never reached routing: `request.app` asserts instead of
    raising AttributeError, so `getattr` with a default is not enough.
    """
    try:
        return request.app if isinstance(request, web.Request) else None
    except AssertionError:
        return None


class AccessLogger(AbstractAccessLogger):
    """Logs one line and counts the request."""

    @property
    def enabled(self) -> bool:
        """Always on: metrics need every request even when the log level hides the line."""
        return True

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Called by aiohttp after each response."""
        bytes_in = request.get(BYTES_IN, 0)
        bytes_out = response.body_length
        app = _app_of(request)
        metrics = app.get(METRICS) if app is not None else None
        if metrics is not None:
            metrics.observe(
                route_label(request), request.method, response.status, bytes_in, bytes_out, time
            )
        if self.logger.isEnabledFor(logging.INFO):
            scope = request.get(SCOPE)
            path = request.raw_path
            if len(path) > _MAX_PATH:
                path = path[:_MAX_PATH] + "..."
            self.logger.info(
                '%s %s "%s %s" %d %d %d %.4f',
                request.remote or "-",
                scope.label if scope is not None else "-",
                request.method,
                path,
                response.status,
                bytes_in,
                bytes_out,
                time,
            )
