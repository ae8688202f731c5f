"""Space over time: consecutive CI runs with a little churn each, retention keeping the last 10.

    python benchmarks/churn.py --corpus-dir DIR --runs 50                   # the spec's run
    python benchmarks/churn.py --corpus-dir DIR --runs 20 --repack-below 0,0.3,0.5,0.7
    python benchmarks/churn.py --smoke                                      # seconds; CI
    python benchmarks/churn.py ... --state DIR    # keeps its work in DIR; run again to resume
    python benchmarks/churn.py --render A.json B.json                       # tables of saved runs

The question store format 2 must answer: packs hold the chunks of many files,
and a pack can only be deleted once *none* of its frames is live, so after
many runs with churn the store may hold much more than what the kept refs
reach. The spec's goal is stored/live <= 1.3 after every run.

**Setup.** The `build` corpus (~1 GB, benchmarks/corpus.py) is copied into a
work directory (on the same disk as --work) and put as run 0 (`ci/main/0`).

**Each run N = 1..RUNS**, in order:

1. Mutate the copy, deterministically (`random.Random(f"{seed}:{N}")`, over
   the sorted file list), like a rebuild after a small commit: `--rate` (2%)
   of the files rewritten, `rate/8` of them deleted and as many added, and
   `--relink` (2) files of at least 8 MiB edited in place. A rewritten file
   under 1 MiB (a recompiled object) gets all new bytes: a slice of another
   file passed through a fresh byte permutation (so it compresses like the
   corpus but shares no chunk with anything), 0.9x-1.15x its old size. A
   file of 1 MiB or more (an archive, a relinked library or executable) gets
   2-6 regions (plus one per 32 MiB) of 1-64 KiB replaced by 1-64 KiB of new
   bytes (so later content shifts). Added files are new bytes of the size of
   a random existing file (at most 4 MiB). Touched files and directories
   get the run's mtime, so every variant and every invocation sees the same
   trees.
2. Put: `cas.put.uploader.Uploader` with `PutOptions(ref="ci/main/N")` and a
   `FilesCache` in a temporary cache directory, exactly what `cas put --ref
   ci/main/N` does (its default parent is the newest ref under `ci/main/`).
3. Collect: `cas.gc.collector.collect` with `GcOptions(retention=Retention(keep_last=
   (KeepLastRule("ci/main/*", KEEP),)), grace=0.0, repack_below=R)`: `cas gc
   --keep-last 10 'ci/main/*' --grace 0s` (the command has no option for R;
   its default is 0.5).
4. Measure. A `WrappingStore` counts every create (`put_if_absent`,
   `put_many`) and delete by namespace, during the put and during gc.
   *Stored* = the sizes of every object in the pack, index and manifest
   namespaces (listed after gc; gc records are reported apart). *Live* =
   the frames the kept refs reach: for each kept ref, the index a reader
   would choose (`Repository.index`), summing `Location.stored` over
   distinct (pack, offset). *Settled* = stored minus the packs no kept
   index names: those a repack has just copied, which gc leaves for its
   next run (a get or put may still be reading them), so "stored/live after
   every run" includes each repack's input once. Every kept manifest is
   checked complete (`cas.gc.verify.manifest_complete`; `--smoke` reads
   everything back).

**Format 1 on the same runs, derived from the same data.** Format 1 stored
each chunk and each tree as its own store object, the same single zstd frame
(same level) that format 2 puts in a pack, and gc deleted unreachable
objects one by one. So, with K(N) = the (kind, id) of every chunk and tree
the kept refs' indexes list after run N's gc, and I(N) those run N's index
lists:

- format 1 writes in run N = |I(N) - K(N-1)| objects (the chunks and trees
  new to the store: with grace 0 a format 1 store holds exactly K(N-1)
  before the put) + 1 manifest (+ the ref, as in format 2);
- format 1 bytes uploaded in run N = the `stored` sizes of those objects +
  the manifest;
- format 1 stored bytes after run N's gc = the `stored` sizes of distinct
  objects in K(N) (= live by object; equal to live by frame unless an
  object lies in two packs) + the kept manifests: stored/live is 1.0 by
  construction;
- format 1 deletes in run N's gc = |(K(N-1) + I(N)) - K(N)| objects + the
  manifests of expired refs.

Format 1 also deduplicated against everything in the store, format 2 only
against the parent's index (and the put's own packs), so format 2 can
upload a few objects format 1 would not have (an object that was in a
kept run but not in the parent); the tables show both counts. Per-object
file system overhead (a local format 1 store used one inode and at least
one 4 KiB block per object) is not counted.

Output: a markdown table per variant (one row per run) and a summary (median
and max of stored/live over runs 10..RUNS; writes and uploaded bytes per
run, format 2 vs format 1; bytes gc rewrote by repacking). Several
`--repack-below` values run in lockstep on the same mutated tree, each with
its own store and files cache. `--json FILE` saves every row after every
run; `--render FILE...` prints the tables of saved runs (several files'
variants side by side).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import corpus  # noqa: E402

import cas.gc.repack  # noqa: E402, F401  (gc imports it lazily: load it with the rest)
from cas.caches.files import FilesCache  # noqa: E402
from cas.gc.collector import GcOptions, GcReport, collect  # noqa: E402
from cas.gc.retention import KeepLastRule, Retention  # noqa: E402
from cas.gc.verify import manifest_complete, verify_manifests  # noqa: E402
from cas.ids import ObjectId  # noqa: E402
from cas.pack import ObjectKind  # noqa: E402
from cas.put.uploader import PutOptions, PutResult, Uploader  # noqa: E402
from cas.repo import Repository  # noqa: E402
from cas.store.base import Kind, Store  # noqa: E402
from cas.store.local import LocalStore  # noqa: E402
from cas.store.wrapping import WrappingStore  # noqa: E402

REF_PREFIX = "ci/main/"
LARGE = 1 << 20
"""Files at least this big are edited in regions; smaller ones are rewritten whole."""
RELINK_MIN = 8 << 20
ADD_MAX = 4 << 20
RUN_MTIME_STEP = 3600


def log(message: str) -> None:
    print(f"[churn] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- counting


@dataclass
class Counter:
    calls: int = 0
    bytes: int = 0


class CountingStore(WrappingStore):
    """Counts creates (calls and bytes) and deletes per namespace, under the current phase."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.phase = "put"
        self.writes: dict[tuple[str, Kind], Counter] = defaultdict(Counter)
        self.deletes: dict[tuple[str, Kind], int] = defaultdict(int)
        self.new_packs: set[ObjectId] = set()

    def take(self) -> tuple[dict[tuple[str, Kind], Counter], dict[tuple[str, Kind], int]]:
        """The counts so far; start again from zero."""
        out = (dict(self.writes), dict(self.deletes))
        self.writes, self.deletes = defaultdict(Counter), defaultdict(int)
        self.new_packs = set()
        return out

    async def put_if_absent(self, kind: Kind, object_id: ObjectId, data: bytes) -> bool:
        c = self.writes[self.phase, kind]
        c.calls += 1
        c.bytes += len(data)
        if kind is Kind.PACK:
            self.new_packs.add(object_id)
        return await self.inner.put_if_absent(kind, object_id, data)

    async def put_many(self, kind: Kind, items: Sequence[tuple[ObjectId, bytes]]) -> list[bool]:
        c = self.writes[self.phase, kind]
        c.calls += len(items)
        c.bytes += sum(len(d) for _, d in items)
        return await self.inner.put_many(kind, items)

    async def delete(self, kind: Kind, object_id: ObjectId) -> None:
        self.deletes[self.phase, kind] += 1
        await self.inner.delete(kind, object_id)

    async def delete_many(self, kind: Kind, ids: Sequence[ObjectId]) -> None:
        self.deletes[self.phase, kind] += len(ids)
        await self.inner.delete_many(kind, ids)


# ---------------------------------------------------------------- mutating the tree


@dataclass
class Mutation:
    rewritten: int = 0
    edited: int = 0
    added: int = 0
    deleted: int = 0
    bytes_written: int = 0

    @property
    def files(self) -> int:
        return self.rewritten + self.edited + self.added + self.deleted


class Mutator:
    """Seeded edits of a directory tree, one call per run."""

    def __init__(self, root: Path, seed: int, rate: float, relink: int) -> None:
        self.root = root
        self.seed = seed
        self.rate = rate
        self.relink = relink

    def files(self) -> list[tuple[str, int]]:
        """(relative path, size) of every regular file, in sorted order."""
        out = []
        for dirpath, dirnames, names in os.walk(self.root):
            dirnames.sort()
            for name in sorted(names):
                full = os.path.join(dirpath, name)
                st = os.lstat(full)
                if stat.S_ISREG(st.st_mode):
                    out.append((os.path.relpath(full, self.root), st.st_size))
        return out

    def run(self, n: int, undo: Path | None = None) -> Mutation:
        """Mutate for run `n`; with `undo`, first keep what is needed to take it back."""
        rng = random.Random(f"{self.seed}:{n}")
        mtime = corpus.BASE_MTIME + 86_400 + n * RUN_MTIME_STEP
        files = self.files()
        self._pool = [(p, s) for p, s in files if s > 0]
        stats = Mutation()
        touched_dirs: set[str] = set()
        count = len(files)
        k_rewrite = max(1, round(count * self.rate))
        k_churn = max(1, round(count * self.rate / 8))
        chosen = rng.sample(range(count), k_rewrite + k_churn)
        rewrite = [files[i] for i in sorted(chosen[:k_rewrite])]
        delete = [files[i][0] for i in sorted(chosen[k_rewrite:])]
        taken = {p for p, _ in rewrite} | set(delete)
        big = [f for f in files if f[1] >= RELINK_MIN and f[0] not in taken]
        relinked = rng.sample(big, min(self.relink, len(big)))
        if undo is not None:
            self._keep_undo(undo, n, [p for p, _ in rewrite + relinked] + delete)
        for path, size in rewrite + sorted(relinked):
            full = self.root / path
            if size >= LARGE:
                data = self._edit_regions(rng, full.read_bytes())
                stats.edited += 1
            else:
                data = self._fresh(rng, max(1, int(size * rng.uniform(0.9, 1.15))))
                stats.rewritten += 1
            self._write(full, data, mtime, os.lstat(full).st_mode & 0o7777)
            stats.bytes_written += len(data)
            touched_dirs.add(os.path.dirname(path))
        for i in range(k_churn):
            near, _ = rng.choice(files)
            d = os.path.dirname(near)
            name = f"churn{n:03d}_{i}.cpp.o"
            size = min(ADD_MAX, rng.choice(self._pool)[1])
            data = self._fresh(rng, size)
            self._write(self.root / d / name, data, mtime, 0o644)
            stats.added += 1
            stats.bytes_written += len(data)
            touched_dirs.add(d)
        for path in delete:
            os.unlink(self.root / path)
            stats.deleted += 1
            touched_dirs.add(os.path.dirname(path))
        for d in sorted(touched_dirs, key=lambda p: -len(p)):
            os.utime(self.root / d, (mtime, mtime))
        return stats

    def _keep_undo(self, undo: Path, n: int, paths: list[str]) -> None:
        """Hard links to the files about to be replaced or deleted, and every directory's times."""
        shutil.rmtree(undo, ignore_errors=True)
        (undo / "files").mkdir(parents=True)
        dirs = {}
        for dirpath, _dirnames, _names in os.walk(self.root):
            st = os.lstat(dirpath)
            dirs[os.path.relpath(dirpath, self.root)] = (st.st_atime_ns, st.st_mtime_ns)
        kept = []
        for i, path in enumerate(dict.fromkeys(paths)):
            os.link(self.root / path, undo / "files" / str(i))
            kept.append((path, str(i)))
        (undo / "plan.json").write_text(json.dumps({"run": n, "files": kept, "dirs": dirs}))

    def undo(self, undo: Path) -> None:
        """Take back a mutation that was interrupted (its plan was written first)."""
        plan_file = undo / "plan.json"
        if plan_file.exists():
            plan = json.loads(plan_file.read_text())
            added = f"churn{plan['run']:03d}_"
            for dirpath, _dirnames, names in os.walk(self.root):
                for name in names:
                    if name.endswith(".churn-tmp") or name.startswith(added):
                        os.unlink(os.path.join(dirpath, name))
            for path, kept in plan["files"]:
                os.replace(undo / "files" / kept, self.root / path)
            for d, times in sorted(plan["dirs"].items(), key=lambda item: -len(item[0])):
                os.utime(self.root / d, ns=tuple(times))
            log(f"took back the interrupted mutation of run {plan['run']}")
        shutil.rmtree(undo, ignore_errors=True)

    def _fresh(self, rng: random.Random, size: int) -> bytes:
        """`size` new bytes: slices of existing files through a fresh byte permutation."""
        table = list(range(256))
        rng.shuffle(table)
        out = bytearray()
        while len(out) < size:
            path, src_size = rng.choice(self._pool)
            start = rng.randrange(src_size)
            with open(self.root / path, "rb") as f:
                out += os.pread(f.fileno(), min(size - len(out), src_size - start), start)
        return bytes(out).translate(bytes(table))

    def _edit_regions(self, rng: random.Random, data: bytes) -> bytes:
        buf = bytearray(data)
        edits = rng.randint(2, 6) + len(buf) // (32 << 20)
        for _ in range(edits):
            at = rng.randrange(len(buf))
            delete = rng.randint(1 << 10, 64 << 10)
            buf[at : at + delete] = self._fresh(rng, rng.randint(1 << 10, 64 << 10))
        return bytes(buf)

    @staticmethod
    def _write(path: Path, data: bytes, mtime: int, mode: int) -> None:
        tmp = path.with_name(path.name + ".churn-tmp")
        tmp.write_bytes(data)
        os.chmod(tmp, mode)
        os.utime(tmp, (mtime, mtime))
        os.replace(tmp, path)


# ---------------------------------------------------------------- one variant


@dataclass
class Row:
    """One run of one variant."""

    run: int
    mutated_files: int = 0
    put_s: float = 0.0
    gc_s: float = 0.0
    # format 2, the put
    packs_written: int = 0
    writes: int = 0
    uploaded: int = 0
    objects_packed: int = 0
    """Chunks and trees of this run's index that lie in packs this put wrote."""
    # format 2, gc
    gc_pack_writes: int = 0
    gc_index_writes: int = 0
    gc_record_writes: int = 0
    gc_deletes: int = 0
    repacked_bytes: int = 0
    repack_written: int = 0
    # after gc
    kept_refs: int = 0
    packs: int = 0
    pack_bytes: int = 0
    index_bytes: int = 0
    manifest_bytes: int = 0
    gc_record_objects: int = 0
    unnamed_pack_bytes: int = -1
    """Packs no kept index names (repacked ones, deleted by the next gc); -1: not measured."""
    live_frames: int = 0
    live_objects: int = 0
    # format 1, derived
    f1_writes: int = 0
    f1_uploaded: int = 0
    f1_stored: int = 0
    f1_deletes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def stored(self) -> int:
        return self.pack_bytes + self.index_bytes + self.manifest_bytes

    @property
    def ratio(self) -> float:
        return self.stored / self.live_frames if self.live_frames else 0.0

    @property
    def settled(self) -> float | None:
        """Stored/live without the packs the next gc deletes anyway (None: not measured)."""
        if self.unnamed_pack_bytes < 0 or not self.live_frames:
            return None
        return (self.stored - self.unnamed_pack_bytes) / self.live_frames


class Variant:
    """One store, files cache and gc setting, fed the same tree as the others."""

    def __init__(
        self,
        base: Path,
        repack_below: float,
        keep: int,
        pack_size: int,
        full_verify: bool,
    ) -> None:
        self.repack_below = repack_below
        self.keep = keep
        self.pack_size = pack_size
        self.full_verify = full_verify
        self.dir = base / f"repack-{repack_below:g}"
        self.cache_dir = self.dir / "cache"
        self.store_dir = self.dir / "store"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.store = CountingStore(LocalStore(self.store_dir, fsync=False))
        self.kept: dict[tuple[ObjectKind, ObjectId], int] | None = None
        """K(N-1): every chunk and tree the kept refs reach, with its stored size."""
        self.kept_manifests: set[ObjectId] = set()
        self.rows: list[Row] = []

    # -- resuming: a step interrupted half-way is redone from a copy taken before it

    def snapshot(self) -> None:
        """Hard links to the store's objects (never changed in place), a copy of the caches."""
        snap = self.dir / "before-step"
        shutil.rmtree(snap, ignore_errors=True)
        shutil.copytree(self.store_dir, snap / "store", copy_function=os.link)
        shutil.copytree(self.cache_dir, snap / "cache")

    def restore(self) -> None:
        snap = self.dir / "before-step"
        for name in ("store", "cache"):
            shutil.rmtree(self.dir / name)
            link = os.link if name == "store" else shutil.copy2
            shutil.copytree(snap / name, self.dir / name, copy_function=link)
        self.store = CountingStore(LocalStore(self.store_dir, fsync=False))
        self.kept = None
        log(f"repack {self.repack_below:g}: store and caches restored to before the step")

    async def _load_kept(self) -> None:
        """K(N-1) from the store itself (after a restart)."""
        repo = Repository(self.store)
        refs = [r async for r in self.store.list_refs(REF_PREFIX)]
        self.kept, self.kept_manifests = {}, {r.target for r in refs}
        for m in self.kept_manifests:
            for kind, object_id, loc in (await repo.index(m)).items():
                self.kept[kind, object_id] = loc.stored

    async def step(self, n: int, source: Path, mutated: int) -> Row:
        if self.kept is None:
            await self._load_kept()
        assert self.kept is not None
        row = Row(n, mutated_files=mutated)
        store = self.store
        store.take()
        store.phase = "put"
        t0 = time.monotonic()
        result = await self._put(source, n)
        row.put_s = time.monotonic() - t0
        new_packs = store.new_packs
        writes, _ = store.take()
        row.packs_written = writes.get(("put", Kind.PACK), Counter()).calls
        row.writes = sum(c.calls for (_, kind), c in writes.items() if kind is not Kind.GC)
        row.uploaded = sum(c.bytes for (_, kind), c in writes.items() if kind is not Kind.GC)

        # format 1: what the put adds to the objects the kept refs reached
        index = await Repository(store).index(result.manifest_id)
        mine = {(kind, object_id): loc.stored for kind, object_id, loc in index.items()}
        row.objects_packed = sum(1 for _, _, loc in index.items() if loc.pack in new_packs)
        new = {key: size for key, size in mine.items() if key not in self.kept}
        manifest_size = (await store.stat(Kind.MANIFEST, result.manifest_id)).size
        row.f1_writes = len(new) + 1
        row.f1_uploaded = sum(new.values()) + manifest_size
        before = set(self.kept) | set(mine)

        store.phase = "gc"
        t0 = time.monotonic()
        report = await self._gc()
        row.gc_s = time.monotonic() - t0
        writes, deletes = store.take()
        row.gc_pack_writes = writes.get(("gc", Kind.PACK), Counter()).calls
        row.gc_index_writes = writes.get(("gc", Kind.INDEX), Counter()).calls
        row.gc_record_writes = writes.get(("gc", Kind.GC), Counter()).calls
        row.gc_deletes = sum(v for (_, kind), v in deletes.items() if kind is not Kind.GC)
        row.repacked_bytes = report.repacked.bytes
        row.repack_written = report.repack_written.bytes
        if report.unreadable or report.sweep_skipped:
            row.problems.append(f"gc: unreadable {report.unreadable}")

        await self._measure(row, before)
        self.rows.append(row)
        return row

    async def _put(self, source: Path, n: int) -> PutResult:
        files_cache = FilesCache(self.cache_dir, self.store.url, PutOptions().params)
        try:
            options = PutOptions(ref=f"{REF_PREFIX}{n}", pack_size=self.pack_size)
            uploader = Uploader(Repository(self.store), options, files_cache=files_cache)
            return await uploader.put(source)
        finally:
            files_cache.close()

    async def _gc(self) -> GcReport:
        options = GcOptions(
            retention=Retention(keep_last=(KeepLastRule(f"{REF_PREFIX}*", self.keep),)),
            grace=0.0,
            repack_below=self.repack_below,
        )
        return await collect(Repository(self.store), options)

    async def _measure(self, row: Row, before: set[tuple[ObjectKind, ObjectId]]) -> None:
        store = self.store
        refs = [r async for r in store.list_refs(REF_PREFIX)]
        manifests = sorted({r.target for r in refs})
        row.kept_refs = len(refs)
        repo = Repository(store)
        frames: dict[tuple[ObjectId, int], int] = {}
        objects: dict[tuple[ObjectKind, ObjectId], int] = {}
        for m in manifests:
            index = await repo.index(m)
            for kind, object_id, loc in index.items():
                frames[loc.pack, loc.offset] = loc.stored
                objects[kind, object_id] = loc.stored
        row.live_frames = sum(frames.values())
        row.live_objects = sum(objects.values())
        sizes: dict[Kind, list[int]] = {}
        named = {pack for pack, _ in frames}
        row.unnamed_pack_bytes = 0
        for kind in (Kind.PACK, Kind.INDEX, Kind.MANIFEST, Kind.GC):
            sizes[kind] = []
            async for info in store.list(kind):
                sizes[kind].append(info.size)
                if kind is Kind.PACK and info.id not in named:
                    row.unnamed_pack_bytes += info.size
        row.packs = len(sizes[Kind.PACK])
        row.pack_bytes = sum(sizes[Kind.PACK])
        row.index_bytes = sum(sizes[Kind.INDEX])
        row.manifest_bytes = sum(sizes[Kind.MANIFEST])
        row.gc_record_objects = len(sizes[Kind.GC])
        manifest_bytes = 0
        for m in manifests:
            manifest_bytes += (await store.stat(Kind.MANIFEST, m)).size
        row.f1_stored = row.live_objects + manifest_bytes
        row.f1_deletes = len(before - set(objects)) + len(self.kept_manifests - set(manifests))
        self.kept = objects
        self.kept_manifests = set(manifests)
        for m in manifests:
            if not await manifest_complete(Repository(store), m):
                row.problems.append(f"manifest {m} incomplete after gc")
        if self.full_verify:
            verified = await verify_manifests(Repository(store), manifests)
            if not verified.ok:
                row.problems.append(f"verify: {len(verified.broken)} broken objects")
        if row.stored < row.live_frames:
            row.problems.append("stored < live")


# ---------------------------------------------------------------- reporting


@dataclass
class Saved:
    """A variant's rows read back from `--json` (`--render`)."""

    repack_below: float
    rows: list[Row]


def save_json(path: Path, variants: Sequence[Variant]) -> None:
    rows = {
        f"{v.repack_below:g}": [
            {**asdict(r), "stored": r.stored, "ratio": r.ratio, "settled": r.settled}
            for r in v.rows
        ]
        for v in variants
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(rows, indent=1))
    os.replace(tmp, path)


def load_json(path: Path) -> list[Saved]:
    names = {f.name for f in fields(Row)}
    return [
        Saved(float(below), [Row(**{k: v for k, v in r.items() if k in names}) for r in rows])
        for below, rows in json.loads(path.read_text()).items()
    ]


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f}"


def render_runs(v: Variant | Saved) -> str:
    lines = [
        f"#### repack below {v.repack_below:g}: every run",
        "",
        "| run | files mutated | put s | gc s | put writes (packs) | uploaded MB "
        "| gc writes | gc deletes | repacked MB | gc rewrote MB | packs | stored MB | live MB "
        "| stored/live | settled "
        "| objects packed | f1 writes | f1 uploaded MB | f1 deletes |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in v.rows:
        lines.append(
            f"| {r.run} | {r.mutated_files} | {r.put_s:.1f} | {r.gc_s:.1f} "
            f"| {r.writes} ({r.packs_written}) | {mb(r.uploaded)} "
            f"| {r.gc_pack_writes + r.gc_index_writes} | {r.gc_deletes} "
            f"| {mb(r.repacked_bytes)} | {mb(r.repack_written)} | {r.packs} | {mb(r.stored)} "
            f"| {mb(r.live_frames)} "
            f"| {r.ratio:.3f} | {fmt_ratio(r.settled)} | {r.objects_packed:,} | {r.f1_writes:,} "
            f"| {mb(r.f1_uploaded)} | {r.f1_deletes:,} |"
        )
    return "\n".join(lines)


def summary_row(v: Variant | Saved, from_run: int) -> str:
    steady = [r for r in v.rows if r.run >= from_run]
    churn = [r for r in v.rows if r.run >= 1]
    if not steady or not churn:
        return f"| {v.repack_below:g} | (fewer than {from_run} runs) |"
    ratios = [r.ratio for r in steady]
    over = sum(1 for r in steady if r.ratio > 1.3)
    settled = [r.settled for r in steady if r.settled is not None]
    med = statistics.median
    return (
        f"| {v.repack_below:g} | {med(ratios):.3f} | {max(ratios):.3f} | {over}/{len(steady)} "
        f"| {fmt_ratio(med(settled) if settled else None)} "
        f"| {fmt_ratio(max(settled) if settled else None)} "
        f"| {med(r.writes for r in churn):.0f} | {max(r.writes for r in churn)} "
        f"| {med(r.f1_writes for r in churn):,.0f} | {max(r.f1_writes for r in churn):,} "
        f"| {mb(med(r.uploaded for r in churn))} | {mb(med(r.f1_uploaded for r in churn))} "
        f"| {med(r.gc_pack_writes + r.gc_index_writes for r in churn):.0f} "
        f"| {mb(sum(r.repack_written for r in churn))} "
        f"| {mb(sum(r.repack_written for r in churn) / len(churn))} "
        f"| {med(r.gc_deletes for r in churn):.0f} | {med(r.f1_deletes for r in churn):,.0f} "
        f"| {mb(steady[-1].stored)} | {mb(steady[-1].f1_stored)} |"
    )


def render_summary(variants: Sequence[Variant | Saved], from_run: int) -> str:
    runs = max(r.run for r in variants[0].rows)
    lines = [
        f"Stored/live after runs {from_run}..{runs}; writes, uploads and deletes per run over "
        f"runs 1..{runs} (medians unless noted); settled = stored/live without the packs no kept "
        "index names (those a repack just copied, deleted by the next gc); f1 = format 1 on the "
        "same runs (derived, see benchmarks/churn.py).",
        "",
        "| repack below | stored/live median | max | runs > 1.3 | settled median | settled max "
        "| writes/run | max "
        "| f1 writes/run | f1 max | uploaded MB/run | f1 uploaded MB/run | gc writes/run "
        "| gc rewrote MB (total) | gc rewrote MB/run (mean) | gc deletes/run | f1 deletes/run "
        "| stored MB at end | f1 stored MB at end |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [summary_row(v, from_run) for v in variants]
    return "\n".join(lines)


# ---------------------------------------------------------------- driver


def code_version() -> str:
    """Which cas runs: its commit (and uncommitted changes), or the directory it came from.

    Others may commit to cas/ while a long run goes on; to pin the code, run
    with PYTHONPATH pointing at an export of one commit (`git archive`).
    """
    import cas

    root = Path(cas.__file__).resolve().parent.parent

    def git(*cmd: str) -> str:
        proc = subprocess.run(["git", "-C", str(root), *cmd], capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return f"cas from {root}"
    dirty = git("status", "--porcelain", "--", "cas", "cli")
    return f"cas at {commit}" + (
        f" + {len(dirty.splitlines())} uncommitted files in cas/ cli/" if dirty else ""
    )


def machine_load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f} (1/5 min) on {os.cpu_count()} cores"


class State:
    """What a run has done so far, saved after every step so that a killed run can go on."""

    def __init__(self, work: Path, config: dict[str, object]) -> None:
        self.path = work / "state.json"
        self.data: dict = {"config": config, "mutated": {}, "rows": {}, "snapshot": {}}
        if self.path.exists():
            self.data = json.loads(self.path.read_text())
            saved = {k: v for k, v in self.data["config"].items() if k != "runs"}
            if saved != {k: v for k, v in config.items() if k != "runs"}:
                raise SystemExit(f"{work} holds a run with other settings: {saved}")

    def save(self) -> None:
        tmp = self.path.with_name("state.json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)


async def simulate(
    source: Path,
    work: Path,
    *,
    runs: int,
    keep: int,
    repack: list[float],
    rate: float,
    relink: int,
    seed: int,
    pack_size: int,
    full_verify: bool,
    save: Path | None,
) -> list[Variant]:
    config = {
        "source": str(source),
        "runs": runs,
        "keep": keep,
        "repack": repack,
        "rate": rate,
        "relink": relink,
        "seed": seed,
        "pack_size": pack_size,
    }
    state = State(work, config)
    tree = work / "tree"
    if not tree.is_dir():
        t0 = time.monotonic()
        partial = work / "tree.partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(source, partial, symlinks=True)
        partial.rename(tree)
        log(f"copied {source} to {tree} in {time.monotonic() - t0:.0f} s")
    mutator = Mutator(tree, seed, rate, relink)
    mutator.undo(work / "undo")  # a mutation the last process did not finish
    variants = [Variant(work, r, keep, pack_size, full_verify) for r in repack]
    for v in variants:
        key = f"{v.repack_below:g}"
        v.rows = [Row(**r) for r in state.data["rows"].get(key, [])]
        if v.rows:
            log(f"repack {key}: resuming after run {v.rows[-1].run}")
    for n in range(runs + 1):
        if n and str(n) not in state.data["mutated"]:
            files = mutator.run(n, undo=work / "undo").files
            state.data["mutated"][str(n)] = files
            state.save()
            shutil.rmtree(work / "undo")
        mutated = state.data["mutated"].get(str(n), 0)
        for v in variants:
            key = f"{v.repack_below:g}"
            if any(r.run == n for r in v.rows):
                continue
            if state.data["snapshot"].get(key) == n:
                v.restore()  # this step began in a process that was killed
            else:
                v.snapshot()
                state.data["snapshot"][key] = n
                state.save()
            row = await v.step(n, tree, mutated)
            state.data["rows"][key] = [asdict(r) for r in v.rows]
            state.save()
            if save is not None:
                save_json(save, variants)
            log(
                f"repack {key} run {n}: {row.mutated_files} files mutated, put "
                f"{row.put_s:.1f} s, {row.writes} writes, {mb(row.uploaded)} MB up; gc "
                f"{row.gc_s:.1f} s, rewrote {mb(row.repack_written)} MB; stored "
                f"{mb(row.stored)} MB / live {mb(row.live_frames)} MB "
                f"= {row.ratio:.3f}; f1 {row.f1_writes} writes; {machine_load()}"
            )
            for p in row.problems:
                log(f"PROBLEM run {n}: {p}")
    for v in variants:
        await v.store.aclose()
    return variants


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--corpus-dir", type=Path, default=corpus.default_dir())
    ap.add_argument("--corpus", default="build", help="tree to start from (name or path)")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--keep", type=int, default=10, help="--keep-last N 'ci/main/*'")
    ap.add_argument(
        "--repack-below",
        default="0.5",
        help="comma-separated values of gc's repack_below, run in lockstep (0 disables)",
    )
    ap.add_argument("--rate", type=float, default=0.02, help="fraction of files rewritten per run")
    ap.add_argument("--relink", type=int, default=2, help="big files edited in place per run")
    ap.add_argument("--seed", type=int, default=20251206)
    ap.add_argument("--pack-size", type=int, default=None, help="put's pack size (bytes)")
    ap.add_argument("--summary-from", type=int, default=10)
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: temp)")
    ap.add_argument(
        "--state",
        type=Path,
        default=None,
        help="keep the run's tree, stores and progress in this directory (not removed): "
        "running the same command again goes on where a killed run stopped",
    )
    ap.add_argument("--json", type=Path, default=None, help="save every row here")
    ap.add_argument("--smoke", action="store_true", help="tiny generated tree; correctness only")
    ap.add_argument(
        "--render",
        type=Path,
        nargs="+",
        default=None,
        help="print the tables of earlier --json files (their variants side by side); run nothing",
    )
    args = ap.parse_args(argv)
    if args.render:
        saved = sorted(
            (v for path in args.render for v in load_json(path)), key=lambda v: v.repack_below
        )
        print(render_summary(saved, args.summary_from))
        for v in saved:
            print()
            print(render_runs(v))
        return 0
    repack = [float(x) for x in args.repack_below.split(",")]
    pack_size = args.pack_size or PutOptions().pack_size
    with contextlib.ExitStack() as stack:
        if args.state is not None:
            args.state.mkdir(parents=True, exist_ok=True)
            work = args.state.resolve()
        else:
            work = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="cas-churn-", dir=args.work))
            )
        os.environ["CAS_CACHE_DIR"] = str(work / "cas-cache")  # gc's mark set goes here
        if args.smoke:
            source = corpus.build_smoke(work / "corpus")[0]
            runs, keep, repack, rate, pack_size, summary_from = 8, 3, [0.0, 0.5], 0.05, 64 << 10, 3
        else:
            source = Path(args.corpus)
            if not source.is_dir():
                source = args.corpus_dir / args.corpus
            if not source.is_dir():
                corpus.build(args.corpus_dir, [args.corpus])
            runs, keep, rate, summary_from = args.runs, args.keep, args.rate, args.summary_from
        version = code_version()
        log(f"start: {version}; {machine_load()}")
        t0 = time.monotonic()
        variants = asyncio.run(
            simulate(
                source,
                work,
                runs=runs,
                keep=keep,
                repack=repack,
                rate=rate,
                relink=args.relink,
                seed=args.seed,
                pack_size=pack_size,
                full_verify=args.smoke,
                save=args.json,
            )
        )
        log(f"done in {time.monotonic() - t0:.0f} s; {machine_load()}")
    command = "python benchmarks/churn.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(
        f"`{command}`: {runs} runs of `{source.name}`, keep last {keep}, rate {rate:g}; {version}\n"
    )
    print(render_summary(variants, summary_from))
    for v in variants:
        print()
        print(render_runs(v))
    problems = [(v.repack_below, r.run, p) for v in variants for r in v.rows for p in r.problems]
    for below, run, p in problems:
        print(f"FAILED: repack {below:g} run {run}: {p}", file=sys.stderr)
    if problems:
        return 1
    if args.smoke:
        print("smoke: every kept manifest verified after every gc", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
