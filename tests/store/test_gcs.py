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
from cas.store.gcs.location import GcsLocation
from cas.store.gcs.store import GcsStore
from cas.store.registry import open_store, wrap_remote
from cas.store.retrying import RetryPolicy
from tests.conftest import GcsBackend
from tests.gcs_emulator import BUCKET
from tests.store.gcs_answers import (
    ScriptedGcs,
    drop_connection,
    gcs_error,
    layout_listing,
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
    assert location.object_name(Kind.PACK, ID) == f"team/cas/pack/{ID}"


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
            await store.put_if_absent(Kind.PACK, ID, b"x")
        with pytest.raises(ObjectNotFound, match="bucket gs://no-such-bucket does not exist"):
            _ = [i async for i in store.list(Kind.PACK)]
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
        await store.put_if_absent(Kind.PACK, ID, b"from-parent")
    # A worker process opens its own client through the opener and sees the same objects.
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        got = pool.submit(_read_and_write_in_worker, opener).result(timeout=60)
    assert got == b"from-parent"
    async with open_store(url) as again:
        assert await again.get(Kind.PACK, hash_bytes(b"w"), max_size=100) == b"from-worker"


def _read_and_write_in_worker(opener) -> bytes:
    import asyncio

    async def work() -> bytes:
        async with opener() as store:
            await store.put_if_absent(Kind.PACK, hash_bytes(b"w"), b"from-worker")
            return await store.get(Kind.PACK, ID, max_size=100)

    return asyncio.run(work())


# ------------------------------------------------------------------ what the client sends


async def test_uploads_are_create_only_multipart_with_crc32c(scripted, scripted_store):
    scripted.script = [object_resource("p/pack/x")]
    data = b"payload" * 100
    assert await scripted_store.put_if_absent(Kind.PACK, ID, data) is True
    sent = scripted.requests[0]
    assert sent.method == "POST" and sent.path == "/upload/storage/v1/b/b/o"
    assert sent.query["uploadType"] == "multipart" and sent.query["ifGenerationMatch"] == "0"
    boundary = sent.headers["Content-Type"].split("boundary=")[1]
    parts = sent.body.split(f"--{boundary}".encode())
    meta = json.loads(parts[1].split(b"\r\n\r\n", 1)[1])
    assert meta["name"] == f"p/pack/{ID}"
    expected = base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode()
    assert meta["crc32c"] == expected  # real GCS refuses the upload if the bytes differ
    assert parts[2].split(b"\r\n\r\n", 1)[1] == data + b"\r\n"


async def test_object_names_are_one_escaped_path_segment(scripted):
    """Real GCS needs `/` in an object name sent as %2F (the emulator accepts either)."""
    store = GcsStore(GcsLocation("b", "team/cas"), endpoint=scripted.url, anonymous=True)
    scripted.default = gcs_error(404, "No such object")
    async with store:
        with pytest.raises(ObjectNotFound):
            await store.get(Kind.PACK, ID, max_size=10)
        with pytest.raises(ObjectNotFound):
            await store.read_ref("ci/main/1")
    assert [r.raw_path.split("?")[0] for r in scripted.requests] == [
        f"/storage/v1/b/b/o/team%2Fcas%2Fpack%2F{ID}",
        "/storage/v1/b/b/o/team%2Fcas%2Frefs%2Fci%2Fmain%2F1",
    ]


async def test_precondition_failure_means_present(scripted, scripted_store):
    scripted.script = [
        gcs_error(412, "At least one of the pre-conditions you specified did not hold.")
    ]
    assert await scripted_store.put_if_absent(Kind.PACK, ID, b"x") is False


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
        await scripted_store.put_if_absent(Kind.PACK, ID, b"x")


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
            await scripted_store.get(Kind.PACK, ID, max_size=10)
        elif call == "list":
            _ = [i async for i in scripted_store.list(Kind.PACK)]
        elif call == "delete":
            await scripted_store.delete(Kind.PACK, ID)
        else:
            await scripted_store.create_ref("ci/1", ID)


async def test_404_for_a_missing_bucket_names_the_bucket(scripted, scripted_store):
    scripted.default = gcs_error(404, "The specified bucket does not exist.", "notFound")
    with pytest.raises(ObjectNotFound, match="bucket gs://b does not exist"):
        await scripted_store.get(Kind.PACK, ID, max_size=10)
    with pytest.raises(ObjectNotFound, match="bucket gs://b does not exist"):
        await scripted_store.delete(Kind.PACK, ID)  # absent object is fine, absent bucket not
    with pytest.raises(ObjectNotFound, match="bucket gs://b does not exist"):
        await scripted_store.missing(Kind.PACK, [ID])


async def test_404_for_a_missing_object_names_the_object(scripted, scripted_store):
    scripted.default = gcs_error(404, f"No such object: b/p/pack/{ID}", "notFound")
    with pytest.raises(ObjectNotFound, match=f"pack {ID} not found in gs://b/p"):
        await scripted_store.get(Kind.PACK, ID, max_size=10)
    await scripted_store.delete(Kind.PACK, ID)
    assert await scripted_store.missing(Kind.PACK, [ID]) == {ID}


async def test_400_is_a_usage_error(scripted, scripted_store):
    scripted.script = [gcs_error(400, "Invalid argument.", "invalid")]
    with pytest.raises(UsageError, match=r"400: Invalid argument"):
        await scripted_store.stat(Kind.PACK, ID)


async def test_401_is_permission_denied(scripted, scripted_store):
    scripted.script = [gcs_error(401, "Anonymous caller does not have access.", "required")]
    with pytest.raises(PermissionDenied, match="did not accept the credentials for gs://b/p"):
        await scripted_store.stat(Kind.PACK, ID)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_transient_statuses_are_store_unavailable(scripted, scripted_store, status):
    scripted.script = [gcs_error(status, "try again")]
    with pytest.raises(StoreUnavailable, match=f"({status}: try again)"):
        await scripted_store.stat(Kind.PACK, ID)


async def test_403_rate_limit_is_transient(scripted, scripted_store):
    scripted.script = [gcs_error(403, "Rate limit exceeded", "rateLimitExceeded")]
    with pytest.raises(StoreUnavailable):
        await scripted_store.stat(Kind.PACK, ID)


async def test_dropped_connection_and_timeout_are_store_unavailable(scripted, scripted_store):
    scripted.script = [drop_connection]
    with pytest.raises(StoreUnavailable, match="connection to GCS failed"):
        await scripted_store.put_if_absent(Kind.PACK, ID, b"x")
    # aiohttp itself repeats an idempotent GET once on a dropped connection.
    scripted.script = [drop_connection, drop_connection]
    with pytest.raises(StoreUnavailable, match="connection to GCS failed"):
        await scripted_store.stat(Kind.PACK, ID)
    scripted.script = [stall(1.2)]
    with pytest.raises(StoreUnavailable, match="timed out"):
        await scripted_store.stat(Kind.PACK, ID)


async def test_wrapped_store_retries_transient_failures_but_not_permanent_ones(scripted):
    store = wrap_remote(
        GcsStore(GcsLocation("b", "p"), endpoint=scripted.url, anonymous=True, timeout=1.0), FAST
    )
    async with store:
        scripted.script = [gcs_error(503, "busy"), drop_connection, object_resource("n")]
        assert await store.put_if_absent(Kind.PACK, ID, b"x") is True
        assert len(scripted.requests) == 3
        scripted.script = [gcs_error(403, REAL_403, "forbidden")]
        with pytest.raises(PermissionDenied):
            await store.put_if_absent(Kind.PACK, ID, b"x")
        assert len(scripted.requests) == 4  # not retried


async def test_oversized_download_is_refused_with_or_without_content_length(
    scripted, scripted_store
):
    scripted.script = [(200, b"z" * 2000), unsized(b"z" * 5000)]
    with pytest.raises(IntegrityError, match=str(ID)):
        await scripted_store.get(Kind.PACK, ID, max_size=1000)
    with pytest.raises(IntegrityError, match=str(ID)):
        await scripted_store.get(Kind.PACK, ID, max_size=1000)


async def test_unexpected_status_is_a_typed_error(scripted, scripted_store):
    scripted.script = [gcs_error(409, "Conflict")]
    with pytest.raises(CasError, match="409"):
        await scripted_store.stat(Kind.PACK, ID)


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
    scripted.default = object_resource(f"p/pack/{ID}")
    async with store:
        infos = await asyncio.wait_for(
            asyncio.gather(*(store.stat(Kind.PACK, ID) for _ in range(20))), 30
        )
    assert all(i.size == 1 for i in infos)
    assert scripted.token_requests == 1
    assert {r.headers["Authorization"] for r in scripted.requests} == {"Bearer tok1"}


async def test_a_rejected_token_is_refreshed_once(scripted, service_account_key):
    store = GcsStore(GcsLocation("b", "p"), endpoint=scripted.url, timeout=5.0)
    scripted.script = [gcs_error(401, "Invalid Credentials", "authError")]
    scripted.default = object_resource(f"p/pack/{ID}")
    async with store:
        assert (await store.stat(Kind.PACK, ID)).size == 1
    assert [r.headers["Authorization"] for r in scripted.requests] == ["Bearer tok1", "Bearer tok2"]


async def test_no_credentials_is_permission_denied_with_a_hint(tmp_path, monkeypatch, scripted):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    async with GcsStore(GcsLocation("b", "p"), endpoint=scripted.url) as store:
        with pytest.raises(PermissionDenied, match="no usable Google credentials for gs://b/p"):
            await store.stat(Kind.PACK, ID)
    assert scripted.requests == []


@pytest.mark.parametrize(
    "body", [b"<html>captive portal</html>", b"[]", b'{"name": "x"}', b'{"size": "1"}']
)
async def test_garbled_answers_are_store_unavailable_not_crashes(scripted, scripted_store, body):
    scripted.script = [(200, body)]
    with pytest.raises(StoreUnavailable, match="GCS sent"):
        await scripted_store.stat(Kind.PACK, ID)


# ------------------------------------------------------------------ batched existence checks


async def test_missing_sends_100_checks_per_batch_request(scripted, scripted_store):
    ids = [hash_bytes(b"%d" % i) for i in range(250)]
    scripted.default = gcs_error(404, "No such object")
    assert await scripted_store.missing(Kind.PACK, ids + ids[:10]) == set(ids)
    assert sorted(r.body.count(b"Content-ID: <") for r in scripted.requests) == [50, 100, 100]
    assert {r.path for r in scripted.requests} == {"/batch/storage/v1"}
    assert b"GET /storage/v1/b/b/o/p%2Fpack%2F" in scripted.requests[0].body


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
        await scripted_store.missing(Kind.PACK, [ID])


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
    assert await scripted_store.missing(Kind.PACK, [present, absent]) == {absent}


@pytest.mark.parametrize(
    "body", [b"not multipart", b"--zz\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 200\r\n"]
)
async def test_garbled_batch_answers_are_store_unavailable(scripted, scripted_store, body):
    from aiohttp import web

    async def garbled(request):
        return web.Response(body=body, headers={"Content-Type": "multipart/mixed; boundary=zz"})

    scripted.script = [garbled]
    with pytest.raises(StoreUnavailable, match="batch answer"):
        await scripted_store.missing(Kind.PACK, [ID, hash_bytes(b"other")])


# ------------------------------------------------------------------ listings against the emulator


async def test_listings_follow_every_page(gcs_backend, monkeypatch):
    import cas.store.gcs.store as gcs_module

    monkeypatch.setattr(gcs_module, "_PAGE_SIZE", 7)
    store = gcs_backend.store
    ids = {hash_bytes(b"page%d" % i) for i in range(23)}
    await store.put_many(Kind.INDEX, [(i, b"t") for i in ids])
    assert {info.id async for info in store.list(Kind.INDEX)} == ids
    for n in range(16):
        await store.create_ref(f"ci/main/{n:02d}", ID)
    names = [r.name async for r in store.list_refs("ci/")]
    assert names == [f"ci/main/{n:02d}" for n in range(16)]


async def test_refs_written_by_other_tools_are_read_from_their_content(gcs_backend):
    """A ref object without cas's metadata (copied with gcloud, say) still lists correctly;
    objects under refs/ that are not refs are skipped."""
    emulator, base = gcs_backend.emulator, gcs_backend.location.refs_prefix
    target = hash_bytes(b"manifest")
    for name, body in [("copied/1", f"{target}\n".encode()), ("junk/1", b"not an id")]:
        status, _ = emulator.request(
            "POST", f"/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name={base}{name}", body
        )
        assert status == 200
    refs = [(r.name, r.target) async for r in gcs_backend.store.list_refs()]
    assert refs == [("copied/1", target)]
    assert await gcs_backend.store.read_ref("copied/1") == target


async def test_names_with_url_special_characters_survive_the_round_trip(gcs_emulator):
    location = GcsLocation(BUCKET, f"a+b=c@d/{uuid.uuid4().hex}")
    async with GcsStore(location, endpoint=gcs_emulator.url, anonymous=True) as store:
        await store.create_ref("ci/x+y@z=1", ID)
        assert await store.read_ref("ci/x+y@z=1") == ID
        assert [r.name async for r in store.list_refs("ci/x+y")] == ["ci/x+y@z=1"]
        assert await store.put_if_absent(Kind.PACK, ID, b"c") is True
        assert [i.id async for i in store.list(Kind.PACK)] == [ID]
        assert await store.missing(Kind.PACK, [ID]) == set()


# ------------------------------------------------------------------ byte ranges


def _answer(status: int, body: bytes, content_range: str | None = None):
    from aiohttp import web

    async def handler(request):
        headers = {"Content-Range": content_range} if content_range else {}
        return web.Response(status=status, body=body, headers=headers)

    return handler


async def test_get_range_is_one_media_get_with_a_range_header(scripted, scripted_store):
    scripted.script = [_answer(206, b"3456", "bytes 3-6/10")]
    assert await scripted_store.get_range(Kind.PACK, ID, 3, 4) == b"3456"
    [sent] = scripted.requests
    assert sent.method == "GET" and sent.query["alt"] == "media"
    assert sent.headers["Range"] == "bytes=3-6"
    assert sent.raw_path.split("?")[0] == f"/storage/v1/b/b/o/p%2Fpack%2F{ID}"


@pytest.mark.parametrize(
    ("answer", "error", "text"),
    [
        (_answer(206, b"3", "bytes 3-3/4"), IntegrityError, "only 4 bytes long"),
        (gcs_error(416, "The requested range cannot be satisfied."), IntegrityError, "bytes 3-6"),
        (_answer(206, b"4567", "bytes 4-7/10"), CasError, "from 4 instead of 3"),
        (_answer(206, b"3456"), StoreUnavailable, "without a valid Content-Range"),
        (_answer(200, b"0123456789"), CasError, "Range header ignored"),
        (_answer(206, b"3456789", "bytes 3-9/10"), CasError, "more than the 4 bytes"),
    ],
)
async def test_range_answers_that_are_not_exactly_the_range_are_refused(
    scripted, scripted_store, answer, error, text
):
    scripted.script = [answer]
    with pytest.raises(error, match=text):
        await scripted_store.get_range(Kind.PACK, ID, 3, 4)


async def test_a_whole_object_answer_to_a_range_from_zero_is_accepted(scripted, scripted_store):
    """A server may answer 200 with the whole object when the range covers all of it."""
    scripted.script = [_answer(200, b"0123")]
    assert await scripted_store.get_range(Kind.PACK, ID, 0, 4) == b"0123"


async def test_get_range_is_retried_on_transient_failures(scripted):
    store = wrap_remote(
        GcsStore(GcsLocation("b", "p"), endpoint=scripted.url, anonymous=True, timeout=1.0), FAST
    )
    async with store:
        scripted.script = [gcs_error(503, "busy"), _answer(206, b"34", "bytes 3-4/10")]
        assert await store.get_range(Kind.PACK, ID, 3, 2) == b"34"
        assert len(scripted.requests) == 2


# ------------------------------------------------------------------ store layout


FORMAT_1 = (
    "gs://cas-test/{prefix} is a format 1 store (objects under {names}); "
    "this cas reads and writes format 2 only: put into a new store"
)


def _uploaded(recorded) -> tuple[dict, bytes]:
    """The resource metadata and the data of a recorded multipart upload."""
    boundary = recorded.headers["Content-Type"].split("boundary=")[1]
    parts = recorded.body.split(f"--{boundary}".encode())
    meta = json.loads(parts[1].split(b"\r\n\r\n", 1)[1])
    return meta, parts[2].split(b"\r\n\r\n", 1)[1][: -len(b"\r\n")]


async def test_the_layout_is_checked_once_per_store_with_one_listing(scripted, scripted_store):
    import asyncio

    scripted.default = object_resource(f"p/pack/{ID}")
    await asyncio.gather(*(scripted_store.stat(Kind.PACK, ID) for _ in range(10)))
    await scripted_store.put_if_absent(Kind.PACK, ID, b"x")
    [check] = scripted.layout_checks
    assert check.path == "/storage/v1/b/b/o"
    assert (check.query["prefix"], check.query["delimiter"]) == ("p/", "/")
    # The marker is there: no request beyond the calls themselves.
    assert len(scripted.requests) == 11
    assert _uploaded(scripted.requests[-1])[0]["name"] == f"p/pack/{ID}"


async def test_the_first_write_creates_the_marker_once_and_reads_never_do(scripted, scripted_store):
    import asyncio

    scripted.layout_answer = layout_listing(layout=None, prefixes=("p/refs/",))
    scripted.default = object_resource("x")
    await scripted_store.stat(Kind.PACK, ID)
    assert [r.method for r in scripted.requests] == ["GET"]
    ids = [hash_bytes(b"%d" % i) for i in range(5)]
    await asyncio.gather(*(scripted_store.put_if_absent(Kind.PACK, i, b"x") for i in ids))
    await scripted_store.create_ref("ci/1", ID)
    names = [_uploaded(r)[0]["name"] for r in scripted.requests[1:]]
    assert names[0] == "p/cas-store.json" and names.count("p/cas-store.json") == 1
    assert sorted(names[1:]) == sorted([f"p/pack/{i}" for i in ids] + ["p/refs/ci/1"])
    meta, data = _uploaded(scripted.requests[1])
    assert json.loads(data) == {"layout": "cas.gcs-store/2"}
    assert meta["metadata"] == {"cas-layout": "cas.gcs-store/2"}
    assert scripted.requests[1].query["ifGenerationMatch"] == "0"
    assert len(scripted.layout_checks) == 1


@pytest.mark.parametrize(
    ("answer", "text"),
    [
        (layout_listing(layout=None, prefixes=("p/chunk/", "p/refs/")), "objects under chunk/"),
        (layout_listing(layout=None, prefixes=("p/tree/",)), "objects under tree/"),
        (layout_listing(prefixes=("p/chunk/", "p/pack/")), "objects under chunk/"),
        (layout_listing(layout="cas.gcs-store/3"), "unsupported store layout 'cas.gcs-store/3'"),
    ],
)
async def test_a_store_of_another_format_is_refused_before_any_call(
    scripted, scripted_store, answer, text
):
    scripted.layout_answer = answer
    for call in (
        lambda: scripted_store.stat(Kind.PACK, ID),
        lambda: scripted_store.put_if_absent(Kind.PACK, ID, b"x"),
        lambda: scripted_store.get_range(Kind.PACK, ID, 0, 1),
    ):
        with pytest.raises(UsageError, match=text):
            await call()
    assert scripted.requests == []


async def test_a_layout_check_that_fails_transiently_is_retried_with_the_call(scripted):
    store = wrap_remote(
        GcsStore(GcsLocation("b", "p"), endpoint=scripted.url, anonymous=True, timeout=1.0), FAST
    )
    scripted.layout_answer = gcs_error(503, "busy")
    scripted.default = object_resource(f"p/pack/{ID}")
    async with store:
        with pytest.raises(StoreUnavailable, match="store layout check"):
            await store.stat(Kind.PACK, ID)
        assert len(scripted.layout_checks) == FAST.attempts
        scripted.layout_answer = layout_listing()
        assert (await store.stat(Kind.PACK, ID)).size == 1


async def test_a_new_emulator_store_gets_its_marker_with_the_first_write(gcs_backend):
    store, base = gcs_backend.store, gcs_backend.location.base
    assert await store.missing(Kind.PACK, [ID]) == {ID}
    assert [i async for i in store.list(Kind.PACK)] == []
    assert gcs_backend.snapshot() == []  # reading writes nothing, not even the marker
    assert await store.put_if_absent(Kind.PACK, ID, b"x") is True
    names = [name for name, *_ in gcs_backend.snapshot()]
    assert names == [f"{base}cas-store.json", f"{base}pack/{ID}"]
    status, body = gcs_backend.emulator.request(
        "GET", gcs_backend._object_path(f"{base}cas-store.json") + "?alt=media"
    )
    assert status == 200 and json.loads(body) == {"layout": "cas.gcs-store/2"}
    emulator_url = gcs_backend.emulator.url
    async with GcsStore(gcs_backend.location, endpoint=emulator_url, anonymous=True) as again:
        assert await again.get(Kind.PACK, ID, max_size=10) == b"x"
        assert await again.put_if_absent(Kind.PACK, hash_bytes(b"y"), b"y") is True


def _plant(gcs_backend, name: str, data: bytes) -> None:
    status, body = gcs_backend.emulator.request(
        "POST",
        f"/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name={gcs_backend.location.base}{name}",
        data,
    )
    assert status == 200, body


@pytest.mark.parametrize(
    ("namespaces", "names"), [(("chunk",), "chunk/"), (("chunk", "tree"), "chunk/ and tree/")]
)
async def test_a_format_1_emulator_store_is_refused_and_left_alone(gcs_backend, namespaces, names):
    for namespace in namespaces:
        _plant(gcs_backend, f"{namespace}/{ID}", b"format 1 object")
    _plant(gcs_backend, "refs/ci/1", f"{ID}\n".encode())
    before = gcs_backend.snapshot()
    store = wrap_remote(gcs_backend.store, FAST)
    expected = FORMAT_1.format(prefix=gcs_backend.location.prefix, names=names)
    for call in (
        lambda: store.read_ref("ci/1"),
        lambda: store.put_if_absent(Kind.PACK, ID, b"x"),
        lambda: store.create_ref("ci/2", ID),
    ):
        with pytest.raises(UsageError) as raised:
            await call()
        assert str(raised.value) == expected
    assert gcs_backend.snapshot() == before


async def test_a_marker_written_by_hand_is_read_from_its_content(gcs_backend):
    _plant(gcs_backend, "cas-store.json", b'{"layout": "cas.gcs-store/2"}\n')
    assert await gcs_backend.store.put_if_absent(Kind.PACK, ID, b"x") is True
    other = GcsBackend(gcs_backend.emulator, f"t-{uuid.uuid4().hex}")
    _plant(other, "cas-store.json", b'{"layout": "cas.local-store/2"}')
    async with other.store:
        with pytest.raises(UsageError, match=r"unsupported store layout 'cas\.local-store/2'"):
            await other.store.stat(Kind.PACK, ID)


def test_the_cli_names_a_format_1_bucket_in_one_line(gcs_backend, monkeypatch, tmp_path):
    import os
    import subprocess
    import sys

    _plant(gcs_backend, f"tree/{ID}", b"format 1 tree")
    env = {**os.environ, "STORAGE_EMULATOR_HOST": gcs_backend.emulator.url}
    proc = subprocess.run(
        [sys.executable, "-m", "cas_cli.main", "refs", "--store", gcs_backend.location.url],
        env=env,
        capture_output=True,
        check=False,
    )
    assert proc.returncode == UsageError.exit_code
    expected = FORMAT_1.format(prefix=gcs_backend.location.prefix, names="tree/")
    assert proc.stderr.decode() == f"cas: error: {expected}\n"
