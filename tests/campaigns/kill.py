"""Kill campaign: SIGKILL `cas put`, `cas get` and `cas gc` at random points, then check.

Each round starts the real CLI (`python -m cas ...`, a local directory store) in
its own process group, kills the group with SIGKILL after a delay drawn from the
seed (spread over the command's measured duration, start-up and the last moments
included), and checks what a user relies on:

- put: `cas verify --all` exits 0; the re-run exits 0 and uploads only the rest:
  every pack the killed put stored is adopted (its journal), so
  ``rerun bytes + killed put's stored pack bytes == full put bytes`` up to the 24
  bytes of head and footer of each pack (frames and trailer entries are counted
  exactly once). Puts use a small `--pack-size` so that packs are sealed (stored)
  during the put; with the default 64 MiB a put of this tree seals none before
  its end and a re-run uploads everything again.
- get (into an empty directory, and in place over the older tree): every file
  at a final path is the old or the new version (digests), nothing else appears
  under a final name; the re-run exits 0, leaves the new tree exactly (no
  `.cas-tmp-*` left anywhere), writes only the files that were not new yet, and
  fetches at most what a full get into an empty directory fetches.
- gc (`--keep-last 2`, grace 0): `cas verify --all` exits 0, every ref gets back
  byte-exact, and a following gc completes.

Run: python -m tests.campaigns.kill --seed 1 --seconds 600
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cas.ids import ObjectId
from cas.pack import ObjectKind, read_entries
from tests.serve_process import TOKENS, ServeProcess, start_serve

ROOT = Path(__file__).resolve().parent.parent.parent
TEMP_PREFIX = ".cas-tmp-"
A_TIME = 1_600_000_000 * 10**9
B_TIME = A_TIME + 10**9
PACK_SIZE = "256K"
COMMANDS = ("put", "get-empty", "get-inplace", "gc")
LEASE_LOST = 14
SERVER_SETTLE = 1.0
"""Seconds to wait after killing a client of `cas serve`: an upload whose body had
arrived whole may still be verified and stored by the server after the client died."""


# ---------------------------------------------------------------- trees


@dataclass
class Snapshot:
    """Regular files (digest, size), symlinks, directories and temporaries under a root."""

    files: dict[str, tuple[str, int]] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)
    temps: list[str] = field(default_factory=list)

    def same_tree(self, other: Snapshot) -> bool:
        return (self.files, self.links, self.dirs) == (other.files, other.links, other.dirs)


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def scan(root: Path) -> Snapshot:
    snap = Snapshot()
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in [*dirnames, *filenames]:
            path = base / name
            rel = str(path.relative_to(root))
            if name.startswith(TEMP_PREFIX):
                snap.temps.append(rel)
                continue
            if path.is_symlink():
                snap.links[rel] = os.readlink(path)
            elif path.is_dir():
                snap.dirs.add(rel)
            elif path.is_file():
                snap.files[rel] = (digest(path), path.stat().st_size)
        dirnames[:] = [d for d in dirnames if not d.startswith(TEMP_PREFIX)]
    return snap


def stored_chunk_bytes(packs: list[Path]) -> tuple[int, int]:
    """Chunk frames (count, compressed bytes) held by these pack files, from their trailers."""
    count = size = 0
    for path in packs:
        entries = read_entries(ObjectId.parse(path.name), path.read_bytes(), max_chunk=16 << 20)
        for entry in entries:
            if entry.kind == ObjectKind.CHUNK:
                count += 1
                size += entry.stored
    return count, size


def stored_chunk_ids(packs: list[Path]) -> collections.Counter:
    """How many of these packs hold each chunk id."""
    found: collections.Counter = collections.Counter()
    for path in packs:
        entries = read_entries(ObjectId.parse(path.name), path.read_bytes(), max_chunk=16 << 20)
        found.update(str(e.id) for e in entries if e.kind == ObjectKind.CHUNK)
    return found


def _content(rng: random.Random, size: int) -> bytes:
    """Half random (incompressible), half repetitive text, like a build's mix."""
    if rng.random() < 0.5:
        return rng.randbytes(size)
    words = [rng.randbytes(rng.randint(3, 12)).hex() for _ in range(64)]
    text = " ".join(rng.choice(words) for _ in range(size // 8 + 1)).encode()
    return text[:size]


def _write(path: Path, data: bytes, stamp: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, ns=(stamp, stamp))


def make_trees(base: Path, seed: int, files: int, big: int, big_mib: int) -> tuple[Path, Path]:
    """Tree A (old) and B (new): B changes a third of A's files, drops some, adds some,
    edits the middle of one big file, keeps another, and swaps a file and a directory."""
    rng = random.Random(f"trees:{seed}")
    if base.exists():
        _rmtree(base)
    a, b = base / "a", base / "b"
    sizes = {}
    for i in range(files):
        rel = f"d{i % 11}/s{i % 3}/f{i:04}.bin" if i % 5 else f"d{i % 11}/f{i:04}.o"
        sizes[rel] = rng.randint(10, 4096) if rng.random() < 0.4 else rng.randint(8 << 10, 80 << 10)
    for rel, size in sizes.items():
        data = _content(rng, size)
        _write(a / rel, data, A_TIME)
        roll = rng.random()
        if roll < 0.3:
            _write(b / rel, _content(rng, size), B_TIME)
        elif roll < 0.35:
            continue  # removed in B
        else:
            _write(b / rel, data, A_TIME)
    for i in range(files // 30):
        _write(b / f"new/n{i:03}.bin", _content(rng, rng.randint(100, 60 << 10)), B_TIME)
    for i in range(big):
        data = rng.randbytes(big_mib << 20)
        _write(a / f"big{i}.bin", data, A_TIME)
        if i == 0:  # edited in the middle: most chunks shared with A's version
            mid = len(data) // 2
            data = data[:mid] + rng.randbytes(200_000) + data[mid + 100_000 :]
            _write(b / f"big{i}.bin", data, B_TIME)
        elif i == 1:
            _write(b / f"big{i}.bin", data, A_TIME)
        else:
            _write(b / f"big{i}.bin", rng.randbytes(big_mib << 20), B_TIME)
    # A file in A becomes a directory in B and the reverse (set aside on update).
    _write(a / "swap/x", b"a file in A\n", A_TIME)
    _write(b / "swap/x/inner.txt", b"a directory in B\n", B_TIME)
    _write(a / "swap/y/inner.txt", b"a directory in A\n", A_TIME)
    _write(b / "swap/y", b"a file in B\n", B_TIME)
    for root in (a, b):
        (root / "link").symlink_to("d1/f0001.bin" if root is a else "big1.bin")
    return a, b


def mutate(src: Path, rng: random.Random, stamp: int) -> None:
    """A next build: rewrite a few files and part of one big file, in place."""
    files = sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink())
    for path in rng.sample(files, min(12, len(files))):
        size = path.stat().st_size
        if size > 1 << 20:
            data = bytearray(path.read_bytes())
            at = rng.randrange(0, size - 300_000)
            data[at : at + 300_000] = rng.randbytes(300_000)
            _write(path, bytes(data), stamp)
        else:
            _write(path, _content(rng, max(1, size)), stamp)


# ---------------------------------------------------------------- running the CLI


@dataclass
class StoreLoc:
    """Where commands reach a store (`--store`), and its directory (to look inside)."""

    url: str
    root: Path


@dataclass
class Outcome:
    """One command run, maybe killed."""

    code: int | None
    stdout: bytes
    stderr: bytes
    seconds: float
    killed: bool = False

    def json(self) -> dict:
        return json.loads(self.stdout)


class Cli:
    """`python -m cas` with its own cache directory, as its own process group."""

    def __init__(self, cache: Path, token: str | None = None) -> None:
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "XDG_CACHE_HOME": str(cache),
            "CAS_CACHE_DIR": str(cache / "cas"),
            "XDG_DATA_HOME": str(cache / "data"),
        }
        self.env.pop("CAS_STORE", None)
        if token is not None:
            self.env["CAS_TOKEN"] = token

    def start(self, args: list[str]) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "cas", *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    def run(self, args: list[str], timeout: float = 120) -> Outcome:
        t0 = time.monotonic()
        proc = self.start(args)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            return Outcome(None, out, err + b"\n[timed out]", time.monotonic() - t0, True)
        return Outcome(proc.returncode, out, err, time.monotonic() - t0)

    def run_killed(self, args: list[str], delay: float) -> Outcome:
        """Start, wait `delay` seconds, SIGKILL the whole process group (workers too)."""
        t0 = time.monotonic()
        proc = self.start(args)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=delay)
        landed = proc.poll() is None
        if landed:
            _kill_group(proc)
        out, err = proc.communicate()
        return Outcome(proc.returncode, out, err, time.monotonic() - t0, killed=landed)


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _tail(o: Outcome) -> str:
    """The last line of stderr (a failing command's one-line error)."""
    lines = o.stderr.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


# ---------------------------------------------------------------- the campaign


@dataclass
class Figures:
    rounds: collections.Counter = field(default_factory=collections.Counter)
    landed: collections.Counter = field(default_factory=collections.Counter)
    after_exit: collections.Counter = field(default_factory=collections.Counter)
    reruns: collections.Counter = field(default_factory=collections.Counter)
    partial: collections.Counter = field(default_factory=collections.Counter)
    """Kills that left the destination partly new (get) / some packs stored (put)."""
    redone: collections.Counter = field(default_factory=collections.Counter)
    """Bytes uploaded (put) or fetched from the store (get) by re-runs."""
    full: collections.Counter = field(default_factory=collections.Counter)
    """What full, unkilled runs upload or fetch, once per round (same sum)."""
    adopted: collections.Counter = field(default_factory=collections.Counter)
    """Chunk bytes a killed put had stored in packs, reused by its re-run."""
    temps_seen: collections.Counter = field(default_factory=collections.Counter)
    leftovers_removed: collections.Counter = field(default_factory=collections.Counter)
    lease_lost: int = 0
    """Following gcs that stopped with LeaseLost (exit 14) and were run once more."""
    ref_refused: collections.Counter = field(default_factory=collections.Counter)
    """Re-runs of a put refused (exit 6) because the first one had created the ref and
    finished: by whether that first one was killed (after it finished)."""
    ref_completed: collections.Counter = field(default_factory=collections.Counter)
    """Re-runs of a put whose first run had created the ref, completed (exit 0)."""
    gc_waits: int = 0
    violations: list[str] = field(default_factory=list)


class Campaign:
    def __init__(
        self,
        work: Path,
        seed: int,
        *,
        files: int,
        big: int,
        big_mib: int,
        measure_runs: int = 3,
        serve: bool = False,
    ) -> None:
        self.work = work
        self.serve = serve
        self.servers: dict[str, ServeProcess] = {}
        self.measure_runs = measure_runs
        self.seed = seed
        self.rng = random.Random(f"kill:{seed}")
        self.fig = Figures()
        self.a, self.b = make_trees(work / "trees", seed, files, big, big_mib)
        self.snap_a, self.snap_b = scan(self.a), scan(self.b)
        self.typical: dict[str, float] = {}
        self.baseline: dict[str, dict] = {}
        self._round = 0

    # ------------------------------------------------------------ helpers

    def fresh(self, name: str) -> Path:
        path = self.work / name
        if path.exists():
            _rmtree(path)
        return path

    def cli(self, cache: Path | None = None) -> Cli:
        token = TOKENS["admin"] if self.serve else None
        return Cli(cache or self.fresh("cache"), token)

    def new_store(self, name: str) -> StoreLoc:
        """An empty store: a directory, or one `cas serve` on 127.0.0.1 per name, emptied."""
        if not self.serve:
            path = self.fresh(name)
            return StoreLoc(str(path), path)
        server = self.servers.get(name)
        if server is None:
            server = self.servers[name] = start_serve(self.work / f"serve-{name}")
        else:
            server.reset()
        return StoreLoc(server.url, server.root)

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.servers.clear()

    def violation(self, command: str, delay: float, text: str) -> None:
        self.fig.violations.append(
            f"round {self._round} {command} (seed {self.seed}, kill after {delay:.3f}s): {text}"
        )

    def delay(self, command: str) -> float:
        """Spread over the measured duration, with extra weight at start-up and the end."""
        typical = self.typical[command]
        roll = self.rng.random()
        if roll < 0.15:
            return self.rng.uniform(0.0, 0.3)
        if roll < 0.3:
            return typical * self.rng.uniform(0.85, 1.1)
        return self.rng.uniform(0.0, typical)

    def verify_all(self, cli: Cli, store: StoreLoc, command: str, delay: float, when: str) -> bool:
        o = cli.run(["verify", "--store", store.url, "--all", "--json", "-q"])
        if o.code != 0:
            problems = o.stdout.decode(errors="replace")[:600]
            self.violation(command, delay, f"verify --all {when} exited {o.code}: {problems}")
            return False
        return True

    # ------------------------------------------------------------ put

    def put_args(self, store: StoreLoc, source: Path, ref: str) -> list[str]:
        return [
            "put",
            "--store",
            store.url,
            "--json",
            "--progress",
            "none",
            "--pack-size",
            PACK_SIZE,
            "--ref",
            ref,
            str(source),
        ]

    def measure_put(self) -> None:
        runs = []
        for _ in range(self.measure_runs):
            store = self.new_store("put-store")
            o = self.cli().run(self.put_args(store, self.b, "ci/1"))
            assert o.code == 0, o.stderr
            runs.append(o)
        self.typical["put"] = statistics.median(o.seconds for o in runs)
        self.baseline["put"] = runs[-1].json()

    def round_put(self) -> None:
        store = self.new_store("put-store")
        cli = self.cli()
        delay = self.delay("put")
        args = self.put_args(store, self.b, "ci/1")
        o = cli.run_killed(args, delay)
        self._count("put", o)
        if self.serve and o.killed:
            time.sleep(SERVER_SETTLE)
        full = self.baseline["put"]
        packs = [p for p in (store.root / "pack").rglob("*") if p.is_file()]
        stored = stored_chunk_bytes(packs)
        if packs and o.killed:
            self.fig.partial["put"] += 1
            self.fig.adopted["put"] += stored[1]
        if (store.root / "cas-store.json").exists():
            self.verify_all(cli, store, "put", delay, "after the kill")
        ref_before = (store.root / "refs" / "ci" / "1").exists()
        again = cli.run(args)
        if ref_before and again.code == 0:
            # A put killed after it created the ref, before it finished: the re-run of
            # the same source here completes the manifest the ref names.
            self.fig.ref_completed[o.killed] += 1
        if again.code == 6 and ref_before:
            # The first put had finished (or was killed after it did), create-only: refused.
            self.fig.ref_refused[o.killed] += 1
            self._check_ref_gets(cli, store, "ci/1", self.snap_b, "put", delay)
            return
        if again.code != 0:
            self.violation("put", delay, f"re-run exited {again.code}: {_tail(again)}")
            return
        self.fig.reruns["put"] += 1
        r = again.json()
        self.fig.redone["put"] += r["bytes_uploaded"]
        self.fig.full["put"] += full["bytes_uploaded"]
        if r["bytes_uploaded"] > full["bytes_uploaded"]:
            self.violation(
                "put",
                delay,
                f"re-run uploaded {r['bytes_uploaded']} bytes, more than a full put's "
                f"{full['bytes_uploaded']}",
            )
        # `bytes_uploaded` counts the compressed chunk frames a put packed itself. The
        # killed put's stored packs (adopted through its journal, or through the index
        # of its manifest if it got that far) and the re-run's packs must hold each of
        # the tree's chunk frames exactly once, as a full put's packs do.
        chunks, chunk_bytes = stored
        if (r["chunks_new"] + chunks, r["bytes_uploaded"] + chunk_bytes) != (
            full["chunks_new"],
            full["bytes_uploaded"],
        ):
            self.violation(
                "put",
                delay,
                f"re-run packed {r['chunks_new']} chunks ({r['bytes_uploaded']} bytes) after "
                f"{len(packs)} stored packs held {chunks} chunks ({chunk_bytes} bytes); a full "
                f"put packs {full['chunks_new']} ({full['bytes_uploaded']} bytes)",
            )
        packs_after = [p for p in (store.root / "pack").rglob("*") if p.is_file()]
        twice = [i for i, n in stored_chunk_ids(packs_after).items() if n > 1]
        if twice:
            self.violation(
                "put", delay, f"{len(twice)} chunks stored twice after the re-run, e.g. {twice[0]}"
            )
        self.verify_all(cli, store, "put", delay, "after the re-run")

    def _check_ref_gets(
        self, cli: Cli, store: StoreLoc, ref: str, want: Snapshot, command: str, delay: float
    ) -> None:
        dest = self.fresh("check-dest")
        o = cli.run(["get", "--store", store.url, "-q", "--progress", "none", ref, str(dest)])
        if o.code != 0:
            self.violation(command, delay, f"get {ref} exited {o.code}: {_tail(o)}")
            return
        got = scan(dest)
        if not got.same_tree(want) or got.temps:
            self.violation(command, delay, f"get {ref} does not give back its tree exactly")

    # ------------------------------------------------------------ get

    def get_args(self, ref: str, dest: Path) -> list[str]:
        return [
            "get",
            "--store",
            self.get_store.url,
            "--json",
            "--progress",
            "none",
            "--delete",
            ref,
            str(dest),
        ]

    def setup_get(self) -> None:
        self.get_store = self.new_store("get-store")
        cli = self.cli()
        for ref, tree in (("ci/a", self.a), ("ci/b", self.b)):
            o = cli.run(["put", "--store", self.get_store.url, "-q", "--ref", ref, str(tree)])
            assert o.code == 0, o.stderr
        for mode in ("get-empty", "get-inplace"):
            runs = []
            for _ in range(self.measure_runs):
                dest = self.prepare_dest(mode)
                o = self.cli().run(self.get_args("ci/b", dest))
                assert o.code == 0, o.stderr
                runs.append(o)
            self.typical[mode] = statistics.median(o.seconds for o in runs)
            self.baseline[mode] = runs[-1].json()

    def prepare_dest(self, mode: str) -> Path:
        dest = self.fresh("dest")
        if mode == "get-inplace":
            shutil.copytree(self.a, dest, symlinks=True)  # copy2: modes and mtimes kept
        return dest

    def round_get(self, mode: str) -> None:
        dest = self.prepare_dest(mode)
        cli = self.cli()
        delay = self.delay(mode)
        args = self.get_args("ci/b", dest)
        o = cli.run_killed(args, delay)
        self._count(mode, o)
        old = self.snap_a if mode == "get-inplace" else Snapshot()
        new = self.snap_b
        state = scan(dest) if dest.exists() else Snapshot()
        already = 0
        for rel, (got, _size) in state.files.items():
            allowed = {v[0] for v in (old.files.get(rel), new.files.get(rel)) if v}
            if got not in allowed:
                self.violation(mode, delay, f"{rel} is neither the old nor the new file")
            elif new.files.get(rel, ("",))[0] == got:
                already += 1
        for rel in set(old.files) & set(new.files):
            if rel not in state.files and o.killed:
                self.violation(mode, delay, f"{rel}, in both trees, is missing after the kill")
        for rel in state.links:
            if rel not in old.links and rel not in new.links:
                self.violation(mode, delay, f"unexpected symlink {rel}")
        self.fig.temps_seen[mode] += len(state.temps)
        writers = sum(1 for t in state.temps if Path(t).name.startswith(TEMP_PREFIX + "w"))
        if o.killed and 0 < already < len(new.files):
            self.fig.partial[mode] += 1
        again = cli.run(args)
        if again.code != 0:
            self.violation(mode, delay, f"re-run exited {again.code}: {_tail(again)}")
            return
        self.fig.reruns[mode] += 1
        r = again.json()
        after = scan(dest)
        if not after.same_tree(new):
            diff = sorted(set(after.files.items()) ^ set(new.files.items()))[:3]
            self.violation(mode, delay, f"re-run did not leave the new tree exactly: {diff}")
        if after.temps:
            self.violation(
                mode,
                delay,
                f"{len(after.temps)} temporaries survive the re-run "
                f"(of {len(state.temps)} after the kill): {sorted(after.temps)[:4]}",
            )
        self.fig.leftovers_removed[mode] += r["leftovers_removed"]
        if r["leftovers_removed"] < writers:
            self.violation(
                mode,
                delay,
                f"re-run removed {r['leftovers_removed']} leftovers, the killed get left "
                f"{writers} files being written",
            )
        # Only the rest: files already new are left alone, the others are written.
        pending = [rel for rel, v in new.files.items() if state.files.get(rel) != v]
        want_bytes = sum(new.files[rel][1] for rel in pending)
        if (r["files"], r["bytes"]) != (len(pending), want_bytes):
            self.violation(
                mode,
                delay,
                f"re-run wrote {r['files']} files ({r['bytes']} bytes); {len(pending)} "
                f"({want_bytes} bytes) were not new yet",
            )
        full_fetch = self.baseline["get-empty"]["bytes_from_store"]
        self.fig.redone[mode] += r["bytes_from_store"]
        self.fig.full[mode] += self.baseline[mode]["bytes_from_store"]
        if r["bytes_from_store"] > full_fetch:
            self.violation(
                mode,
                delay,
                f"re-run fetched {r['bytes_from_store']} bytes, more than a full get into an "
                f"empty directory ({full_fetch})",
            )

    # ------------------------------------------------------------ gc

    def gc_args(self) -> list[str]:
        return [
            "gc",
            "--store",
            self.gc_store.url,
            "--json",
            "-q",
            "--keep-last",
            "2",
            "ci/*",
            "--grace",
            "0s",
            "--lease",
            "2s" if self.serve else "1s",
        ]

    def setup_gc(self) -> None:
        self.gc_store = self.new_store("gc-store")
        self.gc_src = self.fresh("gc-src")
        shutil.copytree(self.b, self.gc_src, symlinks=True)
        self.gc_version = 0
        self.gc_refs: dict[str, Snapshot] = {}
        durations = []
        for _ in range(self.measure_runs):
            self.next_version()
            self.next_version()
            o = self.cli().run(self.gc_args())
            assert o.code == 0, o.stderr
            durations.append(o.seconds)
        self.typical["gc"] = statistics.median(durations)

    def next_version(self) -> None:
        self.gc_version += 1
        stamp = B_TIME + self.gc_version * 10**9
        mutate(self.gc_src, self.rng, stamp)
        ref = f"ci/{self.gc_version:05}"
        args = self.put_args(self.gc_store, self.gc_src, ref)
        o = self.cli(self.work / "gc-cache").run(args)  # one machine: its files cache kept
        assert o.code == 0, o.stderr
        self.fig.gc_waits += o.json()["gc_waits"]
        self.gc_refs[ref] = scan(self.gc_src)

    def round_gc(self) -> None:
        self.next_version()
        cli = self.cli()
        delay = self.delay("gc")
        o = cli.run_killed(self.gc_args(), delay)
        self._count("gc", o)

        self.check_gc_store(cli, delay, "after the kill")
        again = cli.run(self.gc_args())
        if again.code == LEASE_LOST:
            # Its beat took longer than half the (short) lease on a loaded machine: the
            # run stops deleting and asks to be run again, as documented.
            self.fig.lease_lost += 1
            again = cli.run(self.gc_args())
        if again.code != 0:
            self.violation("gc", delay, f"following gc exited {again.code}: {_tail(again)}")
            return
        self.fig.reruns["gc"] += 1
        r = again.json()
        if o.killed and (r["refs_expired"] or any(c["objects"] for c in r["deleted"].values())):
            self.fig.partial["gc"] += 1  # the killed run had left work undone
        self.fig.redone["gc"] += r["bytes_reclaimed"]
        refs = sorted(p.name for p in (self.gc_store.root / "refs" / "ci").iterdir())
        for gone in set(self.gc_refs) - {f"ci/{r}" for r in refs}:
            del self.gc_refs[gone]
        if len(refs) != 2:
            self.violation("gc", delay, f"{len(refs)} refs after the following gc, not 2")

    def check_gc_store(self, cli: Cli, delay: float, when: str) -> None:
        self.verify_all(cli, self.gc_store, "gc", delay, when)
        refs = sorted(p.name for p in (self.gc_store.root / "refs" / "ci").iterdir())
        for name in refs:
            ref = f"ci/{name}"
            self._check_ref_gets(cli, self.gc_store, ref, self.gc_refs[ref], "gc", delay)

    # ------------------------------------------------------------ driving

    def _count(self, command: str, o: Outcome) -> None:
        self.fig.rounds[command] += 1
        if o.killed:
            self.fig.landed[command] += 1
        else:
            self.fig.after_exit[command] += 1
            if o.code != 0:
                self.violation(command, 0.0, f"unkilled run exited {o.code}: {_tail(o)}")

    def run(self, seconds: float, rounds: int | None, only: list[str], min_rounds: int = 0) -> None:
        """Rounds cycle through `only` until `rounds`, or `seconds` from the start (setup
        included) once `min_rounds` are done."""
        started = time.monotonic()
        try:
            self._run(started, seconds, rounds, only, min_rounds)
        finally:
            self.stop()
        self.wall = time.monotonic() - started

    def _run(
        self, started: float, seconds: float, rounds: int | None, only: list[str], min_rounds: int
    ) -> None:
        self.measure_put()
        self.setup_get()
        self.setup_gc()
        self.setup_seconds = time.monotonic() - started
        n = 0
        while (rounds is None or n < rounds) and (
            n < min_rounds or time.monotonic() - started < seconds
        ):
            command = only[n % len(only)]
            self._round = n
            if command == "put":
                self.round_put()
            elif command == "gc":
                self.round_gc()
            else:
                self.round_get(command)
            n += 1

    def report(self) -> str:
        f = self.fig
        lines = [
            f"kill campaign: seed {self.seed}, stores: "
            + ("cas serve on 127.0.0.1" if self.serve else "local directories")
            + f", wall {self.wall:.1f}s "
            f"(setup and measuring {self.setup_seconds:.1f}s)",
            "tree B: {} files, {:.1f} MiB; typical unkilled run: {}".format(
                len(self.snap_b.files),
                sum(s for _, s in self.snap_b.files.values()) / 2**20,
                ", ".join(f"{k} {v:.2f}s" for k, v in self.typical.items()),
            ),
            f"{'command':<12} {'rounds':>6} {'mid-run':>7} {'after':>5} {'partial':>7} "
            f"{'re-runs':>7} {'kept MiB':>8} {'redone MiB':>10} {'full MiB':>9} {'temps':>6} "
            f"{'removed':>7}",
        ]
        for c in COMMANDS:
            if f.rounds[c]:
                lines.append(
                    f"{c:<12} {f.rounds[c]:>6} {f.landed[c]:>7} {f.after_exit[c]:>5} "
                    f"{f.partial[c]:>7} {f.reruns[c]:>7} {f.adopted[c] / 2**20:>8.1f} "
                    f"{f.redone[c] / 2**20:>10.1f} "
                    f"{f.full[c] / 2**20:>9.1f} {f.temps_seen[c]:>6} "
                    f"{f.leftovers_removed[c]:>7}"
                )
        lines.append(
            "put re-runs whose first put had created the ref: completed "
            f"{f.ref_completed[True]} after a kill, {f.ref_completed[False]} after a completed "
            f"put; refused (exit 6) as the first had finished: {f.ref_refused[True]} killed "
            f"after, {f.ref_refused[False]} not killed; "
            f"put waits for a killed gc's lease: {f.gc_waits}; following gcs that lost "
            f"their lease (exit 14) and were run again: {f.lease_lost}"
        )
        lines.append(LEGEND)
        lines.append(f"violations: {len(f.violations)}")
        lines.extend(f"  {v}" for v in f.violations[:40])
        return "\n".join(lines)


LEGEND = """\
  mid-run: the SIGKILL landed while the command ran; after: it had exited first
  partial: put: killed with packs stored; get: killed with some, not all, files new;
           gc: the following gc still found refs or objects to delete
  kept: put: compressed chunk bytes in packs the killed put stored (the re-run reuses them)
  redone: put: bytes the re-runs uploaded; get: bytes the re-runs fetched from the store;
          gc: bytes the following gc reclaimed
  full: what as many full, unkilled runs upload (put) or fetch (get, same mode)
  temps: .cas-tmp-* entries left by kills; removed: leftovers_removed reported by re-runs"""


def _rmtree(path: Path) -> None:
    def writable(func, p, _exc):
        os.chmod(os.path.dirname(p), 0o700)
        func(p)

    shutil.rmtree(path, onexc=writable) if sys.version_info >= (3, 12) else shutil.rmtree(
        path, onerror=writable
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=60.0, help="stop starting rounds after")
    parser.add_argument("--rounds", type=int, default=None, help="at most this many rounds")
    parser.add_argument("--only", action="append", choices=COMMANDS, help="(repeatable)")
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--big", type=int, default=3, help="multi-MiB files")
    parser.add_argument("--big-mib", type=int, default=3)
    parser.add_argument("--measure-runs", type=int, default=3, help="unkilled runs per command")
    parser.add_argument(
        "--serve", action="store_true", help="reach each store through a cas serve on 127.0.0.1"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="kept after the run")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        work = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        campaign = Campaign(
            work,
            args.seed,
            files=args.files,
            big=args.big,
            big_mib=args.big_mib,
            measure_runs=args.measure_runs,
            serve=args.serve,
        )
        campaign.run(args.seconds, args.rounds, args.only or list(COMMANDS))
        print(campaign.report(), flush=True)
        return 1 if campaign.fig.violations else 0


if __name__ == "__main__":
    sys.exit(main())
