"""GCS backend beyond the conformance suite: URLs, error mapping, credentials, processes.

Errors the emulator can produce (a missing bucket) are tested against it;
403s, 5xx, rate limits, dropped connections and real GCS error texts come
from a small scripted aiohttp server on 127.0.0.1 (tests/store/gcs_answers.py).
"""

from __future__ import annotations

import base64
import json
import pickle
import uuid
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import google_crc32c
import pytest

from cas.errors import (
    CasError,
    IntegrityError,
    ObjectNotFound,
    PermissionDenied,
    StoreUnavailable,
    UsageError,
)
from cas.ids import hash_bytes
from cas.store.base import Kind
from cas.store.gcs import GcsStore
from cas.store.gcs_location import GcsLocation
from cas.store.registry import open_store, wrap_remote
from cas.store.retrying import RetryPolicy
from tests.gcs_emulator import BUCKET
from tests.store.gcs_answers import (
    ScriptedGcs,
    drop_connection,
    gcs_error,
    object_resource,
    stall,
    unsized,
)

ID = hash_bytes(b"chunk")
FAST = RetryPolicy(attempts=4, initial=0.01, maximum=0.02, deadline=5)


@pytest.fixture
async def scripted():
    server = ScriptedGcs()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def scripted_store(scripted):
    store = GcsStore(GcsLocation("b", "p"), endpoint=scripted.url, anonymous=True, timeout=1.0)
    yield store
    await store.aclose()


# ------------------------------------------------------------------ URLs


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("gs://my-bucket", "my-bucket", ""),
        ("gs://my-bucket/", "my-bucket", ""),
        ("gs://my.bucket_1/ci/main", "my.bucket_1", "ci/main"),
        ("gs://bkt/team/cas/", "bkt", "team/cas"),
    ],
)
def test_gs_urls_parse(url, bucket, prefix):
    location = GcsLocation.parse(url)
    assert (location.bucket, location.prefix) == (bucket, prefix)


@pytest.mark.parametrize(
    "url",
    [
        "gs://",
        "gs:///prefix",
        "gs://UPPER/x",
        "gs://ab",
        "gs://-bucket",
        "gs://b..b/x",
        "gs://user@bucket/x",
        "gs://bucket:443/x",
        "gs://bucket/a/../b",
        "gs://bucket/a//b",
        "gs://bucket/.hidden",
        "gs://bucket/x?generation=1",
        "gs://bucket/x#frag",
        "gs://bucket/sp ace",
    ],
)
def test_bad_gs_urls_are_usage_errors_naming_the_url(url):
    with pytest.raises(UsageError, match="gs://"):
        open_store(url)


def test_kinds_map_to_separate_prefixes_including_new_ones():
    location = GcsLocation("b", "team/cas")
    prefixes = {location.kind_prefix(kind) for kind in Kind}
    assert len(prefixes) == len(Kind)
    assert all(p.startswith("team/cas/") and p.endswith("/") for p in prefixes)
    assert location.refs_prefix not in prefixes
    assert location.object_name(Kind.CHUNK, ID) == f"team/cas/chunk/{ID}"


# ------------------------------------------------------------------ emulator facts


def test_emulator_enforces_create_only_on_multipart_uploads_only(gcs_emulator):
    """What the emulator can and cannot show.

    fake-gcs-server answers 412 to a second multipart upload with
    `ifGenerationMatch=0`, the only upload type `GcsStore` uses, so the
    conformance suite's create-only tests are real. It does not enforce the
    precondition on media uploads, and it does not check the CRC32C sent with an
    upload: those behaviours of real GCS (documented by Google) are not shown here.
    If this test fails, the emulator improved: tighten the tests that rely on it.
    """
    name = f"facts-{uuid.uuid4().hex}"

    def multipart(data: bytes, crc: str) -> int:
        meta = json.dumps({"name": name, "crc32c": crc}).encode()
        body = (
            b"--B\r\nContent-Type: application/json\r\n\r\n" + meta + b"\r\n--B\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n--B--\r\n"
        )
        return gcs_emulator.request(
            "POST",
            f"/upload/storage/v1/b/{BUCKET}/o?uploadType=multipart&ifGenerationMatch=0",
            body,
            {"Content-Type": "multipart/related; boundary=B"},
        )[0]

    assert multipart(b"first", "AAAAAA==") == 200  # wrong CRC32C accepted: not checked
    assert multipart(b"second", "AAAAAA==") == 412  # create-only enforced
    media = gcs_emulator.request(
        "POST", f"/upload/storage/v1/b/{BUCKET}/o?uploadType=media&ifGenerationMatch=0&name={name}"
    )
    assert media[0] == 200  # not enforced on media uploads: it overwrote
    assert gcs_emulator.request("GET", f"/storage/v1/b/{BUCKET}/o/{name}?alt=media")[1] == b""


async def test_missing_bucket_is_object_not_found_naming_the_bucket(gcs_emulator):
    store = wrap_remote(
        GcsStore(GcsLocation("no-such-bucket", "ci"), endpoint=gcs_emulator.url, anonymous=True),
        FAST,
    )
    async with store:
        with pytest.raises(ObjectNotFound, match="bucket gs://no-such-bucket does not exist"):
            await store.put_if_absent(Kind.CHUNK, ID, b"x")
        with pytest.raises(ObjectNotFound, match="bucket gs://no-such-bucket does not exist"):
            _ = [i async for i in store.list(Kind.CHUNK)]
        with pytest.raises(ObjectNotFound, match="bucket gs://no-such-bucket does not exist"):
            await store.create_ref("ci/1", ID)


async def test_open_store_gives_retrying_layers_and_a_picklable_opener(gcs_emulator, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.url)
    url = f"gs://{BUCKET}/open-{uuid.uuid4().hex}"
    store = open_store(url)
    assert store.url == url
    assert type(store).__name__ == "RetryingStore"
    opener = pickle.loads(pickle.dumps(store.opener()))
    async with store:
        await store.put_if_absent(Kind.CHUNK, ID, b"from-parent")
    # A worker process opens its own client through the opener and sees the same objects.
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        got = pool.submit(_read_and_write_in_worker, opener).result(timeout=60)
    assert got == b"from-parent"
    async with open_store(url) as again:
        assert await again.get(Kind.CHUNK, hash_bytes(b"w"), max_size=100) == b"from-worker"


def _read_and_write_in_worker(opener) -> bytes:
    import asyncio

    async def work() -> bytes:
        async with opener() as store:
            await store.put_if_absent(Kind.CHUNK, hash_bytes(b"w"), b"from-worker")
            return await store.get(Kind.CHUNK, ID, max_size=100)

    return asyncio.run(work())


# ------------------------------------------------------------------ what the client sends


async def test_uploads_are_create_only_multipart_with_crc32c(scripted, scripted_store):
    scripted.script = [object_resource("p/chunk/x")]
    data = b"payload" * 100
    assert await scripted_store.put_if_absent(Kind.CHUNK, ID, data) is True
    sent = scripted.requests[0]
    assert sent.method == "POST" and sent.path == "/upload/storage/v1/b/b/o"
    assert sent.query["uploadType"] == "multipart" and sent.query["ifGenerationMatch"] == "0"
    boundary = sent.headers["Content-Type"].split("boundary=")[1]
    parts = sent.body.split(f"--{boundary}".encode())
    meta = json.loads(parts[1].split(b"\r\n\r\n", 1)[1])
    assert meta["name"] == f"p/chunk/{ID}"
    expected = base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode()
    assert meta["crc32c"] == expected  # real GCS refuses the upload if the bytes differ
    assert parts[2].split(b"\r\n\r\n", 1)[1] == data + b"\r\n"


async def test_object_names_are_one_escaped_path_segment(scripted):
    """Real GCS needs `/` in an object name sent as %2F (the emulator accepts either)."""
    store = GcsStore(GcsLocation("b", "team/cas"), endpoint=scripted.url, anonymous=True)
    scripted.default = gcs_error(404, "No such object")
    async with store:
        with pytest.raises(ObjectNotFound):
            await store.get(Kind.CHUNK, ID, max_size=10)
        with pytest.raises(ObjectNotFound):
            await store.read_ref("ci/main/1")
    assert [r.raw_path.split("?")[0] for r in scripted.requests] == [
        f"/storage/v1/b/b/o/team%2Fcas%2Fchunk%2F{ID}",
        "/storage/v1/b/b/o/team%2Fcas%2Frefs%2Fci%2Fmain%2F1",
    ]


async def test_precondition_failure_means_present(scripted, scripted_store):
    scripted.script = [
        gcs_error(412, "At least one of the pre-conditions you specified did not hold.")
    ]
    assert await scripted_store.put_if_absent(Kind.CHUNK, ID, b"x") is False


# ------------------------------------------------------------------ error mapping

REAL_403 = (
    "ci-runner@proj.iam.gserviceaccount.com does not have storage.objects.create access to the "
    "Google Cloud Storage object. Permission 'storage.objects.create' denied on resource "
    "(or it may not exist)."
)


async def test_403_names_the_missing_permission_and_the_store(scripted, scripted_store):
    scripted.script = [gcs_error(403, REAL_403, "forbidden")]
    with pytest.raises(
        PermissionDenied, match=r"the credentials lack storage\.objects\.create on gs://b/p"
    ):
        await scripted_store.put_if_absent(Kind.CHUNK, ID, b"x")


@pytest.mark.parametrize(
    ("call", "permission"),
    [
        ("get", "storage.objects.get"),
        ("list", "storage.objects.list"),
        ("delete", "storage.objects.delete"),
        ("create_ref", "storage.objects.create"),
    ],
)
async def test_403_without_details_names_the_permission_the_call_needs(
    scripted, scripted_store, call, permission
):
    scripted.default = gcs_error(403, "Forbidden", "forbidden")
    with pytest.raises(PermissionDenied, match=f"lack {permission} on gs://b/p"):
        if call == "get":
            await scripted_store.get(Kind.CHUNK, ID, max_size=10)
        elif call == "list":
            _ = [i async for i in scripted_store.list(Kind.CHUNK)]
        elif call == "delete":
            await scripted_store.delete(Kind.CHUNK, ID)
        else:
            await scripted_store.create_ref("ci/1", ID)


async def test_404_for_a_missing_bucket_names_the_bucket(scripted, scripted_store):
    scripted.default = gcs_error(404, "The specified bucket does not exist.", "notFound")
    with pytest.raises(ObjectNotFound, match="bucket gs://b does not exist"):
        await scripted_store.get(Kind.CHUNK, ID, max_size=10)
    with pytest.raises(ObjectNotFound, match="bucket gs://b does not exist"):
        await scripted_store.delete(Kind.CHUNK, ID)  # absent object is fine, absent bucket not
    with pytest.raises(ObjectNotFound, match="bucket gs://b does not exist"):
        await scripted_store.missing(Kind.CHUNK, [ID])


async def test_404_for_a_missing_object_names_the_object(scripted, scripted_store):
    scripted.default = gcs_error(404, f"No such object: b/p/chunk/{ID}", "notFound")
    with pytest.raises(ObjectNotFound, match=f"chunk {ID} not found in gs://b/p"):
        await scripted_store.get(Kind.CHUNK, ID, max_size=10)
    await scripted_store.delete(Kind.CHUNK, ID)
    assert await scripted_store.missing(Kind.CHUNK, [ID]) == {ID}


async def test_400_is_a_usage_error(scripted, scripted_store):
    scripted.script = [gcs_error(400, "Invalid argument.", "invalid")]
    with pytest.raises(UsageError, match=r"400: Invalid argument"):
        await scripted_store.stat(Kind.CHUNK, ID)


async def test_401_is_permission_denied(scripted, scripted_store):
    scripted.script = [gcs_error(401, "Anonymous caller does not have access.", "required")]
    with pytest.raises(PermissionDenied, match="did not accept the credentials for gs://b/p"):
        await scripted_store.stat(Kind.CHUNK, ID)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_transient_statuses_are_store_unavailable(scripted, scripted_store, status):
    scripted.script = [gcs_error(status, "try again")]
    with pytest.raises(StoreUnavailable, match=f"({status}: try again)"):
        await scripted_store.stat(Kind.CHUNK, ID)


async def test_403_rate_limit_is_transient(scripted, scripted_store):
    scripted.script = [gcs_error(403, "Rate limit exceeded", "rateLimitExceeded")]
    with pytest.raises(StoreUnavailable):
        await scripted_store.stat(Kind.CHUNK, ID)


async def test_dropped_connection_and_timeout_are_store_unavailable(scripted, scripted_store):
    scripted.script = [drop_connection]
    with pytest.raises(StoreUnavailable, match="connection to GCS failed"):
        await scripted_store.put_if_absent(Kind.CHUNK, ID, b"x")
    # aiohttp itself repeats an idempotent GET once on a dropped connection.
    scripted.script = [drop_connection, drop_connection]
    with pytest.raises(StoreUnavailable, match="connection to GCS failed"):
        await scripted_store.stat(Kind.CHUNK, ID)
    scripted.script = [stall(1.2)]
    with pytest.raises(StoreUnavailable, match="timed out"):
        await scripted_store.stat(Kind.CHUNK, ID)


async def test_wrapped_store_retries_transient_failures_but_not_permanent_ones(scripted):
    store = wrap_remote(
        GcsStore(GcsLocation("b", "p"), endpoint=scripted.url, anonymous=True, timeout=1.0), FAST
    )
    async with store:
        scripted.script = [gcs_error(503, "busy"), drop_connection, object_resource("n")]
        assert await store.put_if_absent(Kind.CHUNK, ID, b"x") is True
        assert len(scripted.requests) == 3
        scripted.script = [gcs_error(403, REAL_403, "forbidden")]
        with pytest.raises(PermissionDenied):
            await store.put_if_absent(Kind.CHUNK, ID, b"x")
        assert len(scripted.requests) == 4  # not retried


async def test_oversized_download_is_refused_with_or_without_content_length(
    scripted, scripted_store
):
    scripted.script = [(200, b"z" * 2000), unsized(b"z" * 5000)]
    with pytest.raises(IntegrityError, match=str(ID)):
        await scripted_store.get(Kind.CHUNK, ID, max_size=1000)
    with pytest.raises(IntegrityError, match=str(ID)):
        await scripted_store.get(Kind.CHUNK, ID, max_size=1000)


async def test_unexpected_status_is_a_typed_error(scripted, scripted_store):
    scripted.script = [gcs_error(409, "Conflict")]
    with pytest.raises(CasError, match="409"):
        await scripted_store.stat(Kind.CHUNK, ID)


# ------------------------------------------------------------------ credentials


@pytest.fixture
def service_account_key(tmp_path, scripted, monkeypatch):
    """A real service-account key file whose token endpoint is the scripted server (ADC)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    path = tmp_path / "key.json"
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "proj",
                "private_key_id": "k1",
                "private_key": pem,
                "client_email": "ci-runner@proj.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": f"{scripted.url}/token",
            }
        )
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    return path


async def test_adc_tokens_are_fetched_once_off_the_event_loop_and_sent(
    scripted, service_account_key
):
    """The token endpoint runs on this same event loop: a refresh that blocked the
    loop would never get its answer, so passing proves the refresh runs elsewhere."""
    import asyncio

    store = GcsStore(GcsLocation("b", "p"), endpoint=scripted.url, timeout=5.0)
    assert store.anonymous is False
    scripted.default = object_resource(f"p/chunk/{ID}")
    async with store:
        infos = await asyncio.wait_for(
            asyncio.gather(*(store.stat(Kind.CHUNK, ID) for _ in range(20))), 30
        )
    assert all(i.size == 1 for i in infos)
    assert scripted.token_requests == 1
    assert {r.headers["Authorization"] for r in scripted.requests} == {"Bearer tok1"}


async def test_a_rejected_token_is_refreshed_once(scripted, service_account_key):
    store = GcsStore(GcsLocation("b", "p"), endpoint=scripted.url, timeout=5.0)
    scripted.script = [gcs_error(401, "Invalid Credentials", "authError")]
    scripted.default = object_resource(f"p/chunk/{ID}")
    async with store:
        assert (await store.stat(Kind.CHUNK, ID)).size == 1
    assert [r.headers["Authorization"] for r in scripted.requests] == ["Bearer tok1", "Bearer tok2"]


async def test_no_credentials_is_permission_denied_with_a_hint(tmp_path, monkeypatch, scripted):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    async with GcsStore(GcsLocation("b", "p"), endpoint=scripted.url) as store:
        with pytest.raises(PermissionDenied, match="no usable Google credentials for gs://b/p"):
            await store.stat(Kind.CHUNK, ID)
    assert scripted.requests == []


@pytest.mark.parametrize(
    "body", [b"<html>captive portal</html>", b"[]", b'{"name": "x"}', b'{"size": "1"}']
)
async def test_garbled_answers_are_store_unavailable_not_crashes(scripted, scripted_store, body):
    scripted.script = [(200, body)]
    with pytest.raises(StoreUnavailable, match="GCS sent"):
        await scripted_store.stat(Kind.CHUNK, ID)


# ------------------------------------------------------------------ batched existence checks


async def test_missing_sends_100_checks_per_batch_request(scripted, scripted_store):
    ids = [hash_bytes(b"%d" % i) for i in range(250)]
    scripted.default = gcs_error(404, "No such object")
    assert await scripted_store.missing(Kind.CHUNK, ids + ids[:10]) == set(ids)
    assert sorted(r.body.count(b"Content-ID: <") for r in scripted.requests) == [50, 100, 100]
    assert {r.path for r in scripted.requests} == {"/batch/storage/v1"}
    assert b"GET /storage/v1/b/b/o/p%2Fchunk%2F" in scripted.requests[0].body


@pytest.mark.parametrize(
    ("answer", "error", "text"),
    [
        (gcs_error(503, "backend error"), StoreUnavailable, "503"),
        (gcs_error(429, "slow down"), StoreUnavailable, "429"),
        (gcs_error(403, "Forbidden"), PermissionDenied, "lack storage.objects.get on gs://b/p"),
    ],
)
async def test_a_failed_check_inside_a_batch_fails_the_call(
    scripted, scripted_store, answer, error, text
):
    scripted.default = answer
    with pytest.raises(error, match=text):
        await scripted_store.missing(Kind.CHUNK, [ID])


async def test_batch_answers_are_matched_by_content_id_not_order(scripted, scripted_store):
    present, absent = hash_bytes(b"present"), hash_bytes(b"absent")

    async def reversed_answer(request):
        from aiohttp import web

        ok = object_resource("x")[1]
        missing_body = gcs_error(404, "No such object")[1]
        parts = [
            b"--zz\r\nContent-Type: application/http\r\nContent-ID: <response-1>\r\n\r\n"
            b"HTTP/1.1 404 Not Found\r\n\r\n" + missing_body + b"\r\n",
            b"--zz\r\nContent-Type: application/http\r\nContent-ID: <response-0>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + ok + b"\r\n",
        ]
        return web.Response(
            body=b"".join(parts) + b"--zz--\r\n",
            headers={"Content-Type": "multipart/mixed; boundary=zz"},
        )

    scripted.script = [reversed_answer]
    assert await scripted_store.missing(Kind.CHUNK, [present, absent]) == {absent}


@pytest.mark.parametrize(
    "body", [b"not multipart", b"--zz\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 200\r\n"]
)
async def test_garbled_batch_answers_are_store_unavailable(scripted, scripted_store, body):
    from aiohttp import web

    async def garbled(request):
        return web.Response(body=body, headers={"Content-Type": "multipart/mixed; boundary=zz"})

    scripted.script = [garbled]
    with pytest.raises(StoreUnavailable, match="batch answer"):
        await scripted_store.missing(Kind.CHUNK, [ID, hash_bytes(b"other")])
