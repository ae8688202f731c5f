"""`cas diff A B`: what changed between two manifests, and how much a get of B would move."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cas.get.diff import Change, Diff, Side, diff
from cas.repo import Repository
from cas.sizes import format_size
from cas_cli.common import emit_json, info, run_with_repo


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the `diff` command."""
    p = sub.add_parser(
        "diff",
        parents=[common],
        help="compare two manifests",
        description="List paths added (+), removed (-) and changed (M) from manifest A to "
        "manifest B (ids or refs), with sizes, and the bytes of the chunks B names that A "
        "lacks: what a get of B moves over a directory holding A.",
    )
    p.add_argument("old", metavar="A", help="manifest id or ref name")
    p.add_argument("new", metavar="B", help="manifest id or ref name")
    p.add_argument(
        "--exit-code",
        action="store_true",
        help="exit with 1 when the manifests differ, 0 when they describe the same tree",
    )
    p.set_defaults(run=run)


def _side_json(side: Side | None) -> dict[str, Any] | None:
    return None if side is None else {"kind": side.kind, "size": side.size}


def _change_json(change: Change) -> dict[str, Any]:
    return {"path": change.path, "old": _side_json(change.old), "new": _side_json(change.new)}


def _size(side: Side | None) -> str:
    if side is None:
        return ""
    return side.kind if side.size is None else format_size(side.size)


def run(args: argparse.Namespace) -> int:
    """Execute `cas diff`."""

    async def action(repo: Repository) -> Diff:
        old = await repo.get_manifest(await repo.resolve(args.old))
        new = await repo.get_manifest(await repo.resolve(args.new))
        return await diff(repo, old, new)

    d = run_with_repo(args, action)
    if args.json:
        emit_json(
            {
                "added": [_change_json(c) for c in d.added],
                "removed": [_change_json(c) for c in d.removed],
                "changed": [_change_json(c) for c in d.changed],
                "new_chunks": d.new_chunks,
                "new_chunk_bytes": d.new_chunk_bytes,
            }
        )
        return _status(args, d)
    rows = [("+", c, _size(c.new)) for c in d.added]
    rows += [("-", c, _size(c.old)) for c in d.removed]
    rows += [("M", c, f"{_size(c.old)} -> {_size(c.new)}") for c in d.changed]
    for mark, change, size in sorted(rows, key=lambda r: r[1].path):
        sys.stdout.write(f"{mark} {change.path}  ({size})\n")
    info(
        args,
        f"{len(d.added)} added, {len(d.removed)} removed, {len(d.changed)} changed; "
        f"B names {d.new_chunks} chunks A lacks, {format_size(d.new_chunk_bytes)} uncompressed",
    )
    return _status(args, d)


def _status(args: argparse.Namespace, d: Diff) -> int:
    """`--exit-code`: 1 when anything differs (as `git diff --exit-code`)."""
    differs = bool(d.added or d.removed or d.changed)
    return 1 if args.exit_code and differs else 0
