"""Run every tool through the same steps, interleaved, and keep every sample and failure.

Steps run step-major: all tools do "put A", then all do "re-put A", and so
on, so each step of every tool meets the machine in the same state. The order
of the tools rotates by one every repetition. Every restore is checked
against its source right after it (then deleted); a wrong restore is a
failure, files a tool leaves behind in a directory that held A are counted
(`stale`) and are a failure only for tools that promise to remove them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from measure import Sample, StepFailed, rmtree
from steps import GET_B, GET_B_CACHED, GET_B_INTO_A, PUT_A, PUT_B, REPUT_A
from tools import Tool
from verify import split_stale, tree_differences


@dataclass
class Results:
    """Samples by (tool label, step); failures and notes in the order they happened."""

    samples: dict[tuple[str, str], list[Sample]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, tool: Tool, step: str, sample: Sample) -> None:
        self.samples.setdefault((tool.label, step), []).append(sample)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


@dataclass
class Corpus:
    a: Path
    b: Path | None  # None: a single tree; the "B" steps then restore A

    @property
    def label(self) -> str:
        return self.a.name + (f"-{self.b.name}" if self.b else "")


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


class Round:
    """One repetition: a fresh scratch directory per tool."""

    def __init__(
        self,
        corpus: Corpus,
        tools: list[type[Tool]],
        work: Path,
        rep: int,
        level: int,
        res: Results,
    ) -> None:
        shift = rep % len(tools)
        order = tools[shift:] + tools[:shift]
        self.corpus, self.res, self.work = corpus, res, work / f"rep{rep}"
        rmtree(self.work)
        self.tools = [cls(self.work / cls.key, level) for cls in order]
        self.broken: set[str] = set()

    def each(self, step: str, action: Callable[[Tool], Sample | None]) -> None:
        for tool in self.tools:
            if tool.label in self.broken:
                continue
            try:
                sample = action(tool)
            except StepFailed as exc:
                self.broken.add(tool.label)
                if step in tool.known_limits:
                    self.res.note(f"{tool.label}, {step}: {tool.known_limits[step]}")
                    continue
                self.res.failures.append(f"{tool.label}, {step}: {exc}")
                log(f"!! {tool.label}, {step} failed; its other steps are skipped this round")
                continue
            if sample is not None:
                self.res.add(tool, step, sample)

    def check(self, tool: Tool, step: str, expected: Path, actual: Path) -> int:
        """Verify a restore; returns the number of stale paths left behind."""
        stale, wrong = split_stale(tree_differences(expected, actual, mtimes=tool.exact_mtimes))
        if wrong:
            self.res.failures.append(
                f"{tool.label}, {step}: {len(wrong)} differences, e.g. " + "; ".join(wrong[:5])
            )
        if stale and (tool.removes_stale or step != GET_B_INTO_A):
            self.res.failures.append(
                f"{tool.label}, {step}: {len(stale)} paths B lacks, e.g. " + "; ".join(stale[:3])
            )
        return len(stale)

    def run(self) -> None:
        a, b = self.corpus.a, self.corpus.b
        b_name, b_tree = ("B", b) if b is not None else ("A", a)
        self.each("setup", lambda t: t.setup())

        def put(src: Path, name: str) -> Callable[[Tool], Sample]:
            def action(tool: Tool) -> Sample:
                before = tool.stored()
                s = tool.put(src, name)
                s.extra["stored"] = tool.stored()
                s.extra["added"] = s.extra["stored"] - before
                return s

            return action

        self.each(PUT_A, put(a, "A"))
        self.each(REPUT_A, put(a, "A2"))
        if b is not None:
            self.each(PUT_B, put(b, "B"))

        def get_empty(tool: Tool) -> Sample:
            dest = tool.root / "get-empty"
            s = tool.get(b_name, dest, "empty")
            self.check(tool, GET_B, b_tree, dest)
            rmtree(dest)
            return s

        self.each(GET_B, get_empty)

        def get_a(tool: Tool) -> None:  # not timed: the machine's earlier job
            tool.get("A", tool.root / "holds-a", "had-a")
            self.check(tool, "get A (set-up)", a, tool.root / "holds-a")

        self.each("get A (set-up)", get_a)

        def get_cached(tool: Tool) -> Sample:
            dest = tool.root / "get-had-a"
            s = tool.get_with_a(b_name, dest, "had-a", tool.root / "holds-a")
            if s is None:
                self.res.note(
                    f'{tool.label} {tool.no_reuse_reason} for "{GET_B_CACHED}": '
                    f'that column is a plain restore, like "{GET_B}".'
                )
                s = tool.get(b_name, dest, "had-a-unused")
                s = replace(s, extra={**s.extra, "same_as_empty": 1.0})
            self.check(tool, GET_B_CACHED, b_tree, dest)
            rmtree(dest)
            return s

        self.each(GET_B_CACHED, get_cached)

        def get_into_a(tool: Tool) -> Sample:
            dest = tool.root / "holds-a"
            s = tool.get(b_name, dest, "fresh")
            s.extra["stale"] = self.check(tool, GET_B_INTO_A, b_tree, dest)
            return s

        self.each(GET_B_INTO_A, get_into_a)
        rmtree(self.work)


def run_corpus(
    corpus: Corpus, tools: list[type[Tool]], work: Path, runs: int, level: int
) -> Results:
    res = Results()
    for rep in range(runs):
        r = Round(corpus, tools, work, rep, level, res)
        log(f"{corpus.label}: round {rep + 1}/{runs}, order " + ", ".join(t.label for t in r.tools))
        r.run()
    return res
