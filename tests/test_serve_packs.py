"""`cas serve` and store format 2: pack and index uploads checked whole, range reads, format 1.

Hostile uploads go to a real server subprocess on 127.0.0.1 as raw HTTP, so
the statuses and messages are those a client meets; each must be refused
with a 4xx naming what is wrong, and nothing may reach the store.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys

import aiohttp
import pytest
import zstandard
from aiohttp import web

from cas import codec
from cas.errors import IntegrityError, ObjectNotFound, UsageError
from cas.ids import ObjectId, hash_bytes
from cas.pack import ENTRY, FOOTER, MAX_PACK_BYTES, ObjectKind, PackBuilder, SealedPack
from cas.packindex import HEADER, MAGIC, MAX_INDEX_BYTES, index_name
from cas.server import Limits, TokenTable, build_app
from cas.server.tokens import Scope
from cas.store.base import Kind
from cas.store.http import HttpStore
from cas.store.local import LocalStore
from cas.store.wrapping import WrappingStore
from tests.conftest import LocalBackend
from tests.serve_process import ROOT, TOKENS, ServeProcess
from tests.store.stored import index_of, pack_of

CAS = (sys.executable, "-m", "cas_cli.main")


def auth(scope: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[scope]}"}


@pytest.fixture
def server(serve_process: ServeProcess) -> ServeProcess:
    serve_process.reset()
    return serve_process


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def put(http: aiohttp.ClientSession, server: ServeProcess, kind: str, name, body) -> tuple:
    async with http.put(
        f"{server.url}/v1/{kind}/{name}", data=body, headers=auth("write")
    ) as response:
        return response.status, await response.json() if response.status >= 400 else None


# ---------------------------------------------------------------- hostile packs


def _rebuilt(data: bytes, entries: list[tuple]) -> bytes:
    """`data` with its trailer replaced by `entries` (kind code, id, offset, stored, raw)."""
    trailer_len, _, _ = FOOTER.unpack(data[-FOOTER.size :])
    frames = data[: len(data) - FOOTER.size - trailer_len]
    trailer = b"".join(ENTRY.pack(*e) for e in entries)
    return frames + trailer + FOOTER.pack(len(trailer), len(entries), b"CASPEND2")


def _entries(pack: SealedPack) -> list[tuple]:
    return [
        (0 if e.kind is ObjectKind.CHUNK else 1, e.id, e.offset, e.stored, e.raw)
        for e in pack.entries
    ]


def _lying_frame() -> tuple[bytes, ObjectId]:
    """A pack whose trailer lists a frame under an id its content does not hash to."""
    claimed = hash_bytes(b"what the trailer claims")
    builder = PackBuilder()
    builder.add(ObjectKind.CHUNK, hash_bytes(b"honest"), 6, codec.encode(b"honest"))
    builder.add(ObjectKind.CHUNK, claimed, 5, codec.encode(b"other"))
    return builder.seal().data, claimed


@functools.cache
def _hostile_packs() -> dict[str, tuple[ObjectId, bytes, str]]:
    """label -> (name uploaded under, body, text the refusal must contain)."""
    good = pack_of(b"first" * 100, os.urandom(3000), b"third")
    lying, claimed = _lying_frame()
    truncated = good.data[:-10]
    shifted = _entries(good)
    shifted[1] = (*shifted[1][:2], shifted[1][2] + 1, *shifted[1][3:])
    bad_offsets = _rebuilt(good.data, shifted)
    overlap = _entries(good)
    overlap[2] = (*overlap[2][:3], overlap[2][3] + 5, overlap[2][4])
    overlapping = _rebuilt(good.data, overlap)
    liar_raw = _entries(good)
    liar_raw[0] = (*liar_raw[0][:4], liar_raw[0][4] + 1)
    wrong_size = _rebuilt(good.data, liar_raw)
    bomb = PackBuilder()
    big = bytes((16 << 20) + 1)
    bomb.add(ObjectKind.CHUNK, hash_bytes(big), len(big), codec.encode(big))
    bomb_data = bomb.seal().data
    return {
        "id does not match": (hash_bytes(b"some other pack"), good.data, "content hashes to"),
        "frame does not hash to its id": (hash_bytes(lying), lying, str(claimed)),
        "truncated, under the old id": (good.id, truncated, "content hashes to"),
        "truncated, under its own id": (hash_bytes(truncated), truncated, "pack footer"),
        "trailer lies about an offset": (hash_bytes(bad_offsets), bad_offsets, "out of place"),
        "trailer lies about a length": (hash_bytes(overlapping), overlapping, "out of place"),
        "trailer lies about a raw size": (hash_bytes(wrong_size), wrong_size, "index says"),
        "chunk over the size limit": (hash_bytes(bomb_data), bomb_data, "limit"),
        "not a pack at all": (hash_bytes(b"hello"), b"hello", "pack header"),
        "a zstd frame, not a pack": (
            hash_bytes(codec.encode(b"x" * 100)),
            codec.encode(b"x" * 100),
            "pack header",
        ),
        "header and footer only, cut": (
            hash_bytes(pack_of().data[:-1]),
            pack_of().data[:-1],
            "too short",
        ),
    }


PACK_CASES = [
    "id does not match",
    "frame does not hash to its id",
    "truncated, under the old id",
    "truncated, under its own id",
    "trailer lies about an offset",
    "trailer lies about a length",
    "trailer lies about a raw size",
    "chunk over the size limit",
    "not a pack at all",
    "a zstd frame, not a pack",
    "header and footer only, cut",
]


def test_every_hostile_pack_case_is_run():
    assert sorted(PACK_CASES) == sorted(_hostile_packs())


@pytest.mark.parametrize("label", PACK_CASES)
async def test_hostile_packs_are_refused_and_nothing_is_stored(server, http, label):
    name, body, text = _hostile_packs()[label]
    status, answer = await put(http, server, "pack", name, body)
    assert status == 422, (label, answer)
    assert answer["error"] == "IntegrityError"
    assert text in answer["message"], (label, answer["message"])
    assert str(name) in answer["message"] or answer["kind"] == "chunk"
    assert not list((server.root / "pack").rglob("*/*"))


async def test_a_lying_raw_size_is_refused_by_the_frame_check(server, http):
    """A trailer saying a frame inflates to fewer bytes than its header declares."""
    good = pack_of(b"abc" * 1000)
    entries = _entries(good)
    entries[0] = (*entries[0][:4], 10)
    data = _rebuilt(good.data, entries)
    status, answer = await put(http, server, "pack", hash_bytes(data), data)
    assert status == 422 and "more than the 10-byte limit" in answer["message"]


async def test_an_oversized_pack_is_refused_with_413_before_it_is_read(server, http):
    body = bytes(MAX_PACK_BYTES + 1)
    name = hash_bytes(b"too big")
    status, answer = await put(http, server, "pack", name, body)
    assert status == 413
    assert answer["error"] == "TooLarge" and str(MAX_PACK_BYTES) in answer["message"]

    async def streamed():  # no Content-Length: refused once the cap is passed
        piece = bytes(8 << 20)
        for _ in range(MAX_PACK_BYTES // len(piece) + 1):
            yield piece

    status, answer = await put(http, server, "pack", name, streamed())
    assert status == 413
    assert not list((server.root / "pack").rglob("*/*"))


async def test_a_valid_pack_is_stored_and_its_frames_read_by_range(server, http):
    pack = pack_of(b"one" * 1000, os.urandom(2000), b"three")
    status, _ = await put(http, server, "pack", pack.id, pack.data)
    assert status == 201
    assert LocalBackend(None, server.root).peek(Kind.PACK, pack.id) == pack.data
    entry = pack.entries[1]
    last = entry.offset + entry.stored - 1
    headers = {**auth("read"), "Range": f"bytes={entry.offset}-{last}"}
    async with http.get(f"{server.url}/v1/pack/{pack.id}", headers=headers) as response:
        assert response.status == 206
        assert response.headers["Content-Range"] == f"bytes {entry.offset}-{last}/*"
        assert await response.read() == pack.data[entry.offset : last + 1]


# ---------------------------------------------------------------- indexes


async def test_a_valid_index_is_stored(server, http):
    pack = pack_of(b"indexed")
    name, blob = index_of(hash_bytes(b"manifest"), pack)
    status, _ = await put(http, server, "index", name, blob)
    assert status == 201
    assert LocalBackend(None, server.root).peek(Kind.INDEX, name) == blob


def _declaring(size: int) -> bytes:
    """A zstd frame of `size` zero bytes, made without holding them (a bomb)."""
    compressor = zstandard.ZstdCompressor(write_content_size=True).compressobj(size=size)
    piece = bytes(1 << 20)
    parts = [compressor.compress(piece) for _ in range(size // len(piece))]
    parts.append(compressor.compress(bytes(size % len(piece))))
    return b"".join([*parts, compressor.flush()])


@functools.cache
def _hostile_indexes() -> dict[str, tuple[ObjectId, bytes, str]]:
    manifest = hash_bytes(b"manifest")
    name, blob = index_of(manifest, pack_of(b"indexed"))
    other_name, _ = index_of(hash_bytes(b"another manifest"), pack_of(b"indexed"))
    body = codec.decode(blob, MAX_INDEX_BYTES, kind="index", object_id=str(name))
    other_manifest = ObjectId(bytes(hash_bytes(b"x"))[:16] + bytes(name)[16:])
    garbage = HEADER.pack(MAGIC, manifest, 5, 0)
    return {
        "content half does not match": (
            ObjectId(bytes(name)[:16] + bytes(16)),
            blob,
            "does not match its name",
        ),
        "manifest half does not match": (other_manifest, blob, "names another manifest"),
        "another manifest's index": (other_name, blob, "does not match its name"),
        "not zstd": (name, body, "not a zstd frame"),
        "declares more than the cap": (
            index_name(manifest, b"bomb"),
            _declaring(MAX_INDEX_BYTES + 1),
            "more than the",
        ),
        "malformed body": (index_name(manifest, garbage), codec.encode(garbage), "length"),
    }


INDEX_CASES = [
    "content half does not match",
    "manifest half does not match",
    "another manifest's index",
    "not zstd",
    "declares more than the cap",
    "malformed body",
]


@pytest.mark.parametrize("label", INDEX_CASES)
async def test_hostile_indexes_are_refused_and_nothing_is_stored(server, http, label):
    name, body, text = _hostile_indexes()[label]
    status, answer = await put(http, server, "index", name, body)
    assert status == 422, (label, answer)
    assert text in answer["message"], (label, answer["message"])
    assert not list((server.root / "index").rglob("*/*"))


# ---------------------------------------------------------------- range reads


@pytest.fixture
async def stored_pack(server, http) -> SealedPack:
    pack = pack_of(b"ranged" * 500, b"second")
    assert (await put(http, server, "pack", pack.id, pack.data))[0] == 201
    return pack


@pytest.mark.parametrize(
    ("header", "status", "text"),
    [
        ("bytes=0-9,20-29", 416, "one range per request"),
        ("bytes=10-", 416, "only bytes=FIRST-LAST"),
        ("bytes=-10", 416, "only bytes=FIRST-LAST"),
        (f"bytes=0-{MAX_PACK_BYTES}", 416, "longer than the"),
        ("bytes=9-3", 400, "ends before it starts"),
        ("items=0-9", 400, "malformed Range header"),
        ("bytes=a-b", 400, "malformed Range header"),
        ("bytes=0-99999999999999999999999", 400, "malformed Range header"),
        ("", 400, "malformed Range header"),
    ],
)
async def test_ranges_other_than_one_closed_range_are_refused(
    server, http, stored_pack, header, status, text
):
    headers = {**auth("read"), "Range": header}
    async with http.get(f"{server.url}/v1/pack/{stored_pack.id}", headers=headers) as response:
        assert response.status == status
        assert text in (await response.json())["message"]


async def test_range_reads_through_the_client_need_only_the_read_scope(server, stored_pack):
    reader = HttpStore(server.url, TOKENS["read"])
    try:
        data = stored_pack.data
        assert await reader.get_range(Kind.PACK, stored_pack.id, 5, 20) == data[5:25]
        with pytest.raises(IntegrityError, match=str(stored_pack.id)) as raised:
            await reader.get_range(Kind.PACK, stored_pack.id, len(data) - 2, 4)
        assert raised.value.kind == "pack"
        with pytest.raises(ObjectNotFound, match=f"pack {hash_bytes(b'absent')}"):
            await reader.get_range(Kind.PACK, hash_bytes(b"absent"), 0, 4)
    finally:
        await reader.aclose()


# ---------------------------------------------------------------- pack slots


class Watching(WrappingStore):
    """Counts the uploads that reach the store at once (each takes a while to land)."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.now: dict[Kind, int] = {k: 0 for k in Kind}
        self.peak: dict[Kind, int] = {k: 0 for k in Kind}

    async def put_if_absent(self, kind, object_id, data):
        self.now[kind] += 1
        self.peak[kind] = max(self.peak[kind], self.now[kind])
        await asyncio.sleep(0.05)
        self.now[kind] -= 1
        return await self.inner.put_if_absent(kind, object_id, data)


# The server keeps per-request values under string keys (aiohttp < 3.12 has no RequestKey).
@pytest.mark.filterwarnings("ignore:It is recommended to use web.RequestKey")
async def test_only_a_few_packs_are_buffered_and_verified_at_once(tmp_path):
    store = Watching(LocalStore(tmp_path / "s", fsync=False))
    tokens = TokenTable(((TOKENS["write"].encode(), Scope.WRITE),))
    app = build_app(store, tokens, limits=Limits(), max_uploads=16, max_pack_uploads=2)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    client = HttpStore(f"http://{host}:{port}", TOKENS["write"])
    try:
        packs = [pack_of(os.urandom(1000)) for _ in range(8)]
        manifests = [(hash_bytes(b"m%d" % i), codec.encode(b"m%d" % i)) for i in range(8)]
        await asyncio.gather(
            *(client.put_if_absent(Kind.PACK, p.id, p.data) for p in packs),
            *(client.put_if_absent(Kind.MANIFEST, i, b) for i, b in manifests),
        )
        assert store.peak[Kind.PACK] == 2
        assert store.peak[Kind.MANIFEST] > 2
    finally:
        await client.aclose()
        await runner.cleanup()
        await store.aclose()


# ---------------------------------------------------------------- format 1


def test_serve_refuses_a_format_1_store_in_one_line(tmp_path):
    root = tmp_path / "old"
    for name in ("chunk/ab", "tree", "manifest", "refs", "tmp"):
        (root / name).mkdir(parents=True)
    (root / "cas-store.json").write_text(json.dumps({"layout": "cas.local-store/1"}) + "\n")
    tokens = tmp_path / "tokens"
    tokens.write_text(f"read {TOKENS['read']}\n")
    proc = subprocess.run(
        [
            *CAS,
            "serve",
            "--store",
            str(root),
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            str(tokens),
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == UsageError.exit_code
    assert proc.stderr.decode() == (
        f"cas: error: {root} is a format 1 store (cas.local-store/1); this cas reads and "
        "writes format 2 only: put into a new store\n"
    )
    assert sorted(p.name for p in root.iterdir()) == [
        "cas-store.json",
        "chunk",
        "manifest",
        "refs",
        "tmp",
        "tree",
    ]


def test_limits_per_kind():
    limits = Limits(max_chunk=2 << 20)
    assert limits.body(Kind.PACK) == MAX_PACK_BYTES
    assert limits.body(Kind.INDEX) == 64 << 20
    assert limits.content(Kind.MANIFEST) == 1 << 20
    assert limits.content(Kind.GC) == 2 << 20
