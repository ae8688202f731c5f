"""The JSON API batch endpoint: up to 100 metadata requests in one HTTP round trip.

`missing` is the call a put makes most: one existence check per chunk. With
tens of milliseconds per request to a cloud bucket, packing 100 checks into
one `POST /batch/storage/v1` (a `multipart/mixed` body of HTTP requests,
answered by a `multipart/mixed` body of HTTP responses) cuts the round
trips a hundredfold. Each inner call still counts as one operation for
billing and rate limits.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from typing import Final

MAX_CALLS: Final = 100  # the JSON API's limit per batch
_RESPONSE_ID: Final = re.compile(r"<?response-(\d+)>?")


@dataclass(frozen=True)
class SubAnswer:
    """One inner response: its HTTP status and body."""

    status: int
    body: bytes


class BatchGarbled(Exception):
    """The batch answer could not be read (becomes `StoreUnavailable`)."""


def batch_body(paths: Sequence[str], boundary: str) -> bytes:
    """A batch of GETs, one per absolute path (with its query string)."""
    parts = [
        f"--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <{index}>\r\n\r\n"
        # The CRLF before the next boundary belongs to the boundary, so the blank
        # line that ends the inner request's headers needs one more.
        f"GET {path} HTTP/1.1\r\n\r\n\r\n"
        for index, path in enumerate(paths)
    ]
    parts.append(f"--{boundary}--\r\n")
    return "".join(parts).encode()


def parse_batch(content_type: str, body: bytes, count: int) -> list[SubAnswer]:
    """The inner responses in request order (matched by `Content-ID: <response-N>`)."""
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise BatchGarbled("not a multipart answer")
    answers: list[SubAnswer | None] = [None] * count
    for position, part in enumerate(message.iter_parts()):
        match = _RESPONSE_ID.fullmatch(str(part.get("Content-ID", "")).strip())
        index = int(match.group(1)) if match else position
        raw = part.get_payload(decode=True)
        if not isinstance(raw, bytes) or not 0 <= index < count:
            raise BatchGarbled(f"unexpected part {position}")
        answers[index] = _parse_http_response(raw)
    if any(a is None for a in answers):
        raise BatchGarbled(f"{answers.count(None)} of {count} answers missing")
    return [a for a in answers if a is not None]


def _parse_http_response(raw: bytes) -> SubAnswer:
    head, _, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    status_line = head.split(b"\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/"):
        raise BatchGarbled(f"bad status line {status_line[:3]!r}")
    try:
        return SubAnswer(int(status_line[1]), body.strip())
    except ValueError:
        raise BatchGarbled(f"bad status {status_line[1]!r}") from None
