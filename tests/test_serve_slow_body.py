"""A client whose upload body trickles in, stalls or stops must not hold the server's upload slots.

An upload takes one of a few slots before its body is read (the slots bound
the memory of buffered bodies). A client sending one byte per 100 ms, or a
hung one, kept its slot for as long as it liked, so a handful of them stopped
every other put. Now a body gets `--body-timeout` seconds plus one second per
16 KiB; slower ones are answered 408 and the slot is freed.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from cas.errors import StoreUnavailable
from cas.put.uploader import PutOptions, Uploader
from cas.repo import Repository
from cas.store.http import HttpStore
from cas.store.registry import wrap_remote
from tests.serve_process import TOKENS, start_serve


async def _trickle(host: str, port: int, seconds: float) -> tuple[str, float]:
    """A pack PUT whose body comes one byte per 100 ms; its status line and when it came."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"PUT /v1/pack/{1:064x} HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {TOKENS['write']}\r\nContent-Length: 100000\r\n\r\n".encode()
    )
    try:
        while time.monotonic() - started < seconds:
            writer.write(b"\0")
            await writer.drain()
            try:
                line = await asyncio.wait_for(reader.readline(), 0.1)
            except TimeoutError:
                continue
            return line.decode().strip(), time.monotonic() - started
        return "still reading", time.monotonic() - started
    finally:
        writer.close()


@pytest.fixture
def server(tmp_path):
    proc = start_serve(tmp_path / "serve", "--body-timeout", "1", "--max-pack-uploads", "1")
    yield proc
    proc.stop()


def test_trickling_upload_is_refused_and_other_puts_go_on(server, tmp_path):
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}").write_bytes(os.urandom(30000))

    async def scenario():
        trickler = asyncio.create_task(_trickle(host, int(port), 12))
        await asyncio.sleep(0.3)  # the trickler holds the one pack slot
        store = wrap_remote(HttpStore(server.url, TOKENS["write"]))
        started = time.monotonic()
        try:
            await Uploader(Repository(store), PutOptions(ref="after/trickler")).put(src)
        finally:
            await store.aclose()
        return await trickler, time.monotonic() - started

    (status, trickled), put_seconds = asyncio.run(scenario())
    assert put_seconds < 8  # without the deadline it waited out the trickler's 12 s
    assert status == "HTTP/1.1 408 Request Timeout"
    assert trickled < 5
    assert "Traceback" not in server.log_text()


def test_client_gone_mid_body_is_not_a_server_error(server):
    host, port = server.url.removeprefix("http://").rsplit(":", 1)

    async def cut_off():
        _reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"PUT /v1/manifest/{2:064x} HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {TOKENS['write']}\r\nContent-Length: 5000\r\n\r\n".encode()
            + b"\0" * 100
        )
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.close()

    asyncio.run(cut_off())
    deadline = time.monotonic() + 10
    while f"/v1/manifest/{2:064x}" not in server.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(x for x in server.log_text().splitlines() if f"/v1/manifest/{2:064x}" in x)
    assert '" 400 ' in line, line
    assert "Traceback" not in server.log_text()


def test_client_retries_a_408():
    store = HttpStore("http://127.0.0.1:9")
    error = store.client.translate_status(
        408, b'{"error": "RequestTimeout", "message": "slow"}', "x", "write"
    )
    assert isinstance(error, StoreUnavailable)
