"""A raw HTTP/1.1 exchange over a socket, for sending what a well-behaved client never would.

aiohttp's client (rightly) refuses to send a negative Content-Length, a
broken chunked body or a header with control characters; a fuzzer needs to.
One request per connection (`Connection: close`), answer read to EOF.
"""

from __future__ import annotations

import contextlib
import json
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


def exchange(url: str, request: bytes, timeout: float = 15, *, half_close: bool = False) -> Answer:
    """Send `request` (complete bytes) to the server of `url`, return its parsed answer.

    `half_close` shuts our side after the request, so a body shorter than its
    framing promised ends there (aiohttp then drops the connection unanswered).
    """
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        # The server may answer (and close) before reading a refused body.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        raw = b""
        while not _complete(raw):
            try:
                piece = sock.recv(65536)
            except ConnectionResetError:
                break
            if not piece:
                break
            raw += piece
    return parse_answer(raw)


def _complete(raw: bytes) -> bool:
    """Whether `raw` holds a whole answer (the server may keep the socket open after it,
    for instance to drain a refused body it was promised)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return False
    fields = head.lower().split(b"\r\n")
    if any(f.startswith(b"transfer-encoding:") and b"chunked" in f for f in fields):
        return body.endswith(b"0\r\n\r\n")
    for field in fields:
        if field.startswith(b"content-length:"):
            return len(body) >= int(field.split(b":")[1])
    return head.startswith(b"HTTP/1.1 1") is False and b" 204 " in fields[0]


def parse_answer(raw: bytes) -> Answer:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise AssertionError(f"no complete answer from the server: {raw[:200]!r}")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    return Answer(status, headers, body)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)


def request_bytes(
    method: str,
    path: str | bytes,
    headers: list[tuple[str | bytes, str | bytes]] = (),
    body: bytes = b"",
    *,
    content_length: bool = True,
) -> bytes:
    """A request with `Host` and `Connection: close`; Content-Length from `body` unless told not."""

    def b(x):
        return x if isinstance(x, bytes) else x.encode("utf-8", "surrogateescape")

    lines = [b(method) + b" " + b(path) + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [b(name) + b": " + b(value) for name, value in headers]
    if content_length:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
