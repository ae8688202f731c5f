"""`cas serve` as clients meet it: token scopes, upload verification, bad names, metrics, logs.

Every test talks to a real server subprocess on 127.0.0.1 (tests/serve_process.py),
either with raw HTTP (to see statuses) or through the http store backend (to
see the typed errors users get).
"""

from __future__ import annotations

import os
import pickle
import re
import time

import aiohttp
import pytest
import yarl

from cas import codec
from cas.errors import AlreadyExists, IntegrityError, ObjectNotFound, PermissionDenied, UsageError
from cas.httpapi import MAX_BATCH_OBJECTS, MAX_MISSING_IDS, RECORD_HEADER
from cas.ids import hash_bytes
from cas.objects import MAX_MANIFEST_BYTES
from cas.server.verify import frame_bound
from cas.store.base import Kind
from cas.store.http import HttpStore
from tests.conftest import LocalBackend
from tests.serve_process import TOKENS, ServeProcess, start_serve
from tests.store.stored import stored


def packed(content: bytes, level: int = 3):
    """A pack holding `content`: the object a client stores most."""
    return stored(Kind.PACK, content, level)


def frame(content: bytes):
    """A manifest-kind object: one zstd frame (what batches carry)."""
    return stored(Kind.MANIFEST, content)


def auth(scope: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[scope]}"} if scope else {}


@pytest.fixture
def server(serve_process: ServeProcess) -> ServeProcess:
    serve_process.reset()
    return serve_process


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def clients(server):
    """One http store per scope, plus one without a token."""
    stores = {scope: HttpStore(server.url, TOKENS.get(scope)) for scope in (*TOKENS, None)}
    yield stores
    for store in stores.values():
        await store.aclose()


def backend_of(server: ServeProcess, store) -> LocalBackend:
    return LocalBackend(store, server.root)


# ---------------------------------------------------------------- scopes


async def test_read_token_reads_but_cannot_put(server, clients):
    object_id, blob = packed(b"read scope")
    assert await clients["write"].put_if_absent(Kind.PACK, object_id, blob) is True
    assert await clients["read"].get(Kind.PACK, object_id, max_size=1000) == blob
    assert await clients["read"].missing(Kind.PACK, [object_id]) == set()
    other_id, other = packed(b"not allowed")
    with pytest.raises(PermissionDenied, match=r"'read' token .* needs the 'write' scope"):
        await clients["read"].put_if_absent(Kind.PACK, other_id, other)
    with pytest.raises(PermissionDenied):
        await clients["read"].create_ref("ci/read", object_id)
    assert backend_of(server, None).peek(Kind.PACK, other_id) is None


async def test_write_token_creates_but_never_deletes_or_overwrites(server, clients):
    object_id, blob = packed(b"write scope")
    writer = clients["write"]
    assert await writer.put_if_absent(Kind.PACK, object_id, blob) is True
    await writer.create_ref("ci/main/1", object_id)
    with pytest.raises(PermissionDenied, match="'admin' scope"):
        await writer.delete(Kind.PACK, object_id)
    with pytest.raises(PermissionDenied, match="'admin' scope"):
        await writer.delete_ref("ci/main/1")
    with pytest.raises(AlreadyExists):
        await writer.create_ref("ci/main/1", hash_bytes(b"another manifest"))
    assert await writer.read_ref("ci/main/1") == object_id
    assert backend_of(server, None).peek(Kind.PACK, object_id) == blob


async def test_admin_token_deletes(server, clients):
    object_id, blob = packed(b"admin scope")
    admin = clients["admin"]
    await admin.put_if_absent(Kind.PACK, object_id, blob)
    await admin.create_ref("release", object_id)
    await admin.delete(Kind.PACK, object_id)
    await admin.delete_ref("release")
    assert await admin.missing(Kind.PACK, [object_id]) == {object_id}
    assert [r async for r in admin.list_refs()] == []


async def test_no_token_is_401_and_a_wrong_scope_is_403(server, http):
    object_id, blob = packed(b"statuses")
    url = f"{server.url}/v1/pack/{object_id}"
    async with http.get(url) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await response.json())["scope"] == "read"
    async with http.get(url, headers={"Authorization": "Bearer not-a-token-at-all"}) as response:
        assert response.status == 401
    async with http.get(url, headers={"Authorization": f"Basic {TOKENS['admin']}"}) as response:
        assert response.status == 401
    async with http.put(url, data=blob, headers=auth("read")) as response:
        assert response.status == 403
        assert (await response.json())["scope"] == "write"
    async with http.put(url, data=blob, headers=auth("write")) as response:
        assert response.status == 201
    async with http.put(url, data=blob, headers=auth("write")) as response:
        assert response.status == 200
    async with http.delete(url, headers=auth("write")) as response:
        assert response.status == 403
    async with http.delete(url, headers=auth("admin")) as response:
        assert response.status == 204


async def test_client_without_token_gets_a_message_naming_cas_token(server, clients):
    with pytest.raises(PermissionDenied, match=r"CAS_TOKEN is not set; .*'read' scope"):
        await clients[None].get(Kind.PACK, hash_bytes(b"x"), max_size=10)
    wrong = HttpStore(server.url, "wrong-token-0123456789")
    try:
        with pytest.raises(PermissionDenied, match="CAS_TOKEN is not accepted"):
            await wrong.missing(Kind.PACK, [hash_bytes(b"x")])
    finally:
        await wrong.aclose()


@pytest.fixture(scope="module")
def anonymous_server(tmp_path_factory):
    server = start_serve(tmp_path_factory.mktemp("anon"), "--anonymous-read")
    yield server
    server.stop()


async def test_anonymous_read_serves_reads_without_a_token_but_never_writes(anonymous_server):
    object_id, blob = packed(b"public")
    writer = HttpStore(anonymous_server.url, TOKENS["write"])
    anonymous = HttpStore(anonymous_server.url)
    try:
        await writer.put_if_absent(Kind.PACK, object_id, blob)
        assert await anonymous.get(Kind.PACK, object_id, max_size=1000) == blob
        assert {i.id async for i in anonymous.list(Kind.PACK)} == {object_id}
        other_id, other = packed(b"anonymous write")
        with pytest.raises(PermissionDenied, match="'write' scope"):
            await anonymous.put_if_absent(Kind.PACK, other_id, other)
        with pytest.raises(PermissionDenied):
            await anonymous.delete(Kind.PACK, object_id)
        # A token that is presented must still be valid.
        wrong = HttpStore(anonymous_server.url, "wrong-token-0123456789")
        with pytest.raises(PermissionDenied, match="not accepted"):
            await wrong.get(Kind.PACK, object_id, max_size=1000)
        await wrong.aclose()
    finally:
        await writer.aclose()
        await anonymous.aclose()


def test_token_file_problems_stop_the_server_with_one_line(tmp_path):
    from tests.test_cli import cas

    bad = tmp_path / "tokens"
    bad.write_text("# scopes\nsuperuser abcdefghijklmnopqrstuvwxyz\n")
    proc = cas("serve", "--store", str(tmp_path / "s"), "--token-file", str(bad), check=False)
    assert proc.returncode == 2
    assert proc.stderr.decode() == (
        f"cas: error: {bad}:2: unknown scope 'superuser': expected read, write or admin\n"
    )
    bad.write_text("write short\n")
    proc = cas("serve", "--store", str(tmp_path / "s"), "--token-file", str(bad), check=False)
    assert proc.returncode == 2 and f"{bad}:1: token shorter than 16" in proc.stderr.decode()
    proc = cas("serve", "--store", str(tmp_path / "s"), check=False)
    assert proc.returncode == 2 and "--token-file" in proc.stderr.decode()


# ---------------------------------------------------------------- verification


async def test_corrupt_frames_are_refused_with_422_and_not_stored(server, http):
    """Manifests and gc records are one zstd frame whose content hashes to the name."""
    object_id = hash_bytes(b"the real content")
    cases = {
        "other content": codec.encode(b"different content"),
        "not zstd": b"plain bytes, no frame",
        "truncated frame": codec.encode(os.urandom(5000))[:-10],
        "empty body": b"",
    }
    for kind in ("manifest", "gc"):
        url = f"{server.url}/v1/{kind}/{object_id}"
        for label, body in cases.items():
            async with http.put(url, data=body, headers=auth("write")) as response:
                assert response.status == 422, (kind, label)
                assert str(object_id) in (await response.json())["message"], label
    ground = LocalBackend(None, server.root)
    assert ground.peek(Kind.MANIFEST, object_id) is None
    assert ground.peek(Kind.GC, object_id) is None


async def test_client_sees_a_refused_upload_as_an_integrity_error(server, clients):
    object_id = hash_bytes(b"named")
    with pytest.raises(IntegrityError, match=str(object_id)):
        await clients["write"].put_if_absent(Kind.PACK, object_id, packed(b"other")[1])
    with pytest.raises(IntegrityError, match=str(object_id)):
        await clients["write"].put_if_absent(Kind.MANIFEST, object_id, codec.encode(b"other"))


async def test_decompression_bomb_is_refused_without_inflating(server, http):
    content = bytes(MAX_MANIFEST_BYTES + 1)
    object_id, blob = hash_bytes(content), codec.encode(content)
    assert len(blob) < 4096  # small on the wire, past the limit once inflated
    async with http.put(
        f"{server.url}/v1/manifest/{object_id}", data=blob, headers=auth("write")
    ) as response:
        assert response.status == 422
        assert "more than the" in (await response.json())["message"]


async def test_oversize_bodies_are_refused_with_413(server, http):
    object_id = hash_bytes(b"too big")
    too_big = frame_bound(MAX_MANIFEST_BYTES) + 1
    async with http.put(
        f"{server.url}/v1/manifest/{object_id}", data=bytes(too_big), headers=auth("write")
    ) as response:
        assert response.status == 413

    async def chunked():  # no Content-Length: the cap applies while streaming
        for _ in range(3):
            yield bytes(1 << 20)

    async with http.put(
        f"{server.url}/v1/manifest/{object_id}", data=chunked(), headers=auth("write")
    ) as response:
        assert response.status == 413
    assert not list((server.root / "manifest").rglob("*/*"))


# ---------------------------------------------------------------- bad names


@pytest.mark.parametrize(
    "path",
    [
        "/v1/pack/" + "A" * 64,
        "/v1/chunk/" + "0" * 64,  # a format 1 namespace
        "/v1/tree/" + "0" * 64,
        "/v1/pack/" + "0" * 63,
        "/v1/pack/" + "0" * 65,
        "/v1/pack/zz",
        "/v1/nosuchkind/" + "0" * 64,
        "/v1/pack/../../../etc/passwd",
        "/v1/pack/..%2f..%2fetc%2fpasswd",
        "/v1/refs/../../escape",
        "/v1/refs/ci/%2e%2e/%2e%2e/escape",
        "/v1/refs/ci//x",
        "/v1/refs/.hidden",
        "/v1/refs/-option",
        "/v1/refs/a%00b",
        "/v1/pack?prefix=../",
    ],
)
async def test_bad_names_and_traversal_are_400(server, http, path):
    before = LocalBackend(None, server.root).snapshot()
    url = yarl.URL(server.url + path, encoded=True)
    for method in ("GET",) if "?" in path else ("GET", "PUT", "DELETE"):
        async with http.request(
            method, url, data=b'{"target": "' + b"0" * 64 + b'"}', headers=auth("admin")
        ) as response:
            assert response.status == 400, (method, path, response.status)
            assert (await response.json())["error"] == "UsageError"
    assert LocalBackend(None, server.root).snapshot() == before
    assert not (server.root.parent / "escape").exists()


async def test_missing_refuses_bad_bodies_with_400(server, http):
    url = f"{server.url}/v1/pack/missing"
    for body in (b"not json", b'{"ids": "abc"}', b'{"ids": ["ABC"]}', b"[]"):
        async with http.post(url, data=body, headers=auth("read")) as response:
            assert response.status == 400, body
    too_many = {"ids": ["0" * 64] * (MAX_MISSING_IDS + 1)}
    async with http.post(url, json=too_many, headers=auth("read")) as response:
        assert response.status == 400


async def test_missing_answers_thousands_of_ids_in_one_request(server, clients):
    present_id, blob = packed(b"present")
    await clients["write"].put_if_absent(Kind.PACK, present_id, blob)
    ids = [hash_bytes(b"%d" % i) for i in range(20_000)] + [present_id]
    before = _count(server, 'route="/v1/{kind}/missing"')
    assert await clients["read"].missing(Kind.PACK, ids) == set(ids) - {present_id}
    assert _count(server, 'route="/v1/{kind}/missing"') == before + 1


# ---------------------------------------------------------------- health, metrics, log


def _metrics(server: ServeProcess) -> str:
    import urllib.request

    with urllib.request.urlopen(server.url + "/metrics") as response:
        return response.read().decode()


def _count(server: ServeProcess, *labels: str, name: str = "cas_http_requests_total") -> float:
    total = 0.0
    for line in _metrics(server).splitlines():
        if line.startswith(name + "{") and all(label in line for label in labels):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_health_needs_no_token(server, http):
    async with http.get(f"{server.url}/v1/health") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ok"


async def test_metrics_count_requests_bytes_and_errors_by_route(server, clients):
    route = 'route="/v1/{kind}/{object_id}"'
    puts = _count(server, route, 'method="PUT"', 'status="201"')
    errors = _count(server, route, 'method="DELETE"', name="cas_http_errors_total")
    bytes_in = _count(server, route, 'method="PUT"', name="cas_http_request_bytes_total")
    object_id, blob = packed(os.urandom(10_000))
    await clients["write"].put_if_absent(Kind.PACK, object_id, blob)
    with pytest.raises(PermissionDenied):
        await clients["write"].delete(Kind.PACK, object_id)
    assert _count(server, route, 'method="PUT"', 'status="201"') == puts + 1
    assert _count(server, route, 'method="DELETE"', name="cas_http_errors_total") == errors + 1
    after = _count(server, route, 'method="PUT"', name="cas_http_request_bytes_total")
    assert after == bytes_in + len(blob)


async def test_access_log_has_one_line_per_request(server, clients):
    object_id, blob = packed(b"logged")
    await clients["write"].put_if_absent(Kind.PACK, object_id, blob)
    pattern = re.compile(
        rf'127\.0\.0\.1 write "PUT /v1/pack/{object_id}" 201 {len(blob)} \d+ [0-9.]+$'
    )
    deadline = time.monotonic() + 5
    while not any(pattern.search(line) for line in server.log_text().splitlines()):
        assert time.monotonic() < deadline, server.log_text()[-2000:]
        time.sleep(0.05)
    lines = [line for line in server.log_text().splitlines() if str(object_id) in line]
    assert len(lines) == 1


# ---------------------------------------------------------------- client


async def test_unreachable_server_is_store_unavailable(tmp_path):
    from cas.errors import StoreUnavailable

    store = HttpStore("http://127.0.0.1:9", TOKENS["read"])
    try:
        with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1:9"):
            await store.missing(Kind.PACK, [hash_bytes(b"x")])
    finally:
        await store.aclose()


async def test_opener_reopens_the_same_server_after_pickling(server, clients):
    object_id, blob = packed(b"opener")
    await clients["write"].put_if_absent(Kind.PACK, object_id, blob)
    reopened = pickle.loads(pickle.dumps(clients["read"].opener()))()
    try:
        assert await reopened.get(Kind.PACK, object_id, max_size=1000) == blob
    finally:
        await reopened.aclose()


@pytest.mark.parametrize(
    "url", ["ftp://h", "http://", "http://user:pw@h:1", "http://h:1/?q=1", "http://h:99999"]
)
def test_bad_store_urls_are_usage_errors(url):
    with pytest.raises(UsageError):
        HttpStore(url)


def test_cli_put_and_get_round_trip_through_the_server(server, tmp_path):
    from tests.conftest import snapshot
    from tests.test_cli import cas

    src = tmp_path / "build"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "app").write_bytes(os.urandom(3 << 20))
    (src / "README").write_text("hello\n")
    os.symlink("bin/app", src / "app-link")
    write = {"CAS_TOKEN": TOKENS["write"]}
    read = {"CAS_TOKEN": TOKENS["read"]}
    manifest_id = (
        cas("put", "--store", server.url, "--ref", "ci/1", str(src), "-q", env=write)
        .stdout.decode()
        .strip()
    )
    cas("get", "--store", server.url, "ci/1", str(tmp_path / "out"), env=read)
    assert snapshot(tmp_path / "out") == snapshot(src)
    # A read-only token cannot put: one line, the permission exit code.
    proc = cas("put", "--store", server.url, str(src), env=read, check=False)
    assert proc.returncode == PermissionDenied.exit_code
    assert proc.stderr.decode().count("\n") == 1 and "'write' scope" in proc.stderr.decode()
    assert len(manifest_id) == 64


# ---------------------------------------------------------------- batches


def _records(*items: tuple[bytes, bytes]) -> bytes:
    return b"".join(RECORD_HEADER.pack(i, len(d)) + d for i, d in items)


async def test_put_many_and_get_many_use_one_request_per_batch(server, clients):
    items = [frame(b"batch %d" % i) for i in range(300)]
    puts = _count(server, 'route="/v1/{kind}/put"')
    gets = _count(server, 'route="/v1/{kind}/get"')
    created = await clients["write"].put_many(Kind.MANIFEST, items)
    assert created == [True] * 300
    assert await clients["write"].put_many(Kind.MANIFEST, items[:2]) == [False, False]
    got = await clients["read"].get_many(Kind.MANIFEST, [i for i, _ in items], max_size=100)
    assert got == dict(items)
    assert _count(server, 'route="/v1/{kind}/put"') == puts + 2
    assert _count(server, 'route="/v1/{kind}/get"') == gets + 1


async def test_packs_travel_one_put_each_and_the_batch_endpoint_refuses_them(server, clients, http):
    packs = [packed(b"pack %d" % i) for i in range(5)]
    batches = _count(server, 'route="/v1/{kind}/put"')
    single = _count(server, 'route="/v1/{kind}/{object_id}"', 'method="PUT"')
    assert await clients["write"].put_many(Kind.PACK, packs) == [True] * 5
    assert _count(server, 'route="/v1/{kind}/put"') == batches
    assert _count(server, 'route="/v1/{kind}/{object_id}"', 'method="PUT"') == single + 5
    other = packed(b"batched pack")
    async with http.post(
        f"{server.url}/v1/pack/put", data=_records(other), headers=auth("write")
    ) as response:
        assert response.status == 400
        assert "one per request" in (await response.json())["message"]
    assert LocalBackend(None, server.root).peek(Kind.PACK, other[0]) is None


async def test_a_batch_with_one_corrupt_object_stores_nothing(server, clients):
    good = [frame(b"good %d" % i) for i in range(3)]
    bad_id = hash_bytes(b"claimed")
    with pytest.raises(IntegrityError, match=str(bad_id)):
        await clients["write"].put_many(Kind.MANIFEST, [*good, (bad_id, codec.encode(b"other"))])
    ground = LocalBackend(None, server.root)
    assert all(ground.peek(Kind.MANIFEST, i) is None for i, _ in good)


async def test_batch_get_enforces_max_size_and_names_the_absent(server, clients):
    (small_id, small), (big_id, big) = packed(b"s"), packed(os.urandom(1500))
    await clients["write"].put_many(Kind.PACK, [(small_id, small), (big_id, big)])
    with pytest.raises(IntegrityError, match=str(big_id)):
        await clients["read"].get_many(Kind.PACK, [small_id, big_id], max_size=1000)
    absent = hash_bytes(b"absent")
    with pytest.raises(ObjectNotFound, match=str(absent)):
        await clients["read"].get_many(Kind.PACK, [small_id, absent], max_size=1000)


async def test_malformed_batches_are_refused(server, http):
    url = f"{server.url}/v1/manifest/put"
    object_id, blob = frame(b"framed")
    whole = _records((object_id, blob))
    for body, status in (
        (whole[:20], 400),  # truncated header
        (whole[:-1], 400),  # truncated data
        (RECORD_HEADER.pack(object_id, frame_bound(MAX_MANIFEST_BYTES) + 1), 413),
        (_records(*[(object_id, blob)] * (MAX_BATCH_OBJECTS + 1)), 400),
    ):
        async with http.post(url, data=body, headers=auth("write")) as response:
            assert response.status == status, (body[:50], await response.text())
    async with http.post(url, data=whole, headers=auth("read")) as response:
        assert response.status == 403
    get_url = f"{server.url}/v1/pack/get"
    for payload in ({"ids": ["xyz"], "max_size": 10}, {"ids": []}, {"ids": [], "max_size": -1}):
        async with http.post(get_url, json=payload, headers=auth("read")) as response:
            assert response.status == 400, payload


# ---------------------------------------------------------------- https


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    import trustme

    workdir = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(workdir / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(workdir / "cert.pem"))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(workdir / "cert.pem"), append=True)
    ca.cert_pem.write_to_path(str(workdir / "ca.pem"))
    server = start_serve(
        workdir, "--tls-cert", str(workdir / "cert.pem"), "--tls-key", str(workdir / "key.pem")
    )
    yield server, workdir / "ca.pem"
    server.stop()


def test_https_round_trip_and_an_untrusted_certificate_fails_at_once(tls_server, tmp_path):
    from tests.conftest import snapshot
    from tests.test_cli import cas

    server, ca = tls_server
    assert server.url.startswith("https://")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(100_000))
    trusted = {"CAS_TOKEN": TOKENS["write"], "SSL_CERT_FILE": str(ca)}
    manifest_id = cas("put", "--store", server.url, str(src), "-q", env=trusted).stdout.strip()
    cas("get", "--store", server.url, manifest_id.decode(), str(tmp_path / "out"), env=trusted)
    assert snapshot(tmp_path / "out") == snapshot(src)
    started = time.monotonic()
    proc = cas("put", "--store", server.url, str(src), env={"CAS_TOKEN": "x"}, check=False)
    assert proc.returncode == UsageError.exit_code
    assert "TLS certificate is not trusted" in proc.stderr.decode()
    assert time.monotonic() - started < 20  # not retried as if it were transient


async def test_a_public_read_only_server_and_a_clean_stop(tmp_path, http):
    """`--anonymous-read` alone: anyone reads, nobody writes; SIGTERM stops it with status 0."""
    server = start_serve(tmp_path / "public", "--anonymous-read", tokens=None)
    try:
        object_id, blob = packed(b"public only")
        url = f"{server.url}/v1/pack/{object_id}"
        async with http.put(url, data=blob) as response:
            assert response.status == 401
        async with http.put(url, data=blob, headers=auth("admin")) as response:
            assert response.status == 401  # no token is valid on this server
        async with http.get(url) as response:
            assert response.status == 404
    finally:
        server.proc.terminate()
        assert server.proc.wait(10) == 0
