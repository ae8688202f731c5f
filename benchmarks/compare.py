"""cas against tar+zstd, casync, restic and borg on the same trees, interleaved, medians of N.

    python benchmarks/compare.py --corpus-dir DIR build numpy scipy torch -n 3 \
        --doc docs/benchmarks.md
    python benchmarks/compare.py --corpus-dir DIR A_DIR:B_DIR   # any two trees
    python benchmarks/compare.py --smoke                        # seconds; correctness only

A corpus is a pair name (`build`: build -> build-B, `numpy`: numpy-A ->
numpy-B, `scipy`, `pywheels`), a single tree (`torch`), or `A:B`; names are looked up
(and, for the known corpora, built) under --corpus-dir. For each corpus,
every tool puts A, puts A again unchanged, puts B after A, then gets B into
an empty directory with nothing cached, on a machine that got A before, and
into a directory holding A (see runner.py); every restore is checked against
its source. Peers that are not installed are skipped with a note
(`benchmarks/setup-peers.sh` installs them). With --doc, each corpus's
tables and chart replace its generated block in that file; text outside the
blocks is kept.

The page cache cannot be dropped without root, so every corpus is read once
before the first timed step and all tools then read it from memory alike.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import corpus  # noqa: E402
import report  # noqa: E402
import runner  # noqa: E402
import tools  # noqa: E402
from measure import rmtree, warm_page_cache  # noqa: E402
from tools.cas import Cas, default_cas  # noqa: E402
from verify import tree_differences  # noqa: E402

# used by delta_get.py
__all__ = ["default_cas", "main", "resolve", "rmtree", "tree_differences", "warm_page_cache"]

PAIR_NAMES = {
    "build": ("build", "build-B"),
    **{n: (f"{n}-A", f"{n}-B") for n in (*corpus.PAIRS, *corpus.PURE_SETS)},
}


def resolve(name: str, corpus_dir: Path) -> Path:
    """A tree by path, else by name under `corpus_dir` (built first if it is a known corpus)."""
    p = Path(name)
    if not p.is_dir():
        p = corpus_dir / name
    if not p.is_dir():
        base = name.removesuffix("-A").removesuffix("-B")
        if base in corpus.NAMES:
            corpus.build(corpus_dir, [base])
    if not p.is_dir():
        raise SystemExit(f"no corpus {name!r} (build it with benchmarks/corpus.py)")
    return p.resolve()


def corpora_from(args: list[str], corpus_dir: Path) -> list[runner.Corpus]:
    if len(args) == 2 and (
        PAIR_NAMES.get(args[0], ("", ""))[1] == args[1]  # the old form: build build-B
        or not any(a in PAIR_NAMES or ":" in a for a in args)  # any two trees: numpy-A numpy-B
    ):
        return [runner.Corpus(resolve(args[0], corpus_dir), resolve(args[1], corpus_dir))]
    out = []
    for arg in args:
        if ":" in arg:
            a, b = arg.split(":", 1)
            out.append(runner.Corpus(resolve(a, corpus_dir), resolve(b, corpus_dir)))
        elif arg in PAIR_NAMES:
            a, b = PAIR_NAMES[arg]
            out.append(runner.Corpus(resolve(a, corpus_dir), resolve(b, corpus_dir)))
        else:
            out.append(runner.Corpus(resolve(arg, corpus_dir), None))
    return out


def pick_tools(names: str | None) -> tuple[list[type[tools.Tool]], dict[str, str]]:
    """Installed tools (the baseline always first) and why the others are skipped."""
    wanted = {n.strip() for n in names.split(",")} if names else None
    chosen, skipped = [], {}
    for cls in tools.ALL:
        if wanted is not None and cls.key not in wanted and cls is not tools.BASELINE:
            continue
        why = cls.missing()
        if why:
            if cls is tools.BASELINE:
                raise SystemExit(f"cannot run the baseline {cls.label}: {why}")
            skipped[cls.label] = why
        else:
            chosen.append(cls)
    return chosen, skipped


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("corpus", nargs="*", help="pair names, tree names or A:B (see above)")
    ap.add_argument("--corpus-dir", type=Path, default=corpus.default_dir())
    ap.add_argument("-n", "--runs", type=int, default=3)
    ap.add_argument("--level", type=int, default=3, help="zstd level of cas and borg")
    ap.add_argument(
        "--tools",
        default=None,
        help="comma-separated subset of " + ",".join(t.key for t in tools.ALL),
    )
    ap.add_argument("--cas", default=None, help="cas command (default: the one beside python)")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: temp)")
    ap.add_argument(
        "--doc", type=Path, default=None, help="write tables and charts into this markdown file"
    )
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="tiny generated pair, one run, every installed tool; fail unless every restore "
        "is exact",
    )
    args = ap.parse_args(argv)
    command = "python benchmarks/compare.py " + shlex.join(
        argv if argv is not None else sys.argv[1:]
    )
    if args.cas:
        Cas.cas_cmd = shlex.split(args.cas)
    chosen, skipped = pick_tools(args.tools)
    for name, why in skipped.items():
        runner.log(f"{name} skipped: {why}")
    for tool in chosen:
        tool.prepare()
    failed = False
    with tempfile.TemporaryDirectory(prefix="cas-bench-", dir=args.work) as tmp:
        work = Path(tmp)
        if args.smoke:
            a, b = corpus.build_smoke(work / "corpus")
            todo, runs = [runner.Corpus(a, b)], 1
            chosen = [t for t in chosen if t is not tools.Tar10]  # same code as the baseline
        else:
            if not args.corpus:
                ap.error("name at least one corpus (or --smoke)")
            todo, runs = corpora_from(args.corpus, args.corpus_dir), args.runs
        for c in todo:
            t0 = time.monotonic()
            read = sum(warm_page_cache(p) for p in (c.a, c.b) if p is not None)
            runner.log(f"read {read / 1e6:,.0f} MB to warm the page cache")
            res = runner.run_corpus(c, chosen, work / "runs", runs, args.level)
            image = None
            if args.doc or args.smoke:
                png = (args.doc.parent if args.doc else work) / f"benchmarks-{c.label}.png"
                if report.chart(report.Summary(res, chosen), f"{c.label}, medians of {runs}", png):
                    image = png.name
            text = report.render(
                c, res, chosen, runs=runs, command=command, skipped=skipped, image=image
            )
            print(text)
            if args.doc and not args.smoke:
                report.write_doc(args.doc, c.label, text)
            runner.log(f"{c.label} done in {time.monotonic() - t0:.0f} s")
            for f in res.failures:
                print(f"FAILED: {f}", file=sys.stderr)
            failed = failed or bool(res.failures)
    if failed:
        return 1
    if args.smoke:
        names = ", ".join(t.label for t in chosen)
        print(f"smoke: every restore was exact ({names})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
