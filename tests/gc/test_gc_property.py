"""Property: gc keeps exactly what the kept roots reach, whatever the store holds."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cas.gc import GcOptions, collect
from cas.ids import hash_bytes
from cas.put import PutOptions, Uploader
from cas.repo import Repository
from cas.retention import KeepLastRule, Retention
from cas.store.base import Kind
from cas.store.local import LocalStore
from cas.verify import Checker

POOL = [os.urandom(5000 + i) for i in range(12)]
puts = st.lists(
    st.tuples(st.sets(st.integers(0, len(POOL) - 1), min_size=1, max_size=5), st.booleans()),
    min_size=1,
    max_size=5,
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(puts, st.integers(0, 3))
def test_gc_keeps_what_kept_refs_reach_and_deletes_the_rest(runs, keep):
    asyncio.run(check(runs, keep))


async def check(runs: list[tuple[set[int], bool]], keep: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(Path(tmp) / "store", fsync=False)
        named: list[tuple[str, set[int]]] = []
        for n, (files, with_ref) in enumerate(runs):
            src = Path(tmp) / f"src{n}"
            src.mkdir()
            for i in files:
                (src / f"f{i}").write_bytes(POOL[i])
            ref = f"ci/run/{n}" if with_ref else None
            await Uploader(Repository(store), PutOptions(ref=ref)).put(src)
            if ref:
                named.append((ref, files))
            await asyncio.sleep(0.01)  # distinct ref times, all older than a gc started now
        options = GcOptions(
            retention=Retention(keep_last=(KeepLastRule("ci/*", keep),)), grace=0.0, lease=2.0
        )
        await asyncio.sleep(0.02)
        await collect(Repository(store), options)
        kept = named[max(0, len(named) - keep) :] if keep else []
        assert sorted([r.name async for r in store.list_refs()]) == sorted(r for r, _ in kept)
        wanted = {hash_bytes(POOL[i]) for _, files in kept for i in files}
        assert {i.id async for i in store.list(Kind.CHUNK)} == wanted
        assert len([i async for i in store.list(Kind.MANIFEST)]) == len(kept)
        checker = Checker(Repository(store))
        try:
            for ref, _ in kept:
                assert not await checker.check_manifest(await store.read_ref(ref))
        finally:
            checker.close()
