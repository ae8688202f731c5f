"""Delta get: bytes fetched from the store for B when the machine already holds A.

    python benchmarks/delta_get.py --corpus-dir DIR numpy        # numpy-A -> numpy-B
    python benchmarks/delta_get.py --corpus-dir DIR build        # build -> build-B
    python benchmarks/delta_get.py --smoke                       # tiny generated pair (CI)

A and B are put into one local store. Then `cas get B` runs, each time with
a fresh cache directory and destination, in four situations:

- (a) empty cache, empty destination;
- (b) cache holding A (filled by a get of A elsewhere), empty destination
  (`--cache`: by default a store on a local disk is read directly, not cached);
- (c) destination holding A (an earlier get of A), empty cache: in place;
- (c2) the same, but the files cache already knows the destination's files
  (a `--dry-run` read them once), as on a runner's second update;
- (d) empty cache, empty destination, `--seed` holding A.

For each: wall time, bytes fetched from the store (compressed, from
`get --json`) and, for (b)-(d), their ratio to the compressed size of the
chunks B names that A does not (1.00 is the goal: nothing A holds is
fetched again). Every result is compared with B (contents, modes, types,
symlinks, mtimes); a wrong one makes the exit status 1. When `casync` is
installed, `casync extract` of B is timed into an empty directory and with
`--seed` A, and its result checked (contents and types) the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import compare  # noqa: E402
import corpus  # noqa: E402

from cas.get.browse import walk  # noqa: E402
from cas.ids import ObjectId  # noqa: E402
from cas.objects import FileEntry  # noqa: E402
from cas.repo import Repository  # noqa: E402
from cas.store.local import LocalStore  # noqa: E402

PAIRS = {
    "numpy": ("numpy-A", "numpy-B"),
    "scipy": ("scipy-A", "scipy-B"),
    "build": ("build", "build-B"),
    "pywheels": ("pywheels-A", "pywheels-B"),
}


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"$ {' '.join(cmd)} -> {proc.returncode}\n{proc.stderr}")
    return wall, proc.stdout


def chunks_of(store: Path, manifest_id: str) -> set[ObjectId]:
    async def go() -> set[ObjectId]:
        repo = Repository(LocalStore(store, fsync=False))
        manifest = await repo.get_manifest(ObjectId.parse(manifest_id))
        out: set[ObjectId] = set()
        async for located in walk(repo, manifest):
            if isinstance(located.entry, FileEntry):
                out.update(ref.id for ref in located.entry.chunks)
        return out

    return asyncio.run(go())


def stored_size(store: Path, manifest_id: str, ids: set[ObjectId]) -> int:
    """Compressed bytes of `ids`, as the manifest's index locates them in its packs."""

    async def go() -> int:
        index = await Repository(LocalStore(store, fsync=False)).index(ObjectId.parse(manifest_id))
        return sum(index.chunks[i].stored for i in ids)

    return asyncio.run(go())


class DeltaBench:
    def __init__(self, cas: list[str], work: Path, a: Path, b: Path) -> None:
        self.cas, self.work, self.a, self.b = cas, work, a, b
        self.store = work / "store"
        self.rows: list[dict[str, object]] = []
        self.failures: list[str] = []
        self._n = 0

    def env(self, cache: Path) -> dict[str, str]:
        env = {**os.environ, "CAS_CACHE_DIR": str(cache), "CI": "1"}
        env.pop("CAS_STORE", None)
        return env

    def fresh(self, name: str) -> Path:
        self._n += 1
        path = self.work / f"{self._n:02}-{name}"
        path.mkdir(parents=True)
        return path

    def cas_get(self, manifest: str, dest: Path, cache: Path, *extra: str) -> tuple[float, dict]:
        cmd = [*self.cas, "get", "--json", "--store", str(self.store), *extra, manifest, str(dest)]
        wall, out = run(cmd, self.env(cache))
        return wall, json.loads(out)

    def check(self, what: str, actual: Path, *, mtimes: bool = True) -> bool:
        diffs = compare.tree_differences(self.b, actual, mtimes=mtimes)
        if diffs:
            self.failures.append(f"{what}: {len(diffs)} differences, e.g. {'; '.join(diffs[:5])}")
        return not diffs

    def measure(self) -> None:
        env = self.env(self.fresh("put-cache"))
        put = [*self.cas, "put", "--json", "--store", str(self.store)]
        _, out_a = run([*put, "--ref", "bench/a", str(self.a)], env)
        _, out_b = run([*put, "--ref", "bench/b", str(self.b)], env)  # parent: bench/a
        id_a, id_b = json.loads(out_a)["manifest"], json.loads(out_b)["manifest"]
        lacking = chunks_of(self.store, id_b) - chunks_of(self.store, id_a)
        self.goal = stored_size(self.store, id_b, lacking)
        self.new_chunks = len(lacking)

        root = self.fresh("a")
        wall, doc = self.cas_get(id_b, root / "dest", root / "cache")
        self.row("(a) empty cache, empty dest", wall, doc, root / "dest", ratio=False)

        root = self.fresh("b")  # the local store stands in for a remote one: cache it anyway
        self.cas_get(id_a, root / "scratch", root / "cache", "--cache")
        compare.rmtree(root / "scratch")
        wall, doc = self.cas_get(id_b, root / "dest", root / "cache", "--cache")
        self.row("(b) cache holds A", wall, doc, root / "dest")

        root = self.fresh("c")
        self.cas_get(id_a, root / "dest", root / "cache-for-a")
        wall, doc = self.cas_get(id_b, root / "dest", root / "cache", "--delete")
        self.row("(c) dest holds A, in place", wall, doc, root / "dest")

        root = self.fresh("c2")
        self.cas_get(id_a, root / "dest", root / "cache-for-a")
        time.sleep(2.1)  # past the files cache's racy window, so the next read is remembered
        self.cas_get(id_b, root / "dest", root / "cache", "--dry-run")
        wall, doc = self.cas_get(id_b, root / "dest", root / "cache", "--delete")
        self.row("(c2) ... files cache warm", wall, doc, root / "dest")

        root = self.fresh("d")
        wall, doc = self.cas_get(id_b, root / "dest", root / "cache", "--seed", str(self.a))
        self.row("(d) --seed A", wall, doc, root / "dest")

        if shutil.which("casync"):
            self.casync()

    def row(self, label: str, wall: float, doc: dict, dest: Path, *, ratio: bool = True) -> None:
        fetched = int(doc["bytes_from_store"])
        self.rows.append(
            {
                "case": label,
                "wall_s": round(wall, 3),
                "from_store": fetched,
                "from_cache": doc["bytes_from_cache"],
                "from_dest": doc["bytes_from_destination"],
                "from_seeds": doc["bytes_from_seeds"],
                "ratio": round(fetched / self.goal, 3) if ratio and self.goal else None,
                "exact": self.check(label, dest),
            }
        )

    def casync(self) -> None:
        root = self.fresh("casync")
        index = root / "b.caidx"
        cstore = root / "castr"
        run(["casync", "make", f"--store={cstore}", str(index), str(self.b)], dict(os.environ))
        for label, extra in (
            ("casync extract", []),
            ("casync extract --seed A", [f"--seed={self.a}"]),
        ):
            dest = root / label.replace(" ", "_").replace("-", "")
            wall, _ = run(
                ["casync", "extract", f"--store={cstore}", *extra, str(index), str(dest)],
                dict(os.environ),
            )
            self.rows.append(
                {
                    "case": label,
                    "wall_s": round(wall, 3),
                    "from_store": None,
                    "ratio": None,
                    "exact": self.check(label, dest, mtimes=False),
                }
            )

    def report(self) -> str:
        lines = [
            f"A = {self.a.name}, B = {self.b.name}; chunks of B that A lacks: {self.new_chunks}, "
            f"{self.goal:,} bytes stored (the goal for (b)-(d))",
            f"{'case':<28} {'wall s':>8} {'store bytes':>14} {'ratio':>6}  exact",
        ]
        for r in self.rows:
            store = f"{r['from_store']:,}" if r["from_store"] is not None else "-"
            ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
            lines.append(
                f"{r['case']:<28} {r['wall_s']:>8.2f} {store:>14} {ratio:>6}  "
                f"{'yes' if r['exact'] else 'NO'}"
            )
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pair", nargs="?", help=f"one of {', '.join(PAIRS)}, or two directories")
    ap.add_argument("b", nargs="?", help="B, when the first argument is a directory A")
    ap.add_argument("--corpus-dir", type=Path, default=corpus.default_dir())
    ap.add_argument("--cas", default=None, help="cas command (default: the one beside python)")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: temp)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON too")
    ap.add_argument("--smoke", action="store_true", help="tiny generated pair, seconds")
    args = ap.parse_args(argv)
    cas_cmd = args.cas.split() if args.cas else compare.default_cas()
    with tempfile.TemporaryDirectory(prefix="cas-delta-", dir=args.work) as tmp:
        work = Path(tmp)
        if args.smoke:
            a, b = corpus.build_smoke(work / "corpus")
        elif args.pair in PAIRS and args.b is None:
            if args.pair == "build":
                corpus.build(args.corpus_dir, ["build"])
            elif not (args.corpus_dir / PAIRS[args.pair][0]).is_dir():
                corpus.build(args.corpus_dir, [args.pair])
            a, b = (compare.resolve(n, args.corpus_dir) for n in PAIRS[args.pair])
        elif args.pair and args.b:
            a, b = (
                compare.resolve(args.pair, args.corpus_dir),
                compare.resolve(args.b, args.corpus_dir),
            )
        else:
            ap.error("give a pair name, two directories, or --smoke")
        compare.warm_page_cache(a)
        compare.warm_page_cache(b)
        bench = DeltaBench(cas_cmd, work / "runs", a, b)
        bench.measure()
        print(bench.report())
        if args.json:
            print(json.dumps(bench.rows, indent=2))
    if bench.failures:
        print("FAILED:\n" + "\n".join(f"- {f}" for f in bench.failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
