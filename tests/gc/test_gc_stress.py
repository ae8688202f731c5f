"""Stress: puts of changing trees and repeated collections at once; nothing completed breaks.

Putters build trees from a shared pool of file contents, and each put's
parent is a put of any putter that completed about a second earlier, whose
ref is expiring just then, so puts keep reusing packs whose last referencing
manifest has just expired: exactly the packs a concurrent collection deletes
or repacks. Collections run back to back
with a sub-second grace period and expire refs after a second. At the end
every manifest still in the store, and every completed put whose ref
survived, must read back in full.

A reader gets the newest completed put, again and again, into an empty
directory and compares every byte with the tree that was put. A get may
lose a race with retention (the ref expires after a second, and the grace
period is sub-second here, so a get slower than that may find the manifest
or a pack gone); such a failure counts only if the manifest is still stored
and no longer reads back (then it is broken). Wrong bytes always fail.

`CAS_STRESS_SECONDS` (default 6) and `CAS_STRESS_PUTTERS` (default 3) make
it a longer campaign. `CAS_STRESS_NO_PROTOCOL=1` turns the put's settling
step off, to show that the test then fails.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from pathlib import Path

import pytest

from cas.errors import IntegrityError, ObjectNotFound
from cas.gc.collector import GcOptions, LeaseLost, collect
from cas.gc.fence import ConcurrentGcError
from cas.gc.retention import ExpireRule, Retention
from cas.get.downloader import restore_manifest
from cas.put.uploader import PutOptions, Uploader
from cas.repo import Repository
from cas.store.base import Kind

GC_BACKENDS = ["local_backend", "gcs_backend", "serve_backend"]
DURATION = float(os.environ.get("CAS_STRESS_SECONDS", "6"))
PUTTERS = int(os.environ.get("CAS_STRESS_PUTTERS", "3"))
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
    sources: dict,
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
                sources[result.manifest_id] = src
                done.append(
                    (options.ref, result.manifest_id, result.stats.gc_waits, time.monotonic())
                )
        finally:
            await store.aclose()

    try:
        asyncio.run(loop())
    except BaseException as exc:
        errors.append(exc)


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def reader(
    open_store, workdir: Path, stop: threading.Event, done: list, sources: dict, gets: dict
) -> None:
    """Get the newest completed put into an empty directory and compare its bytes, repeatedly.

    `gets` counts: `ok`; `gone` (the get failed and retention has removed
    the manifest); `raced` (the get failed, but the manifest is still stored
    and reads back whole: the get read a pack a collection removed, e.g. an
    old pack of a repack, gone one sub-second grace period later); `broken`
    (wrong bytes, or a stored manifest that no longer reads back), with
    details; `errors` for anything else.
    """

    async def loop() -> None:
        from cas.gc.verify import Checker

        store = open_store()
        n = 0
        gone: set = set()
        try:
            while not stop.is_set():
                if not done or done[-1][1] in gone:
                    await asyncio.sleep(0.05)
                    continue
                ref, manifest_id, _, _ = done[-1]
                n += 1
                dest = workdir / f"get-{n}"
                try:
                    await restore_manifest(Repository(store), manifest_id, dest)
                except (ObjectNotFound, IntegrityError) as exc:
                    stored = {i.id async for i in store.list(Kind.MANIFEST, str(manifest_id))}
                    checker = Checker(Repository(store))
                    try:
                        problems = await checker.check_manifest(manifest_id) if stored else []
                    finally:
                        checker.close()
                    if problems:
                        gets["broken"].append(f"get {ref} {manifest_id}: {exc}")
                    else:
                        gets["raced" if stored else "gone"] += 1
                        gone.add(manifest_id)
                    continue
                if files_of(dest) != files_of(sources[manifest_id]):
                    gets["broken"].append(f"get {ref} {manifest_id}: bytes differ")
                else:
                    gets["ok"] += 1
        finally:
            await store.aclose()

    try:
        asyncio.run(loop())
    except BaseException as exc:
        gets["errors"].append(exc)


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
    sources: dict = {}
    gets: dict = {"ok": 0, "gone": 0, "raced": 0, "broken": [], "errors": []}
    expired: list = []
    lost: list = []
    reports: list = []
    errors: list = []
    threads = [
        threading.Thread(
            target=putter, args=(open_store, tmp_path, i, stop, done, sources, expired, errors)
        )
        for i in range(PUTTERS)
    ] + [
        threading.Thread(target=collector, args=(open_store, stop, reports, lost, errors)),
        threading.Thread(target=reader, args=(open_store, tmp_path, stop, done, sources, gets)),
    ]
    for thread in threads:
        thread.start()
    time.sleep(DURATION)
    stop.set()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert not gets["errors"], gets["errors"]

    async def check() -> tuple[list[str], int]:
        from cas.gc.verify import Checker

        store = open_store()
        checker = Checker(Repository(store))
        broken = []
        checked = 0
        try:
            refs = {r.name async for r in store.list_refs()}
            manifests = {i.id async for i in store.list(Kind.MANIFEST)}
            for ref, manifest_id, _, _ in done:
                if ref in refs or manifest_id in manifests:
                    problems = await checker.check_manifest(manifest_id)
                    checked += 1
                    if problems:
                        broken.append(f"{ref} {manifest_id}: {sorted(p.detail for p in problems)}")
            for manifest_id in manifests:
                checked += 1
                if await checker.check_manifest(manifest_id):
                    broken.append(f"stored manifest {manifest_id}")
        finally:
            checker.close()
            await store.aclose()
        return broken, checked

    broken, checked = asyncio.run(check())
    deleted_packs = sum(r.deleted[Kind.PACK].objects for r in reports)
    repacked = sum(r.repacked.objects for r in reports)
    waits = sum(w for _, _, w, _ in done)
    print(
        f"\nstress: {len(done)} puts, {len(reports)} collections ({len(lost)} lost their "
        f"lease), {deleted_packs} packs deleted, {repacked} repacked, "
        f"{waits} settle rounds, {len(expired)} refs expired before their put "
        f"finished; {gets['ok']} gets checked byte for byte, {gets['gone']} failed on a "
        f"manifest retention removed, {gets['raced']} on a pack removed under them, "
        f"{len(gets['broken'])} broken; {checked} manifest checks at the "
        f"end, {len(broken)} broken manifests"
    )
    assert len(done) >= PUTTERS and len(reports) >= 2 and deleted_packs > 0
    assert gets["ok"] >= 1
    assert not gets["broken"], gets["broken"][:5]
    assert not broken, broken[:5]
