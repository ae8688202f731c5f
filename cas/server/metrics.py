"""Request counters in Prometheus text format, for `GET /metrics`.

Counted per route (the URL template, e.g. `/v1/{kind}/{object_id}`, so
label values stay few whatever clients send), method and status: requests,
body bytes in and out, errors (status >= 400), and request duration. Each
app has its own registry, so several servers in one process do not mix
their numbers.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The server's counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("route", "method", "status")
        self.requests = Counter(
            "cas_http_requests", "Requests answered", labels, registry=self.registry
        )
        self.errors = Counter(
            "cas_http_errors",
            "Requests answered with status >= 400",
            labels,
            registry=self.registry,
        )
        self.bytes_in = Counter(
            "cas_http_request_bytes",
            "Request body bytes received",
            ("route", "method"),
            registry=self.registry,
        )
        self.bytes_out = Counter(
            "cas_http_response_bytes",
            "Response body bytes sent",
            ("route", "method"),
            registry=self.registry,
        )
        self.duration = Histogram(
            "cas_http_request_duration_seconds",
            "Time to answer a request",
            ("route", "method"),
            registry=self.registry,
        )

    def observe(
        self, route: str, method: str, status: int, bytes_in: int, bytes_out: int, seconds: float
    ) -> None:
        """Count one finished request."""
        code = str(status)
        self.requests.labels(route, method, code).inc()
        if status >= 400:
            self.errors.labels(route, method, code).inc()
        self.bytes_in.labels(route, method).inc(bytes_in)
        self.bytes_out.labels(route, method).inc(bytes_out)
        self.duration.labels(route, method).observe(seconds)

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)
