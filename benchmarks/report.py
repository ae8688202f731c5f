"""Markdown tables and a PNG chart of one corpus's results; the generated block of a doc.

Every number is a median over the repetitions. Times are shown as a ratio to
the baseline (tar+zstd -3) measured in the same run, with seconds beside them
as context; sizes as MB with their ratio to the baseline's archives.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from pathlib import Path

import corpus as corpora
from measure import Sample
from runner import Corpus, Results
from steps import GET_B, GET_B_CACHED, GET_B_INTO_A, PUT_A, PUT_B, STEPS
from tools import BASELINE, Tool


def med(samples: list[Sample], key: str) -> float:
    if key in ("wall", "cpu", "rss"):
        return statistics.median(getattr(s, key) for s in samples)
    return statistics.median(s.extra.get(key, 0.0) for s in samples)


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def cell(value: float, base: float | None, fmt: Callable[[float], str]) -> str:
    if base:
        return f"{value / base:.2f}x ({fmt(value)})"
    return fmt(value)


class Summary:
    """Medians of one corpus's results, looked up by tool and step."""

    def __init__(self, res: Results, tools: list[type[Tool]]) -> None:
        self.res = res
        self.tools = [t for t in tools if any(k[0] == t.label for k in res.samples)]
        self.steps = [s for s in STEPS if any(k[1] == s for k in res.samples)]

    def get(self, tool: str, step: str, key: str) -> float | None:
        samples = self.res.samples.get((tool, step))
        return med(samples, key) if samples else None

    def base(self, step: str, key: str) -> float | None:
        return self.get(BASELINE.label, step, key)

    def ratio(self, tool: str, step: str, key: str = "wall") -> float | None:
        v, b = self.get(tool, step, key), self.base(step, key)
        return v / b if v is not None and b else None


def wall_table(s: Summary) -> list[str]:
    lines = [
        "| tool | " + " | ".join(s.steps) + " |",
        "|---|" + "---|" * len(s.steps),
    ]
    for tool in s.tools:
        cells = []
        for step in s.steps:
            v = s.get(tool.label, step, "wall")
            cells.append(
                "-" if v is None else cell(v, s.base(step, "wall"), lambda x: f"{x:.2f} s")
            )
        lines.append(f"| {tool.label} | " + " | ".join(cells) + " |")
    return lines


def resource_table(s: Summary, paired: bool) -> list[str]:
    heads = ["put A CPU", "put A peak RSS", "get peak RSS (max)", "stored after A"]
    if paired:
        heads += ["added by B", "fetched: B into A"]
    heads.append("stale paths left: B into A")
    lines = ["| tool | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    gets = (GET_B, GET_B_CACHED, GET_B_INTO_A)
    for tool in s.tools:
        t = tool.label

        def fmt(
            step: str, key: str, show: Callable[[float], str], ratio: bool = True, t: str = t
        ) -> str:
            v = s.get(t, step, key)
            if v is None:
                return "-"
            return cell(v, s.base(step, key) if ratio else None, show)

        rss = [v for st in gets if (v := s.get(t, st, "rss")) is not None]
        row = [
            fmt(PUT_A, "cpu", lambda x: f"{x:.2f} s"),
            fmt(PUT_A, "rss", mb, ratio=False),
            mb(max(rss)) if rss else "-",
            fmt(PUT_A, "stored", mb),
        ]
        if paired:
            row.append(fmt(PUT_B, "added", mb))
            known = s.res.samples.get((t, GET_B_INTO_A), [])
            fetched = [x for x in known if "fetched" in x.extra]
            row.append(mb(med(fetched, "fetched")) if fetched else "-")
        row.append(fmt(GET_B_INTO_A, "stale", lambda x: f"{x:,.0f}", ratio=False))
        lines.append(f"| {t} | " + " | ".join(row) + " |")
    return lines


def chart(s: Summary, title: str, path: Path) -> bool:
    """Grouped bars of wall time / tar+zstd -3 per step; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(10, 4.2), dpi=110)
    width = 0.8 / max(1, len(s.tools))
    for i, tool in enumerate(s.tools):
        xs, ys = [], []
        for j, step in enumerate(s.steps):
            r = s.ratio(tool.label, step)
            if r is not None:
                xs.append(j + (i - (len(s.tools) - 1) / 2) * width)
                ys.append(r)
        ax.bar(xs, ys, width, label=tool.label)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(s.steps)), [st.replace(", ", ",\n") for st in s.steps], fontsize=8)
    ax.set_ylabel("wall time / tar+zstd -3 (log)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, ncols=3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def describe(c: Corpus) -> str:
    files, size = corpora.tree_bytes(c.a)
    text = f"`{c.a.name}` ({files:,} files, {mb(size)})"
    if c.b is not None:
        files, size = corpora.tree_bytes(c.b)
        text += f" -> `{c.b.name}` ({files:,} files, {mb(size)})"
    return text


def render(
    c: Corpus,
    res: Results,
    tools: list[type[Tool]],
    *,
    runs: int,
    command: str,
    skipped: dict[str, str],
    image: str | None = None,
) -> str:
    s = Summary(res, tools)
    out = [
        f"Corpus {describe(c)}; medians of {runs} runs, tools interleaved in an order "
        f"that rotates every run. Cells: ratio to {BASELINE.label} in the same run "
        "(absolute value in brackets).",
        "",
        "Wall time:",
        "",
        *wall_table(s),
        "",
        "CPU (user+sys of the whole process tree), memory, bytes:",
        "",
        *resource_table(s, c.b is not None),
        "",
    ]
    if image:
        out += [f"![wall time relative to {BASELINE.label}, {c.label}]({image})", ""]
    foreign = [x.foreign for ss in res.samples.values() for x in ss]
    if foreign:
        out.append(
            f"Other processes used a median {statistics.median(foreign):.0%} "
            f"(max {max(foreign):.0%}) of the {os.cpu_count()} cores during the timed steps."
        )
        out.append("")
    out.append("Versions: " + "; ".join(f"{t.label}: {t.version()}" for t in s.tools) + ".")
    out += ["", f"Command: `{command}`", ""]
    notes = [*res.notes, *(f"{name} skipped: {why}." for name, why in skipped.items())]
    if notes:
        out += ["Notes:", "", *[f"- {n}" for n in notes], ""]
    if res.failures:
        out += ["FAILURES:", "", *[f"- {f.splitlines()[0]}" for f in res.failures], ""]
    return "\n".join(out)


def write_doc(doc: Path, label: str, text: str) -> None:
    """Replace the generated block for `label` in `doc` (append it if absent)."""
    begin, end = f"<!-- BEGIN compare {label} -->", f"<!-- END compare {label} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    old = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        new = head + block + ("\n" + tail if tail else "")
    else:
        new = old.rstrip("\n") + "\n\n" + block
    doc.write_text(new)
