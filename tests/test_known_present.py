"""The known-present cache: repeated puts skip existence checks, but never trust a stale answer."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from cas.chunking import ChunkParams
from cas.filescache import FilesCache
from cas.gcrecords import DONE, START, new_run_id, record_body, write_record
from cas.ids import ObjectId
from cas.knownpresent import KnownPresent, runs_fingerprint
from cas.put import PutOptions, PutResult, Uploader
from cas.repo import Repository
from cas.store.base import Kind, Store
from cas.store.local import LocalStore
from cas.store.wrapping import WrappingStore
from cas.verify import manifest_complete
from tests.serve_process import TOKENS


class CountingStore(WrappingStore):
    """A real store that counts the ids it is asked about."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.asked: dict[Kind, int] = {Kind.CHUNK: 0, Kind.TREE: 0}

    async def missing(self, kind: Kind, ids: Sequence[ObjectId]) -> set[ObjectId]:
        self.asked[kind] = self.asked.get(kind, 0) + len(ids)
        return await self.inner.missing(kind, ids)


def make_tree(root: Path, files: int = 40) -> None:
    for d in range(4):
        (root / f"d{d}").mkdir(parents=True, exist_ok=True)
        for i in range(files // 4):
            (root / f"d{d}" / f"f{i}.bin").write_bytes(os.urandom(20_000 + i))


def put(store: Store, src: Path, cache_dir: Path, *, ttl_s: int = 3600) -> PutResult:
    async def run() -> PutResult:
        files = FilesCache(cache_dir, store.url, ChunkParams())
        known = KnownPresent(files, store.url, ttl_s=ttl_s)
        try:
            # Without the files cache's help, so every put asks about every chunk.
            uploader = Uploader(Repository(store), PutOptions(), known_present=known)
            return await uploader.put(src)
        finally:
            files.close()

    return asyncio.run(run())


@pytest.fixture
def setup(tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    return src, LocalStore(tmp_path / "store", fsync=False), tmp_path / "cache"


def complete(store: Store, result: PutResult) -> bool:
    return asyncio.run(manifest_complete(Repository(store), result.manifest_id))


def test_second_put_asks_the_store_about_a_sample_only(setup):
    src, local, cache = setup
    first = put(CountingStore(local), src, cache)
    assert first.stats.checks_skipped == 0
    counting = CountingStore(local)
    second = put(counting, src, cache)
    chunks = second.stats.chunks
    assert second.stats.checks_skipped >= chunks - 5  # all but a ~1% sample (at least one)
    assert counting.asked[Kind.CHUNK] <= 5
    assert complete(local, second)


def test_a_collection_run_drops_what_was_known(setup):
    src, local, cache = setup
    put(local, src, cache)

    async def finished_run() -> None:
        run = new_run_id()
        await write_record(local, record_body(START, run, lease_seconds=60, seq=0))
        await write_record(local, record_body(DONE, run, lease_seconds=60))

    asyncio.run(finished_run())
    counting = CountingStore(local)
    again = put(counting, src, cache)
    assert again.stats.checks_skipped == 0
    assert counting.asked[Kind.CHUNK] >= again.stats.chunks
    third = put(CountingStore(local), src, cache)  # known again, under the new set of runs
    assert third.stats.checks_skipped > 0


def test_nothing_is_trusted_or_learned_while_a_collection_runs(tmp_path):
    url = "gs://bucket/prefix"
    files = FilesCache(tmp_path / "cache", url, ChunkParams())
    ids = [ObjectId(os.urandom(32)) for _ in range(200)]
    asked: list[int] = []

    async def ask(kind: Kind, batch: list[ObjectId]) -> set[ObjectId]:
        asked.append(len(batch))
        return set()

    def check() -> None:
        asyncio.run(known.missing(ask, Kind.CHUNK, ids))
        known.flush()

    try:
        known = KnownPresent(files, url)
        known.begin(runs_fingerprint({"r1": True}))
        check()
        check()
        assert asked[0] == 200 and 1 <= asked[1] <= 12  # then only a ~1% sample
        known = KnownPresent(files, url)
        known.begin(runs_fingerprint({"r1": True, "r2": False}))  # r2 is still running
        fresh = [ObjectId(os.urandom(32)) for _ in range(5)]
        asyncio.run(known.missing(ask, Kind.CHUNK, fresh))
        known.flush()
        check()
        assert asked[2:] == [5, 200]  # not trusted, and the fresh ids were not learned
        known = KnownPresent(files, url)
        known.begin(runs_fingerprint({"r1": True, "r2": True}))  # r2 finished: a new epoch
        check()
        assert asked[4:] == [200]
    finally:
        files.close()


def test_a_wiped_store_is_noticed_and_filled_again(setup):
    src, local, cache = setup
    put(local, src, cache)
    for kind in ("chunk", "tree"):
        shutil.rmtree(local.root / kind)
        (local.root / kind).mkdir()
    local = LocalStore(local.root, fsync=False)  # as another process would see it
    again = put(local, src, cache)
    assert again.stats.chunks_new == again.stats.chunks  # the sample found one gone: asked all
    assert complete(local, again)


def test_expired_entries_are_asked_again(setup):
    src, local, cache = setup
    first = put(local, src, cache, ttl_s=0)
    victim = first.manifest.root
    (local.root / "tree" / str(victim)[:2] / str(victim)).unlink()  # deleted behind our back
    time.sleep(1.1)
    counting = CountingStore(local)
    again = put(counting, src, cache, ttl_s=0)
    assert again.stats.checks_skipped == 0
    assert complete(local, again)


def test_cli_put_to_cas_serve_skips_checks_the_second_time(tmp_path, serve_process):
    serve_process.reset()
    src = tmp_path / "src"
    make_tree(src, files=12)
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parent.parent),
        "CAS_CACHE_DIR": str(tmp_path / "cache"),
        "CAS_TOKEN": TOKENS["write"],
    }
    cmd = [sys.executable, "-m", "cas_cli.main", "put", "--json", "--store", serve_process.url]

    def run(*extra: str) -> dict:
        done = subprocess.run([*cmd, *extra, str(src)], env=env, capture_output=True, check=True)
        return json.loads(done.stdout)

    assert run()["checks_skipped"] == 0
    (src / "d0" / "new.bin").write_bytes(os.urandom(30_000))  # a changed tree, so trees are asked
    second = run()
    assert second["checks_skipped"] > 0
    assert run("--no-files-cache")["checks_skipped"] == 0
