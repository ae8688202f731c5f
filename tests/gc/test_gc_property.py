"""Property: gc keeps exactly what the kept roots reach, whatever the store holds."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cas.gc.collector import GcOptions, collect
from cas.gc.retention import KeepLastRule, Retention
from cas.gc.verify import Checker
from cas.ids import hash_bytes
from cas.pack import read_entries
from cas.put.uploader import PutOptions, Uploader
from cas.repo import Repository
from cas.store.base import Kind
from cas.store.local import LocalStore

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
        await asyncio.sleep(0.02)
        # A second run deletes the packs the first one repacked (left for running readers).
        await collect(Repository(store), GcOptions(grace=0.0, lease=2.0))
        kept = named[max(0, len(named) - keep) :] if keep else []
        assert sorted([r.name async for r in store.list_refs()]) == sorted(r for r, _ in kept)
        wanted = {hash_bytes(POOL[i]) for _, files in kept for i in files}
        repo = Repository(store)
        live: dict = {}
        for ref, _ in kept:
            for index in await repo.indexes_of(await store.read_ref(ref)):
                for _kind, _id, loc in index.items():
                    live.setdefault(loc.pack, {})[loc.offset] = loc.stored
        stored_chunks = set()
        async for info in store.list(Kind.PACK):
            assert info.id in live, "a pack no kept index names survived two collections"
            data = await store.get(Kind.PACK, info.id, max_size=1 << 30)
            entries = read_entries(info.id, data, max_chunk=16 << 20)
            stored_chunks |= {e.id for e in entries if e.kind == "chunk"}
            assert sum(live[info.id].values()) >= 0.5 * info.size, "a sparse pack was kept"
        assert wanted <= stored_chunks
        assert len([i async for i in store.list(Kind.MANIFEST)]) == len(kept)
        checker = Checker(Repository(store))
        try:
            for ref, _ in kept:
                assert not await checker.check_manifest(await store.read_ref(ref))
        finally:
            checker.close()
