"""The library's `Session` behaves as the `cas` commands do (they use it)."""

from __future__ import annotations

import asyncio
import os

from cas.caches.files import RACY_WINDOW_NS
from cas.put.uploader import PutOptions
from cas.session import Session
from tests.conftest import snapshot

OLD = 1_600_000_000 * 10**9  # far outside the racy window


async def test_session_put_and_get_remember_unchanged_files_as_the_commands_do(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(5):
        (src / "d" / f"f{i}").write_bytes(os.urandom(20_000))
        os.utime(src / "d" / f"f{i}", ns=(OLD, OLD))
    await asyncio.sleep(RACY_WINDOW_NS / 1e9 + 0.1)  # ctime cannot be set: wait it out
    store_dir = src / "store"  # a store inside its own source is left out of the put
    async with Session.open(str(store_dir), create=True) as session:
        assert session.chunk_cache is None  # a local disk: no second copy of every chunk
        first = await session.put(src, PutOptions(ref="ci/1"))
        assert first.stats.skipped == [("store", "store or cache")]
        again = await session.put(src, PutOptions(ref="ci/2"))
        assert again.stats.files_unchanged == 5  # the files cache, as `cas put` has it
        stats = await session.get("ci/1", tmp_path / "out")
        assert stats.files == 5
    expected = {k: v for k, v in snapshot(src).items() if not k.startswith("store")}
    assert snapshot(tmp_path / "out") == expected


async def test_session_without_local_state_reads_every_file_and_can_force_the_cache(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(30_000))
    url = str(tmp_path / "store")
    async with Session.open(url, create=True, local_state=False, chunk_cache=True) as session:
        assert session.chunk_cache is not None
        await session.put(src)
        again = await session.put(src)
        assert again.stats.files_unchanged == 0
