"""Stress: puts of changing trees and repeated collections at once; nothing completed breaks.

Putters build trees from a shared pool of file contents, and each put's
parent is a put of any putter that completed about a second earlier, whose
ref is expiring just then, so puts keep reusing packs whose last referencing
manifest has just expired: exactly the packs a concurrent collection deletes
or repacks. Collections run back to back
with a sub-second grace period and expire refs after a second. At the end
every manifest still in the store, and every completed put whose ref
survived, must read back in full.

`CAS_STRESS_NO_PROTOCOL=1` turns the put's settling step off, to show that
the test then fails.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from pathlib import Path

import pytest

from cas.gc import GcOptions, LeaseLost, collect
from cas.gcfence import ConcurrentGcError
from cas.put import PutOptions, Uploader
from cas.repo import Repository
from cas.retention import ExpireRule, Retention
from cas.store.base import Kind

GC_BACKENDS = ["local_backend", "gcs_backend", "serve_backend"]
DURATION = float(os.environ.get("CAS_STRESS_SECONDS", "6"))
PUTTERS = 3
POOL = [os.urandom(4500 + 7 * i) for i in range(600)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "gc_backend" in metafunc.fixturenames:
        metafunc.parametrize("gc_backend", GC_BACKENDS)


def make_tree(root: Path, rng: random.Random) -> None:
    for i, blob in enumerate(rng.sample(POOL, 40)):
        sub = root / f"d{i % 8}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i}").write_bytes(blob)
    (root / "own").write_bytes(os.urandom(7000))


def putter(
    open_store,
    workdir: Path,
    index: int,
    stop: threading.Event,
    done: list,
    expired: list,
    errors: list,
) -> None:
    rng = random.Random(index)
    protocol = os.environ.get("CAS_STRESS_NO_PROTOCOL") != "1"

    async def loop() -> None:
        store = open_store()
        try:
            n = 0
            while not stop.is_set():
                n += 1
                src = workdir / f"p{index}-{n}"
                make_tree(src, rng)
                now = time.monotonic()
                ripe = [m for _, m, _, t in done[-30:] if 0.8 < now - t < 3.0]
                options = PutOptions(
                    ref=f"stress/{index}/{n}",
                    processes=index == 0,
                    workers=2,
                    parent=str(rng.choice(ripe)) if ripe else None,
                )
                uploader = Uploader(Repository(store), options)
                uploader.gc_fence = protocol
                try:
                    result = await uploader.put(src)
                except ConcurrentGcError as exc:
                    if "was removed while the put was settling" not in str(exc):
                        raise
                    expired.append(options.ref)  # retention, not loss: this put never completed
                    continue
                done.append(
                    (options.ref, result.manifest_id, result.stats.gc_waits, time.monotonic())
                )
        finally:
            await store.aclose()

    try:
        asyncio.run(loop())
    except BaseException as exc:
        errors.append(exc)


def collector(open_store, stop: threading.Event, reports: list, lost: list, errors: list) -> None:
    options = GcOptions(
        retention=Retention(expire=(ExpireRule("stress/*", 1.0),)), grace=0.2, lease=1.0
    )

    async def loop() -> None:
        store = open_store()
        try:
            while not stop.is_set():
                try:
                    reports.append(await collect(Repository(store), options))
                except LeaseLost:
                    lost.append(1)  # a slow heartbeat: the run stopped deleting, as it must
        finally:
            await store.aclose()

    try:
        asyncio.run(loop())
    except BaseException as exc:
        errors.append(exc)


def test_concurrent_puts_and_collections_never_break_a_completed_manifest(
    gc_backend, request, tmp_path
):
    backend = request.getfixturevalue(gc_backend)
    open_store = backend.store.opener()
    assert open_store is not None
    stop = threading.Event()
    done: list = []
    expired: list = []
    lost: list = []
    reports: list = []
    errors: list = []
    threads = [
        threading.Thread(target=putter, args=(open_store, tmp_path, i, stop, done, expired, errors))
        for i in range(PUTTERS)
    ] + [threading.Thread(target=collector, args=(open_store, stop, reports, lost, errors))]
    for thread in threads:
        thread.start()
    time.sleep(DURATION)
    stop.set()
    for thread in threads:
        thread.join(60)
    assert not errors, errors

    async def check() -> list[str]:
        from cas.verify import Checker

        store = open_store()
        checker = Checker(Repository(store))
        broken = []
        try:
            refs = {r.name async for r in store.list_refs()}
            manifests = {i.id async for i in store.list(Kind.MANIFEST)}
            for ref, manifest_id, _, _ in done:
                if ref in refs or manifest_id in manifests:
                    problems = await checker.check_manifest(manifest_id)
                    if problems:
                        broken.append(f"{ref} {manifest_id}: {sorted(p.detail for p in problems)}")
            for manifest_id in manifests:
                if await checker.check_manifest(manifest_id):
                    broken.append(f"stored manifest {manifest_id}")
        finally:
            checker.close()
            await store.aclose()
        return broken

    broken = asyncio.run(check())
    deleted_packs = sum(r.deleted[Kind.PACK].objects for r in reports)
    repacked = sum(r.repacked.objects for r in reports)
    waits = sum(w for _, _, w, _ in done)
    print(
        f"\nstress: {len(done)} puts, {len(reports)} collections ({len(lost)} lost their "
        f"lease), {deleted_packs} packs deleted, {repacked} repacked, "
        f"{waits} settle rounds, {len(expired)} refs expired before their put "
        f"finished, {len(broken)} broken manifests"
    )
    assert len(done) >= PUTTERS and len(reports) >= 2 and deleted_packs > 0
    assert not broken, broken[:5]
