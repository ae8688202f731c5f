"""cas versus `tar | zstd -T0 -3` on the same trees, interleaved, medians of N runs.

    python benchmarks/compare.py --corpus-dir DIR torch
    python benchmarks/compare.py --corpus-dir DIR numpy-A numpy-B
    python benchmarks/compare.py --smoke            # tiny generated pair, correctness only (CI)

Every run of one repetition does, each as its own process tree, timed with its
wall time, the user+sys CPU of all its processes (`os.wait4`) and their peak
RSS (summed over the processes of a pipeline, which run at the same time):

- put:  `tar -cf - DIR | zstd -T0 -3 > x.tar.zst`  vs  `cas put DIR` into an empty store
- get:  `zstd -d < x.tar.zst | tar -xf -` into an empty directory
        vs  `cas get ID DEST` with an empty cache (cold), then again into another
        empty directory with the cache the first get filled (warm)
- re-put of the unchanged tree into the same store (tar has nothing like it: it
  writes the whole archive again, so its column repeats its put)
- with a pair A B: put of B after A (bytes the store grew by vs a fresh .tar.zst
  of B), and updating a directory that holds A to B in place (`cas get` over it
  with A's chunks cached vs extracting B's archive over it).

Within a repetition the tar and cas steps alternate and swap order every
repetition. Every restore is compared with its source (types, contents, modes,
symlink targets, mtimes); a wrong restore makes the exit status 1. The page
cache cannot be dropped without root, so every corpus is read once before the
first timed step and all tools then read it from memory alike.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import corpus  # noqa: E402

STORE_DIRS = ("chunk", "tree", "manifest")


# ---------------------------------------------------------------- measuring


@dataclass
class Sample:
    wall: float
    cpu: float
    rss: int
    foreign: float  # CPU share of other processes during the step (0..1 of all cores)
    stdout: bytes = b""
    extra: dict[str, float] = field(default_factory=dict)


def _busy_seconds() -> float:
    """Busy CPU time of the whole machine from /proc/stat (0 where unavailable)."""
    try:
        with open("/proc/stat") as f:
            parts = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return (sum(parts[:8]) - idle) / os.sysconf("SC_CLK_TCK")


TIME = "/usr/bin/time"


def run_pipeline(
    cmds: list[list[str]],
    *,
    stdout_path: Path | None = None,
    env: dict[str, str] | None = None,
) -> Sample:
    """Run `cmds` as a shell-like pipeline; raise if any part fails.

    CPU and peak RSS come from GNU time wrapped around each command: the
    `os.wait4` numbers of a child that Python spawned start from the Python
    parent's own RSS (vfork/exec keeps the high-water mark).
    """
    use_time = os.access(TIME, os.X_OK)
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(stdout_path, "wb")) if stdout_path else None
        errs = [stack.enter_context(tempfile.TemporaryFile()) for _ in cmds]
        usage = [stack.enter_context(tempfile.NamedTemporaryFile("r")) for _ in cmds]
        procs: list[subprocess.Popen[bytes]] = []
        busy0 = _busy_seconds()
        t0 = time.perf_counter()
        for i, cmd in enumerate(cmds):
            last = i == len(cmds) - 1
            argv = [TIME, "-f", "%U %S %M", "-o", usage[i].name, *cmd] if use_time else cmd
            p = subprocess.Popen(
                argv,
                stdin=procs[-1].stdout if procs else subprocess.DEVNULL,
                stdout=(out or subprocess.PIPE) if last else subprocess.PIPE,
                stderr=errs[i],
                env=env,
            )
            if procs and procs[-1].stdout is not None:
                procs[-1].stdout.close()
            procs.append(p)
        captured = b""
        if procs[-1].stdout is not None:
            captured = procs[-1].stdout.read()
            procs[-1].stdout.close()
        cpu = 0.0
        rss = 0
        codes = []
        for i, p in enumerate(procs):
            _, status, ru = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            codes.append(p.returncode)
            if use_time:
                fields = usage[i].read().split()[-3:]
                cpu += float(fields[0]) + float(fields[1])
                rss += int(fields[2]) * 1024
            else:
                cpu += ru.ru_utime + ru.ru_stime
                rss += ru.ru_maxrss * 1024
        wall = time.perf_counter() - t0
        busy = _busy_seconds() - busy0
        if any(codes):
            messages = []
            for cmd, code, err in zip(cmds, codes, errs, strict=True):
                err.seek(0)
                text = err.read().decode(errors="replace")
                messages.append(f"$ {shlex.join(cmd)} -> {code}\n{text}")
            raise RuntimeError("command failed:\n" + "\n".join(messages))
    ncpu = os.cpu_count() or 1
    foreign = max(0.0, busy - cpu) / (wall * ncpu) if wall > 0 else 0.0
    return Sample(wall, cpu, rss, min(1.0, foreign), captured)


def warm_page_cache(root: Path) -> int:
    """Read every file once so that all tools find the corpus in memory."""
    total = 0
    buf = bytearray(1 << 20)
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            if os.path.islink(p):
                continue
            with open(p, "rb", buffering=0) as f:
                while k := f.readinto(buf):
                    total += k
    return total


def store_bytes(store: Path) -> tuple[int, int, int]:
    """(objects, file bytes, bytes on disk) under the store's object directories."""
    count = size = disk = 0
    for sub in STORE_DIRS:
        for dirpath, _dirs, names in os.walk(store / sub):
            for n in names:
                st = os.lstat(os.path.join(dirpath, n))
                count += 1
                size += st.st_size
                disk += st.st_blocks * 512
    return count, size, disk


def rmtree(path: Path) -> None:
    if path.exists():
        for dirpath, dirs, _names in os.walk(path):
            for d in dirs:  # restored trees may hold read-only directories
                p = os.path.join(dirpath, d)
                if not os.path.islink(p):
                    os.chmod(p, 0o755)
        shutil.rmtree(path)


# ---------------------------------------------------------------- checking restores


def _listing(root: Path) -> dict[str, os.stat_result]:
    out = {}
    for dirpath, dirs, names in os.walk(root):
        for n in dirs + names:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = os.lstat(p)
    return out


def _same_content(a: str, b: str) -> bool:
    with open(a, "rb", buffering=0) as fa, open(b, "rb", buffering=0) as fb:
        while True:
            x = fa.read(1 << 20)
            y = fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def tree_differences(expected: Path, actual: Path, *, mtimes: bool = True) -> list[str]:
    """Every way `actual` differs from `expected` (empty list: identical)."""
    want, got = _listing(expected), _listing(actual)
    diffs = [f"missing: {p}" for p in sorted(want.keys() - got.keys())]
    diffs += [f"extra (stale): {p}" for p in sorted(got.keys() - want.keys())]
    for rel in sorted(want.keys() & got.keys()):
        a, b = want[rel], got[rel]
        if stat.S_IFMT(a.st_mode) != stat.S_IFMT(b.st_mode):
            diffs.append(f"type differs: {rel}")
            continue
        if stat.S_ISLNK(a.st_mode):
            if os.readlink(expected / rel) != os.readlink(actual / rel):
                diffs.append(f"symlink target differs: {rel}")
        elif stat.S_IMODE(a.st_mode) != stat.S_IMODE(b.st_mode):
            diffs.append(
                f"mode {oct(stat.S_IMODE(b.st_mode))} != {oct(stat.S_IMODE(a.st_mode))}: {rel}"
            )
        if stat.S_ISREG(a.st_mode) and (
            a.st_size != b.st_size or not _same_content(str(expected / rel), str(actual / rel))
        ):
            diffs.append(f"content differs: {rel}")
        if mtimes and a.st_mtime_ns != b.st_mtime_ns:
            diffs.append(f"mtime {b.st_mtime_ns} != {a.st_mtime_ns}: {rel}")
    return diffs


# ---------------------------------------------------------------- the steps


@dataclass
class Bench:
    cas: list[str]
    work: Path
    level: int = 3
    exact_update: bool = False
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def record(self, name: str, sample: Sample) -> Sample:
        self.samples.setdefault(name, []).append(sample)
        return sample

    def env(self, cache: Path) -> dict[str, str]:
        env = dict(os.environ)
        env["CAS_CACHE_DIR"] = str(cache)
        env["CI"] = "1"
        env.pop("CAS_STORE", None)
        return env

    def check(self, what: str, expected: Path, actual: Path, *, strict: bool = True) -> int:
        diffs = tree_differences(expected, actual)
        if diffs:
            msg = f"{what}: {len(diffs)} differences, e.g. " + "; ".join(diffs[:5])
            (self.failures if strict else self.notes).append(msg)
            print(f"  !! {msg}", file=sys.stderr)
        return len(diffs)

    # tar
    def tar_put(self, src: Path, archive: Path) -> Sample:
        s = run_pipeline(
            [
                ["tar", "-cf", "-", "-C", str(src.parent), src.name],
                ["zstd", "-T0", f"-{self.level}", "-q", "-c"],
            ],
            stdout_path=archive,
        )
        s.extra["stored"] = archive.stat().st_size
        return s

    def tar_get(self, archive: Path, dest: Path) -> Sample:
        dest.mkdir(parents=True, exist_ok=True)
        return run_pipeline(
            [["zstd", "-d", "-T0", "-q", "-c", str(archive)], ["tar", "-xf", "-", "-C", str(dest)]]
        )

    # cas
    def cas_put(self, src: Path, store: Path, cache: Path) -> tuple[Sample, str]:
        before = store_bytes(store)
        s = run_pipeline(
            [
                [
                    *self.cas,
                    "put",
                    "--store",
                    str(store),
                    "--json",
                    "--level",
                    str(self.level),
                    str(src),
                ]
            ],
            env=self.env(cache),
        )
        after = store_bytes(store)
        info = json.loads(s.stdout)
        s.extra.update(
            stored=after[1] - before[1],
            disk=after[2] - before[2],
            objects=after[0] - before[0],
            chunks=info.get("chunks", 0),
        )
        return s, info["manifest"]

    def cas_get(self, manifest: str, dest: Path, store: Path, cache: Path, *extra: str) -> Sample:
        s = run_pipeline(
            [[*self.cas, "get", "--store", str(store), "--json", *extra, manifest, str(dest)]],
            env=self.env(cache),
        )
        info = json.loads(s.stdout)
        s.extra.update(
            from_store=info.get("bytes_from_store", 0), from_cache=info.get("bytes_from_cache", 0)
        )
        return s


def one_round(bench: Bench, a: Path, b: Path | None, rep: int) -> None:
    """One repetition of every step; tar and cas alternate, their order flips each round."""
    w = bench.work / f"rep{rep}"
    rmtree(w)
    w.mkdir(parents=True)
    store, put_cache, get_cache = w / "store", w / "put-cache", w / "get-cache"
    archive = w / "a.tar.zst"
    swap = rep % 2 == 1

    def pair(first: Callable[[], None], second: Callable[[], None]) -> None:
        for step in (second, first) if swap else (first, second):
            step()

    ids: dict[str, str] = {}

    def do_cas_put() -> None:
        s, ids["a"] = bench.cas_put(a, store, put_cache)
        bench.record("cas put", s)

    pair(lambda: bench.record("tar put", bench.tar_put(a, archive)), do_cas_put)
    tar_dest, cold_dest, warm_dest = w / "tar-out", w / "cas-cold", w / "cas-warm"
    pair(
        lambda: bench.record("tar get", bench.tar_get(archive, tar_dest)),
        lambda: bench.record("cas get cold", bench.cas_get(ids["a"], cold_dest, store, get_cache)),
    )
    bench.record("cas get warm", bench.cas_get(ids["a"], warm_dest, store, get_cache))
    s, _ = bench.cas_put(a, store, put_cache)
    bench.record("cas re-put", s)
    if s.extra["objects"] != 1:  # only a new manifest (it records its creation time)
        bench.notes.append(f"re-put of the unchanged tree added {s.extra['objects']} objects")
    # the tar extract keeps its own tree name as the top directory
    bench.check("tar get", a, tar_dest / a.name)
    bench.check("cas get cold", a, cold_dest)
    bench.check("cas get warm", a, warm_dest)
    rmtree(warm_dest)
    if b is not None:
        archive_b = w / "b.tar.zst"

        def do_cas_put_b() -> None:
            s, ids["b"] = bench.cas_put(b, store, put_cache)
            bench.record("cas put B after A", s)

        pair(lambda: bench.record("tar put B", bench.tar_put(b, archive_b)), do_cas_put_b)
        # update a directory holding A to B in place: tar extracts B's archive over it
        # (tar's tree is named after A; B's archive names its top directory after B)
        os.rename(tar_dest / a.name, tar_dest / b.name)
        pair(
            lambda: bench.record("tar update A->B", bench.tar_get(archive_b, tar_dest)),
            lambda: bench.record(
                "cas update A->B",
                bench.cas_get(ids["b"], cold_dest, store, get_cache, "--delete"),
            ),
        )
        n_tar = bench.check("tar update A->B (in place)", b, tar_dest / b.name, strict=False)
        bench.samples["tar update A->B"][-1].extra["differences"] = n_tar
        n_cas = bench.check("cas update A->B (in place)", b, cold_dest, strict=False)
        bench.samples["cas update A->B"][-1].extra["differences"] = n_cas
        if n_cas and bench.exact_update:
            bench.failures.append(f"cas get over A did not give exactly B ({n_cas} differences)")
    rmtree(w)


# ---------------------------------------------------------------- reporting


def med(samples: list[Sample], key: str) -> float:
    values = [
        getattr(s, key) if key in ("wall", "cpu", "rss") else s.extra.get(key, 0.0) for s in samples
    ]
    return statistics.median(values)


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def secs(n: float) -> str:
    return f"{n:.2f} s"


def ratio(c: float, t: float) -> str:
    return f"{c / t:.2f}x" if t else "-"


def report(bench: Bench, a: Path, b: Path | None, reps: int, command: str) -> str:
    S = bench.samples
    files, size = corpus.tree_bytes(a)
    lines = [
        f"Corpus `{a.name}`"
        + (f" -> `{b.name}`" if b else "")
        + f": {files:,} files, {mb(size)}"
        + (f" -> {corpus.tree_bytes(b)[0]:,} files, {mb(corpus.tree_bytes(b)[1])}" if b else "")
        + f"; medians of {reps} interleaved runs.",
        "",
        "| step | tar+zstd -3 | cas | cas / tar |",
        "|---|---|---|---|",
    ]

    def row(label: str, tkey: str, ckey: str, metric: str, fmt: Callable[[float], str]) -> None:
        t = med(S[tkey], metric)
        c = med(S[ckey], metric)
        lines.append(f"| {label} | {fmt(t)} | {fmt(c)} | {ratio(c, t)} |")

    row("put: wall", "tar put", "cas put", "wall", secs)
    row("put: CPU (user+sys)", "tar put", "cas put", "cpu", secs)
    row("put: peak RSS", "tar put", "cas put", "rss", mb)
    row("stored bytes (.tar.zst vs store files)", "tar put", "cas put", "stored", mb)
    lines.append(
        f"| store: objects / on disk (4 KiB blocks) | 1 / {mb(med(S['tar put'], 'stored'))} | "
        f"{med(S['cas put'], 'objects'):,.0f} / {mb(med(S['cas put'], 'disk'))} | |"
    )
    row("get, empty cache: wall", "tar get", "cas get cold", "wall", secs)
    row("get, empty cache: CPU", "tar get", "cas get cold", "cpu", secs)
    row("get, empty cache: peak RSS", "tar get", "cas get cold", "rss", mb)
    row("get, warm cache: wall (tar: same extract)", "tar get", "cas get warm", "wall", secs)
    row("re-put unchanged: wall (tar: full put)", "tar put", "cas re-put", "wall", secs)
    row("re-put unchanged: CPU", "tar put", "cas re-put", "cpu", secs)
    if b is not None:
        row(
            "put B after A: wall (tar: fresh archive)",
            "tar put B",
            "cas put B after A",
            "wall",
            secs,
        )
        row("put B after A: CPU", "tar put B", "cas put B after A", "cpu", secs)
        row("bytes added for B", "tar put B", "cas put B after A", "stored", mb)
        row("update a dir holding A to B: wall", "tar update A->B", "cas update A->B", "wall", secs)
        lines.append(
            "| update A->B: differences from B after it | "
            f"{med(S['tar update A->B'], 'differences'):.0f} | "
            f"{med(S['cas update A->B'], 'differences'):.0f} | |"
        )
        lines.append(
            "| update A->B: bytes read from the store | - | "
            f"{mb(med(S['cas update A->B'], 'from_store'))} | |"
        )
    foreign = [s.foreign for ss in S.values() for s in ss]
    lines += [
        "",
        f"Other processes used a median {statistics.median(foreign):.0%} (max {max(foreign):.0%})"
        f" of the {os.cpu_count()} cores during the timed steps; load average at the end: "
        + ", ".join(f"{x:.2f}" for x in os.getloadavg())
        + ".",
        "",
        f"Command: `{command}`",
    ]
    if bench.notes:
        lines += ["", "Notes (each once):", *[f"- {n}" for n in dict.fromkeys(bench.notes)]]
    return "\n".join(lines) + "\n"


def write_doc(doc: Path, label: str, text: str) -> None:
    begin, end = f"<!-- BEGIN compare {label} -->", f"<!-- END compare {label} -->"
    block = f"{begin}\n{text}{end}\n"
    old = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        new = old.rstrip("\n") + "\n\n" + block
    doc.write_text(new)


# ---------------------------------------------------------------- main


def default_cas() -> list[str]:
    beside = Path(sys.executable).parent / "cas"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("cas")
    return [found] if found else [sys.executable, "-m", "cas_cli.main"]


def resolve(name: str, corpus_dir: Path) -> Path:
    p = Path(name)
    if not p.is_dir():
        p = corpus_dir / name
    if not p.is_dir():
        raise SystemExit(f"no corpus {name!r} (build it with benchmarks/corpus.py)")
    return p.resolve()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "corpus",
        nargs="*",
        help="a tree, or two (A B) for a pair; names are looked up under --corpus-dir",
    )
    ap.add_argument("--corpus-dir", type=Path, default=corpus.default_dir())
    ap.add_argument("-n", "--runs", type=int, default=3)
    ap.add_argument("--level", type=int, default=3, help="zstd level for both tools")
    ap.add_argument("--cas", default=None, help="cas command (default: the one beside python)")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: temp)")
    ap.add_argument(
        "--doc",
        type=Path,
        default=None,
        help="also write the table into this markdown file (replacing its block)",
    )
    ap.add_argument(
        "--exact-update",
        action="store_true",
        help="fail when `cas get --delete` over a directory holding A does not leave "
        "exactly B (always on with --smoke)",
    )
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="tiny generated pair, one run, fail unless every restore is exact",
    )
    args = ap.parse_args(argv)
    command = "python benchmarks/compare.py " + shlex.join(
        argv if argv is not None else sys.argv[1:]
    )
    cas_cmd = shlex.split(args.cas) if args.cas else default_cas()
    with tempfile.TemporaryDirectory(prefix="cas-bench-", dir=args.work) as tmp:
        work = Path(tmp)
        if args.smoke:
            a, b = corpus.build_smoke(work / "corpus")
            runs = 1
        else:
            if len(args.corpus) not in (1, 2):
                ap.error("give one corpus, or two for a pair (or --smoke)")
            a = resolve(args.corpus[0], args.corpus_dir)
            b = resolve(args.corpus[1], args.corpus_dir) if len(args.corpus) == 2 else None
            runs = args.runs
        t0 = time.monotonic()
        read = sum(warm_page_cache(p) for p in (a, b) if p is not None)
        print(
            f"read {mb(read)} once to warm the page cache in {time.monotonic() - t0:.1f}s",
            file=sys.stderr,
        )
        exact = args.exact_update or args.smoke
        bench = Bench(cas_cmd, work / "runs", level=args.level, exact_update=exact)
        for rep in range(runs):
            t0 = time.monotonic()
            one_round(bench, a, b, rep)
            print(f"round {rep + 1}/{runs} done in {time.monotonic() - t0:.1f}s", file=sys.stderr)
        text = report(bench, a, b, runs, command)
    print(text)
    if args.doc and not args.smoke:
        write_doc(args.doc, a.name + (f"-{b.name}" if b else ""), text)
    if bench.failures:
        print("FAILED:\n" + "\n".join(f"- {f}" for f in bench.failures), file=sys.stderr)
        return 1
    if args.smoke:
        print("smoke: every restore into an empty directory was exact", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
