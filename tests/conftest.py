"""Shared fixtures: real stores, isolated cache/data dirs, tree helpers.

The `store` fixture is parametrised over backend fixture names, so the
conformance suite runs once per backend (local directory, the remote layers,
a real `cas serve` on loopback and the GCS emulator; a new backend adds its
fixture name to `STORE_BACKENDS`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from cas.ids import ObjectId
from cas.store.base import Kind, Store
from cas.store.local import LocalStore
from tests.gcs_emulator import BUCKET as GCS_BUCKET
from tests.gcs_emulator import Emulator, gcs_emulator  # noqa: F401 (session fixture)
from tests.serve_process import TOKENS, ServeProcess, start_serve

STORE_BACKENDS = [
    "local_backend",
    "local_durable_backend",
    "local_named_temp_backend",
    "wrapped_local_backend",
    "serve_backend",
    "gcs_backend",
]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """No test touches the user's real store or cache."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.setenv("CAS_CACHE_DIR", str(home / "cache" / "cas"))
    monkeypatch.delenv("CAS_STORE", raising=False)
    monkeypatch.delenv("CAS_CACHE_SIZE", raising=False)


class Backend:
    """A store plus ground-truth access that bypasses the `Store` interface.

    Each backend fixture yields a subclass: the conformance suite plants and
    inspects raw objects through it, so a remote backend is checked against
    what its server really holds, not against its own client.
    """

    store: Store

    def plant(self, kind: Kind, object_id: ObjectId, data: bytes) -> None:
        """Write raw bytes under a name, replacing what is there (a corrupting writer)."""
        raise NotImplementedError

    def peek(self, kind: Kind, object_id: ObjectId) -> bytes | None:
        """The raw stored bytes, or None."""
        raise NotImplementedError

    def plant_partial(self, name: str, data: bytes) -> None:
        """A half-written upload as a killed writer would leave it."""
        raise NotImplementedError

    def snapshot(self) -> object:
        """Everything the backend holds, comparable with `==` (to prove nothing changed)."""
        raise NotImplementedError


@dataclass
class LocalBackend(Backend):
    """A `LocalStore` and its directory."""

    store: Store
    root: Path

    def path(self, kind: Kind, object_id: ObjectId) -> Path:
        hexid = str(object_id)
        return self.root / kind.value / hexid[:2] / hexid

    def plant(self, kind: Kind, object_id: ObjectId, data: bytes) -> None:
        path = self.path(kind, object_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.chmod(0o644)
        path.write_bytes(data)

    def peek(self, kind: Kind, object_id: ObjectId) -> bytes | None:
        path = self.path(kind, object_id)
        return path.read_bytes() if path.exists() else None

    def plant_partial(self, name: str, data: bytes) -> None:
        (self.root / "tmp" / name).write_bytes(data)

    def snapshot(self) -> object:
        return sorted(p for p in self.root.rglob("*"))


@pytest.fixture
def local_backend(tmp_path: Path) -> Iterator[Backend]:
    root = tmp_path / "store"
    yield LocalBackend(LocalStore(root, fsync=False), root)


@pytest.fixture
def local_durable_backend(tmp_path: Path) -> Iterator[Backend]:
    """The default write path: O_TMPFILE, syncfs/fsync, then link."""
    root = tmp_path / "store"
    yield LocalBackend(LocalStore(root, fsync=True), root)


@pytest.fixture
def local_named_temp_backend(tmp_path: Path) -> Iterator[Backend]:
    """The portable write path, used where O_TMPFILE is unavailable: named temp + link."""
    root = tmp_path / "store"
    store = LocalStore(root, fsync=True)
    store.files.tmpfile_ok = False
    yield LocalBackend(store, root)


@pytest.fixture
def wrapped_local_backend(tmp_path: Path) -> Iterator[Backend]:
    """A local store inside the layers every network backend gets (retries, call cap)."""
    from cas.store.registry import wrap_remote

    root = tmp_path / "store"
    yield LocalBackend(wrap_remote(LocalStore(root, fsync=False)), root)


@pytest.fixture(scope="session")
def serve_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One real `cas serve` subprocess for the session (start-up costs about a second)."""
    server = start_serve(tmp_path_factory.mktemp("serve"))
    yield server
    server.stop()


@pytest.fixture
async def serve_backend(serve_process: ServeProcess) -> AsyncIterator[Backend]:
    """The http backend (with the remote layers) against `cas serve` over a local store.

    The store is emptied first, so each test starts fresh; ground truth is the
    server's own directory.
    """
    from cas.store.http import HttpStore
    from cas.store.registry import wrap_remote

    serve_process.reset()
    store = wrap_remote(HttpStore(serve_process.url, TOKENS["admin"]))
    yield LocalBackend(store, serve_process.root)
    await store.aclose()


class GcsBackend(Backend):
    """A `GcsStore` under a unique prefix, checked through raw JSON API calls to the emulator."""

    def __init__(self, emulator: Emulator, prefix: str) -> None:
        from cas.store.gcs.location import GcsLocation
        from cas.store.gcs.store import GcsStore

        self.emulator = emulator
        self.location = GcsLocation(GCS_BUCKET, prefix)
        self.store = GcsStore(self.location, endpoint=emulator.url, anonymous=True)

    def _object_path(self, name: str) -> str:
        return f"/storage/v1/b/{GCS_BUCKET}/o/{quote(name, safe='')}"

    def plant(self, kind: Kind, object_id: ObjectId, data: bytes) -> None:
        name = self.location.object_name(kind, object_id)
        # A media upload without a precondition: replaces whatever is there.
        status, body = self.emulator.request(
            "POST", f"/upload/storage/v1/b/{GCS_BUCKET}/o?uploadType=media&name={quote(name)}", data
        )
        assert status == 200, (status, body)

    def peek(self, kind: Kind, object_id: ObjectId) -> bytes | None:
        name = self.location.object_name(kind, object_id)
        status, body = self.emulator.request("GET", self._object_path(name) + "?alt=media")
        return body if status == 200 else None

    def plant_partial(self, name: str, data: bytes) -> None:
        """What an interrupted writer can leave: an unfinished resumable upload to the final
        name, and a foreign object whose name is not an id, in every kind's namespace."""
        hexid = name.split(".")[0]
        for kind in Kind:
            final = self.location.kind_prefix(kind) + hexid
            status, _ = self.emulator.request(
                "POST",
                f"/upload/storage/v1/b/{GCS_BUCKET}/o?uploadType=resumable&name={quote(final)}",
                b"{}",
                {"Content-Type": "application/json"},
            )
            assert status == 200
            status, _ = self.emulator.request(
                "POST",
                f"/upload/storage/v1/b/{GCS_BUCKET}/o?uploadType=media"
                f"&name={quote(self.location.kind_prefix(kind) + name)}",
                data,
            )
            assert status == 200

    def snapshot(self) -> object:
        import json

        items, token = [], ""
        while True:
            query = f"?prefix={quote(self.location.base)}&pageToken={quote(token)}"
            status, body = self.emulator.request("GET", f"/storage/v1/b/{GCS_BUCKET}/o{query}")
            assert status == 200
            page = json.loads(body)
            items += [(i["name"], i["size"], i["md5Hash"]) for i in page.get("items", ())]
            token = page.get("nextPageToken", "")
            if not token:
                return sorted(items)


@pytest.fixture
async def gcs_backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """The emulator's bucket under a prefix of this test's own (restic's test-<nanos>)."""
    backend = GcsBackend(request.getfixturevalue("gcs_emulator"), f"t-{uuid.uuid4().hex}")
    yield backend
    await backend.store.aclose()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", STORE_BACKENDS, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.getfixturevalue(request.param)


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.store


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything under root: type, mode, size, content hash, link target, mtime."""
    import hashlib
    import stat

    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            full = Path(dirpath) / name
            rel = str(full.relative_to(root))
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(full), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                digest = hashlib.sha256(full.read_bytes()).hexdigest()
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_size, digest, st.st_mtime_ns)
    return out
