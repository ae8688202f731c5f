"""`cas docs [TOPIC]`: the documentation that ships with the command (docs/*.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cas.errors import ObjectNotFound
from cas_cli.common import refuse_json


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the `docs` command."""
    p = sub.add_parser(
        "docs",
        parents=[common],
        help="print a chapter of the documentation (gc, format, http-api, gcs, ci, ...)",
        description="Without TOPIC, list the chapters; with one, print it (Markdown).",
    )
    p.add_argument("topic", nargs="?", metavar="TOPIC")
    p.set_defaults(run=run)


def topics() -> dict[str, Path]:
    """Chapter name -> file: shipped inside the package (a wheel), or the checkout's docs/."""
    here = Path(__file__).resolve().parent.parent  # the cas_cli package
    for root in (here / "docs", here.parent / "docs"):
        if root.is_dir():
            return {p.stem: p for p in root.glob("*.md")}
    return {}


def run(args: argparse.Namespace) -> int:
    """Execute `cas docs`."""
    refuse_json(args, "cas docs", "it prints Markdown")
    found = topics()
    if not found:
        raise ObjectNotFound("the documentation is not installed with this copy of cas")
    if args.topic is None:
        for name, path in sorted(found.items()):
            title = path.read_text(encoding="utf-8").splitlines()[0].lstrip("# ")
            print(f"{name:<14}{title}")
        return 0
    chapter = found.get(args.topic.removesuffix(".md"))
    if chapter is None:
        raise ObjectNotFound(f"no chapter {args.topic!r}; there are: {', '.join(sorted(found))}")
    print(chapter.read_text(encoding="utf-8"), end="")
    return 0
