"""The fault-injection campaign: put, get, gc and verify through a faulty store, checked clean.

Each round, through `RetryingStore(FaultStore(store))` and the library entry
points the CLI uses:

1. put a new tree (ref `camp/<r>a`), then a changed tree on top of it (`camp/<r>b`,
   its parent found beside the ref); a failed put is run once more, as CI would;
2. get a stored manifest into an empty directory, and another one in place over
   the directory an earlier get filled (`delete=True`, so the result must be exact);
3. gc (grace 0, keep the newest refs), and verify the kept manifests.

After each operation a fault-free view of the same store checks what a user
relies on: a put that reported success reads back byte-exact with its ref in
place; every stored manifest and every ref's target is complete and intact
(`verify`, every chunk read); a get that succeeded wrote exactly the tree; an
operation that failed raised a `CasError` and nothing else; a failed get left
every path holding its old or its new content, and no temporary file; gc kept
every ref its rules keep. Damaged reads (truncated, flipped) must surface as
`IntegrityError` or be read again, never reach a destination; verify through
the faulty store may report damage only when some was injected.

Every fourth round (`permanent_every`) runs in permanent mode: the random errors are permanent
(`PermissionDenied`) instead of transient.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import stat
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cas.caches.chunks import ChunkCache
from cas.caches.files import FilesCache
from cas.chunking import ChunkParams
from cas.errors import CasError
from cas.gc.collector import GcOptions, collect
from cas.gc.repair import repair
from cas.gc.retention import KeepLastRule, Retention
from cas.gc.verify import Checker, verify_manifests
from cas.get.downloader import Downloader, GetOptions
from cas.get.fswrite import TEMP_PREFIX
from cas.ids import ObjectId, hash_bytes
from cas.put.uploader import PutOptions, Uploader
from cas.repo import DEFAULT_MAX_CHUNK, Repository
from cas.store.base import Kind, Store
from cas.store.local import LocalStore
from cas.store.retrying import RetryingStore, RetryPolicy
from tests.campaigns.faults import TRANSIENT, Fault, FaultPlan, FaultStore

FAST_RETRIES = RetryPolicy(attempts=6, initial=0.005, maximum=0.05, deadline=10.0)
PARAMS = ChunkParams.from_avg(64 << 10)
KEEP_REFS = 6
"""gc keeps the newest refs `camp/*`; older ones expire (and what only they reach goes)."""

Snapshot = dict[str, tuple[Any, ...]]
"""rel path -> ("file", size, digest, mode) | ("link", target) | ("dir",)."""


# ---------------------------------------------------------------- trees


def write_tree(rng: random.Random, root: Path, files: int) -> None:
    """A build-like tree: many small files, some larger ones, nested dirs, symlinks."""
    root.mkdir(parents=True)
    dirs = [root]
    for i in range(files):
        if rng.random() < 0.2:
            d = rng.choice(dirs) / f"d{i}"
            d.mkdir()
            dirs.append(d)
        _write_file(rng, rng.choice(dirs) / f"f{i}.bin")
    for i in range(rng.randrange(3)):
        (rng.choice(dirs) / f"l{i}").symlink_to(f"f{rng.randrange(files)}.bin")


def _write_file(rng: random.Random, path: Path) -> None:
    roll = rng.random()
    if roll < 0.35:
        size = rng.randrange(0, 4096)  # inline in its tree
    elif roll < 0.8:
        size = rng.randrange(4096, 100_000)
    elif roll < 0.97:
        size = rng.randrange(100_000, 700_000)
    else:
        size = rng.randrange(1 << 20, 3 << 20)
    block = rng.randbytes(min(size, 8192)) if size else b""
    if rng.random() < 0.5 and size:  # compressible: a repeated block
        data = (block * (size // len(block) + 1))[:size]
    else:
        data = rng.randbytes(size)
    path.write_bytes(data)
    if rng.random() < 0.15:
        path.chmod(0o755)


def change_tree(rng: random.Random, old: Path, new: Path) -> None:
    """`old` copied to `new`, then some files edited, some removed, some added."""
    shutil.copytree(old, new, symlinks=True)
    files = sorted(p for p in new.rglob("*") if p.is_file() and not p.is_symlink())
    for path in files:
        roll = rng.random()
        if roll < 0.1:
            path.unlink()
        elif roll < 0.3:
            data = bytearray(path.read_bytes())
            at = rng.randrange(len(data) + 1)
            data[at : at + rng.randrange(1, 5000)] = rng.randbytes(rng.randrange(1, 5000))
            path.write_bytes(bytes(data))
    dirs = [new, *(p for p in new.rglob("*") if p.is_dir() and not p.is_symlink())]
    for i in range(rng.randrange(1, 8)):
        _write_file(rng, rng.choice(dirs) / f"new{i}.bin")


def snapshot(root: Path) -> Snapshot:
    """What a tree holds, path by path (file contents by digest)."""
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in dirnames + filenames:
            path = base / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
            else:
                data = path.read_bytes()
                out[rel] = ("file", len(data), hash_bytes(data), stat.S_IMODE(st.st_mode))
    return out


def size_of(entry: tuple[Any, ...] | None) -> int:
    return entry[1] if entry is not None and entry[0] == "file" else 0


def temporaries(root: Path) -> list[str]:
    """Temporary names a get left behind."""
    if not root.exists():
        return []
    return [str(p.relative_to(root)) for p in root.rglob(TEMP_PREFIX + "*")]


# ---------------------------------------------------------------- figures


@dataclass
class Figures:
    """What the campaign did and found."""

    rounds: int = 0
    operations: Counter[str] = field(default_factory=Counter)
    succeeded: Counter[str] = field(default_factory=Counter)
    failed: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(operation, error type) of each operation that failed with a typed error."""
    failure_faults: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(error type, faults injected during that operation) of each failure."""
    unexpected: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    bytes_lost: int = 0
    store_calls: Counter[str] = field(default_factory=Counter)
    injected: Counter[str] = field(default_factory=Counter)
    permanent_rounds: int = 0
    survived: Counter[str] = field(default_factory=Counter)
    """Operations that met at least one fault and succeeded all the same."""
    survived_faults: Counter[str] = field(default_factory=Counter)
    """Per fault type: operations that met it and succeeded."""
    put_retries_succeeded: int = 0
    put_failed_after_ref: int = 0
    """Puts that failed after creating their ref (the ref names a whole manifest)."""
    verify_damage_reported: int = 0
    wall: float = 0.0

    def ok(self) -> bool:
        return not self.unexpected and not self.violations and self.bytes_lost == 0

    def report(self) -> str:
        lines = [
            f"rounds: {self.rounds} ({self.permanent_rounds} in permanent mode)",
            f"operations: {sum(self.operations.values())} "
            + _pairs(self.operations)
            + f"; succeeded {sum(self.succeeded.values())} "
            + _pairs(self.succeeded),
            f"store calls (through the fault layer): {sum(self.store_calls.values())} "
            + _pairs(self.store_calls),
            f"faults injected: {sum(self.injected.values())} " + _pairs(self.injected),
            f"operations that met faults and succeeded: {sum(self.survived.values())} "
            + _pairs(self.survived)
            + "; by fault met "
            + _pairs(self.survived_faults),
            f"failed with a typed error: {sum(self.failed.values())} "
            + _pairs({f"{op}/{err}": n for (op, err), n in self.failed.items()}),
            "failures by error and faults injected during the operation: "
            + _pairs({f"{err}<-[{faults}]": n for (err, faults), n in self.failure_faults.items()}),
            f"failed puts that succeeded when run again: {self.put_retries_succeeded}",
            f"failed puts whose ref was created (names the whole source): "
            f"{self.put_failed_after_ref}",
            f"verify through the faulty store reported damage (injected, not stored): "
            f"{self.verify_damage_reported}",
            f"unexpected exceptions: {len(self.unexpected)}",
            f"invariant violations: {len(self.violations)}",
            f"bytes lost or corrupted: {self.bytes_lost}",
            f"wall time: {self.wall:.1f} s",
        ]
        lines += [f"  unexpected: {u}" for u in self.unexpected[:20]]
        lines += [f"  violation: {v}" for v in self.violations[:20]]
        return "\n".join(lines)


def _pairs(counts: Any) -> str:
    items = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
    return "(" + ", ".join(f"{k} {v}" for k, v in items) + ")"


@dataclass
class Stored:
    """A put that reported success: its manifest, ref and source tree."""

    manifest: ObjectId
    ref: str
    tree: Snapshot


# ---------------------------------------------------------------- the campaign


class Campaign:
    """Rounds of operations through a faulty store, each checked through a clean one."""

    def __init__(
        self,
        store: Store,
        clean: Store,
        workdir: Path,
        *,
        seed: int,
        rate: float = 0.03,
        files: int = 40,
        policy: RetryPolicy = FAST_RETRIES,
        permanent_every: int = 4,
    ) -> None:
        self.store = store
        self.clean = clean
        self.workdir = workdir
        self.seed = seed
        self.rate = rate
        self.files = files
        self.policy = policy
        self.permanent_every = permanent_every
        self.rng = random.Random(seed)
        self.figures = Figures()
        self.stored: dict[ObjectId, Stored] = {}
        self.layer: FaultStore | None = None
        self.repo: Repository | None = None
        self.files_cache_dir = workdir / "files-cache"
        self.files_cache_dir.mkdir(parents=True, exist_ok=True)
        self.chunk_cache = ChunkCache(workdir / "chunk-cache", capacity=64 << 20)
        self.inplace = workdir / "inplace"
        self.inplace_tree: Snapshot = {}
        self._last: tuple[str, str, list[tuple[str, int, Fault]]] = ("", "", [])

    def close(self) -> None:
        self.chunk_cache.close()

    # ------------------------------------------------------------ plumbing

    def _open(self, permanent: bool, round_no: int) -> None:
        kinds = (*TRANSIENT, Fault.PERMANENT) if permanent else TRANSIENT
        if permanent:  # errors are permanent in this mode, not transient
            kinds = tuple(k for k in kinds if k is not Fault.ERROR)
        plan = FaultPlan(seed=self.seed * 100_003 + round_no, rate=self.rate, kinds=kinds)
        self._absorb()
        self.layer = FaultStore(self.store, plan)
        faulty = RetryingStore(self.layer, self.policy)
        cache = self.chunk_cache if round_no % 2 else None
        self.repo = Repository(faulty, cache, level=1)

    def _absorb(self) -> None:
        if self.layer is not None:
            self.figures.store_calls.update(self.layer.calls)
            self.figures.injected.update({str(k): v for k, v in self.layer.injected.items()})

    def _fresh_repo(self) -> Repository:
        """A new Repository over the same faulty layer (reads nothing remembered)."""
        assert self.repo is not None
        return Repository(self.repo.store, self.repo.cache, level=1)

    async def _attempt(self, op: str, work: Awaitable[Any]) -> tuple[bool, Any, set[str]]:
        """Run one operation: (succeeded, result or error, faults injected meanwhile)."""
        assert self.layer is not None
        before = len(self.layer.fired)
        self.figures.operations[op] += 1
        try:
            result = await work
        except CasError as exc:
            self._last = (op, f"{type(exc).__name__}: {exc}", self.layer.fired[before:])
            faults = {f for _, _, f in self.layer.fired[before:]}
            name = type(exc).__name__
            self.figures.failed[op, name] += 1
            self.figures.failure_faults[name, ",".join(sorted(faults))] += 1
            return False, exc, faults
        except Exception as exc:  # the campaign's point: there must be none
            self.figures.unexpected.append(
                f"{op}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}"
            )
            return False, exc, {f for _, _, f in self.layer.fired[before:]}
        self._last = (op, "ok", self.layer.fired[before:])
        self.figures.succeeded[op] += 1
        faults = {f for _, _, f in self.layer.fired[before:]}
        if faults:
            self.figures.survived[op] += 1
            self.figures.survived_faults.update(str(f) for f in faults)
        return True, result, faults

    def _violation(self, text: str, lost: int = 0) -> None:
        op, outcome, fired = self._last
        where = ", ".join(f"{m}#{n}:{f}" for m, n, f in fired)
        text += f" [last operation: {op} ({outcome:.200}); faults: {where or 'none'}]"
        self.figures.violations.append(text)
        self.figures.bytes_lost += lost

    # ------------------------------------------------------------ operations

    async def put(self, source: Path, ref: str) -> None:
        tree = snapshot(source)
        for attempt in range(2):  # a failed put is run once more, as a CI job would
            ok, result, _ = await self._attempt("put", self._put(source, ref))
            if ok:
                self.stored[result.manifest_id] = Stored(result.manifest_id, ref, tree)
                await self._check_put(result.manifest_id, ref, tree)
                if attempt:
                    self.figures.put_retries_succeeded += 1
                return
            await self._check_failed_put(ref, result)
            named = await self._ref_target(ref)
            if named is not None:
                # The put failed after creating its ref (e.g. while settling): the ref
                # names its manifest, which must read back as the source; a re-run
                # would only say "ref already exists".
                self.figures.put_failed_after_ref += 1
                self.stored[named] = Stored(named, ref, tree)
                await self._check_put(named, ref, tree)
                return

    async def _put(self, source: Path, ref: str) -> Any:
        assert self.repo is not None
        options = PutOptions(
            params=PARAMS, level=1, ref=ref, pack_size=256 << 10, workers=2, processes=False
        )
        files_cache = FilesCache(self.files_cache_dir, self.store.url, PARAMS)
        try:
            uploader = Uploader(self._fresh_repo(), options, files_cache=files_cache)
            return await uploader.put(source)
        finally:
            files_cache.close()

    async def get_fresh(self, manifest: ObjectId) -> None:
        dest = self.workdir / f"fresh-{self.figures.rounds}"
        expected = self.stored[manifest].tree
        ok, result, faults = await self._attempt("get-empty", self._get(manifest, dest, False))
        await self._check_get(dest, {}, expected, ok, result, faults, "get-empty")
        shutil.rmtree(dest, ignore_errors=True)

    async def get_inplace(self, manifest: ObjectId) -> None:
        dest = self.inplace
        old = snapshot(dest) if dest.exists() else {}
        expected = self.stored[manifest].tree
        ok, result, faults = await self._attempt("get-inplace", self._get(manifest, dest, True))
        await self._check_get(dest, old, expected, ok, result, faults, "get-inplace")

    async def _get(self, manifest: ObjectId, dest: Path, delete: bool) -> Any:
        repo = self._fresh_repo()
        return await Downloader(repo).get(manifest, dest, GetOptions(delete=delete))

    async def gc(self) -> None:
        refs_before = [r async for r in self.clean.list_refs()]
        retention = Retention(keep_last=(KeepLastRule("camp/*", KEEP_REFS),))
        may_go = {r.name for r in retention.expired(refs_before, time_now())}
        options = GcOptions(retention=retention, grace=0.0, lease=1.0)
        ok, _, _ = await self._attempt("gc", collect(self._fresh_repo(), options))
        refs_after = {r.name async for r in self.clean.list_refs()}
        for ref in refs_before:
            if ref.name not in refs_after and ref.name not in may_go:
                self._violation(f"gc removed ref {ref.name} its rules keep")
        if ok and may_go & refs_after:
            self._violation(f"gc succeeded but left expired refs {sorted(may_go & refs_after)}")
        await self._check_store("after gc")

    async def verify(self) -> None:
        """`cas verify IDS --repair` through the faulty store (one repository, as the CLI)."""
        alive = await self._alive()
        if not alive:
            return
        repo = self._fresh_repo()
        ok, report, faults = await self._attempt("verify", verify_manifests(repo, alive))
        if ok and not report.ok:
            await self._attempt("repair", repair(repo, report, lease_seconds=2.0))
            await self._check_store("after verify --repair")
        if ok and not report.ok:
            self.figures.verify_damage_reported += 1
            damaged = {Fault.TRUNCATE, Fault.FLIP} & faults
            if not damaged:
                self._violation(
                    "verify through the faulty store reported problems with no damage injected: "
                    + "; ".join(p.detail for p in list(report.broken)[:3])
                )

    # ------------------------------------------------------------ checks (fault-free)

    async def _ref_target(self, ref: str) -> ObjectId | None:
        try:
            return await self.clean.read_ref(ref)
        except CasError:
            return None

    async def _alive(self) -> list[ObjectId]:
        """Manifests we stored whose ref still exists."""
        refs = {r.name: r.target async for r in self.clean.list_refs()}
        return [m for m, s in self.stored.items() if refs.get(s.ref) == m]

    async def _check_put(self, manifest: ObjectId, ref: str, tree: Snapshot) -> None:
        try:
            target = await self.clean.read_ref(ref)
        except CasError as exc:
            self._violation(f"put of {ref} succeeded but its ref cannot be read: {exc}")
            return
        if target != manifest:
            self._violation(f"put of {ref} succeeded but the ref names {target}, not {manifest}")
        dest = self.workdir / "check"
        shutil.rmtree(dest, ignore_errors=True)
        try:
            await Downloader(Repository(self.clean)).get(manifest, dest)
        except CasError as exc:
            self._violation(
                f"put {manifest} ({ref}) succeeded but reads back with {type(exc).__name__}: {exc}",
                sum(size_of(e) for e in tree.values()),
            )
            return
        got = snapshot(dest)
        self._compare(got, tree, f"put {manifest} ({ref}) read back")
        shutil.rmtree(dest, ignore_errors=True)

    async def _check_failed_put(self, ref: str, error: Any) -> None:
        try:
            target: ObjectId | None = await self.clean.read_ref(ref)
        except CasError:
            target = None
        if target is not None:
            repo = Repository(self.clean)
            report = await verify_manifests(repo, [target])
            if not report.ok:
                self._violation(f"failed put left ref {ref} naming a broken manifest {target}")
        await self._check_store(f"after a failed put ({type(error).__name__})")

    async def _check_store(self, when: str) -> None:
        """Every stored manifest and every ref's target complete and intact, every chunk read."""
        repo = Repository(self.clean)
        listed = [info.id async for info in self.clean.list(Kind.MANIFEST)]
        refs = [r async for r in self.clean.list_refs()]
        checker = Checker(repo)
        try:
            for manifest in listed:
                await checker.check_manifest(manifest)
            for ref in refs:
                if ref.target not in listed:
                    self._violation(f"{when}: ref {ref.name} names a manifest not stored")
            report = checker.report
        finally:
            checker.close()
        for problem, manifests in report.broken.items():
            lost = sum(
                size_of(e)
                for m in manifests
                if m in self.stored
                for e in self.stored[m].tree.values()
            )
            self._violation(
                f"{when}: {problem.kind} {problem.id} {problem.detail} breaks "
                + ", ".join(map(str, manifests)),
                lost,
            )

    async def check_orphans(self) -> None:
        """Packs and indexes no manifest names must still be intact (verify --all's second half)."""
        checker = Checker(Repository(self.clean))
        try:
            await checker.check_orphans(DEFAULT_MAX_CHUNK)
            for problem in checker.report.broken:
                self._violation(f"orphan check: {problem.kind} {problem.id} {problem.detail}")
        finally:
            checker.close()

    async def _check_get(
        self,
        dest: Path,
        old: Snapshot,
        new: Snapshot,
        ok: bool,
        result: Any,
        faults: set[str],
        op: str,
    ) -> None:
        left = temporaries(dest)
        if left:
            self._violation(f"{op} left temporary files {left[:3]}")
        got = snapshot(dest) if dest.exists() else {}
        if ok:
            self._compare(got, new, f"{op} that succeeded")
            return
        damaged = {Fault.TRUNCATE, Fault.FLIP} & faults
        if type(result).__name__ == "IntegrityError" and not damaged:
            self._violation(f"{op} failed with IntegrityError but no damage was injected")
        for rel, entry in got.items():
            if rel.startswith(TEMP_PREFIX) or "/" + TEMP_PREFIX in rel:
                continue
            if entry[0] == "dir":
                continue
            if (
                entry != old.get(rel)
                and entry != new.get(rel)
                and not _same_content(entry, old.get(rel), new.get(rel))
            ):
                self._violation(
                    f"failed {op} left {rel} holding neither its old nor its new content",
                    size_of(entry),
                )

    def _compare(self, got: Snapshot, want: Snapshot, what: str) -> None:
        for rel in sorted(set(got) | set(want)):
            if got.get(rel) != want.get(rel):
                self._violation(
                    f"{what}: {rel} is {got.get(rel)!r:.120}, expected {want.get(rel)!r:.120}",
                    max(size_of(want.get(rel)), size_of(got.get(rel))),
                )

    # ------------------------------------------------------------ rounds

    async def round(self) -> None:
        r = self.figures.rounds
        permanent = r % self.permanent_every == self.permanent_every - 1
        self.figures.permanent_rounds += permanent
        self._open(permanent, r)
        src = self.workdir / "src" / f"r{r}"
        write_tree(self.rng, src / "a", self.rng.randrange(self.files // 2, self.files))
        await self.put(src / "a", f"camp/{r:05d}a")
        change_tree(self.rng, src / "a", src / "b")
        await self.put(src / "b", f"camp/{r:05d}b")
        shutil.rmtree(src)
        alive = await self._alive()
        if alive:
            await self.get_fresh(self.rng.choice(alive))
            await self.get_inplace(self.rng.choice(alive))
        if r % 2 == 1:
            await self.gc()
        await self.verify()
        await self._check_store(f"end of round {r}")
        if r % 5 == 4:
            await self.check_orphans()
        self.figures.rounds += 1

    async def run(self, seconds: float, max_rounds: int | None = None) -> Figures:
        started = time.monotonic()
        try:
            while time.monotonic() - started < seconds and (
                max_rounds is None or self.figures.rounds < max_rounds
            ):
                await self.round()
            if self.layer is not None:
                await self.check_orphans()
        finally:
            self._absorb()
            self.layer = None
            self.figures.wall = time.monotonic() - started
        return self.figures


def _same_content(entry: tuple[Any, ...], *candidates: tuple[Any, ...] | None) -> bool:
    """Same bytes (and type) as one candidate; a failed get may not have set the mode yet."""
    return any(c is not None and c[:3] == entry[:3] for c in candidates)


def time_now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


# ---------------------------------------------------------------- entry point


@contextlib.contextmanager
def _backend(kind: str, workdir: Path) -> Any:
    """(faulty base store, clean store) for `local` or a real `cas serve` subprocess."""
    if kind == "local":
        root = workdir / "store"
        yield LocalStore(root, fsync=False), LocalStore(root, fsync=False)
        return
    from cas.store.http import HttpStore
    from cas.store.limited import LimitedStore
    from tests.serve_process import TOKENS, start_serve

    server = start_serve(workdir / "serve")
    try:
        yield (
            LimitedStore(HttpStore(server.url, TOKENS["admin"])),
            LocalStore(server.root, create=False, fsync=False),
        )
    finally:
        server.stop()


async def run_campaign(
    seed: int,
    seconds: float,
    backend: str = "local",
    *,
    workdir: Path,
    max_rounds: int | None = None,
    rate: float = 0.03,
    files: int = 40,
    permanent_every: int = 4,
) -> Figures:
    """One campaign in `workdir`; returns its figures."""
    with _backend(backend, workdir) as (store, clean):
        campaign = Campaign(
            store,
            clean,
            workdir,
            seed=seed,
            rate=rate,
            files=files,
            permanent_every=permanent_every,
        )
        try:
            return await campaign.run(seconds, max_rounds)
        finally:
            campaign.close()
            await store.aclose()
            await clean.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.campaigns.faults", description=__doc__)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--backend", choices=("local", "serve"), default="local")
    parser.add_argument("--rate", type=float, default=0.03, help="faults per store call")
    parser.add_argument("--files", type=int, default=40, help="files per new tree (at most)")
    parser.add_argument("--max-rounds", type=int, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cas-faults-") as tmp:
        workdir = Path(tmp)
        os.environ["XDG_CACHE_HOME"] = str(workdir / "xdg-cache")
        os.environ["XDG_DATA_HOME"] = str(workdir / "xdg-data")
        figures = asyncio.run(
            run_campaign(
                args.seed,
                args.seconds,
                args.backend,
                workdir=workdir,
                max_rounds=args.max_rounds,
                rate=args.rate,
                files=args.files,
            )
        )
    print(
        f"fault campaign: seed {args.seed}, backend {args.backend}, rate {args.rate}, "
        f"{args.seconds:g} s asked"
    )
    print(figures.report())
    return 0 if figures.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
