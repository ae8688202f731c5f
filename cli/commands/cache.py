"""`cas cache info | prune | clear`: look after the local caches."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from cas.caches.chunks import ChunkCache, default_cache_dir
from cas.sizes import format_size, parse_size
from cas_cli.common import emit_json


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the `cache` command."""
    p = sub.add_parser(
        "cache",
        parents=[common],
        help="show, shrink or empty the local caches",
        description="The chunk cache ($CAS_CACHE_DIR or $XDG_CACHE_HOME/cas, capped by "
        "$CAS_CACHE_SIZE) and the files cache next to it.",
    )
    action = p.add_subparsers(dest="cache_action", metavar="ACTION", required=True)
    action.add_parser("info", parents=[common], help="where the caches are and what they hold")
    prune = action.add_parser("prune", parents=[common], help="evict least-recently-used chunks")
    prune.add_argument(
        "--max-size",
        metavar="SIZE",
        default=None,
        help="shrink the chunk cache to SIZE (default: its configured cap)",
    )
    action.add_parser("clear", parents=[common], help="empty both caches")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Execute `cas cache ...`."""
    directory = default_cache_dir()
    cache = ChunkCache(directory)
    try:
        if args.cache_action == "prune":
            target = parse_size(args.max_size, "--max-size") if args.max_size else cache.capacity
            freed = cache.evict_to(target)
            report: dict[str, Any] = {"freed_bytes": freed}
        elif args.cache_action == "clear":
            cache.clear()
            shutil.rmtree(directory / "files.lmdb", ignore_errors=True)
            report = {"cleared": True}
        else:
            report = {}
        stats = cache.stats()
    finally:
        cache.close()
    report.update(
        path=str(stats.path), entries=stats.entries, bytes=stats.bytes, capacity=stats.capacity
    )
    files = directory / "files.lmdb"
    files_bytes = _disk_usage(files)
    report["files_cache"] = {"path": str(files), "bytes": files_bytes}
    if args.json:
        emit_json(report)
    else:
        if "freed_bytes" in report:
            print(f"freed {format_size(report['freed_bytes'])}")
        print(
            f"{stats.path}: {stats.entries} chunks, {format_size(stats.bytes)} "
            f"of {format_size(stats.capacity)}"
        )
        print(
            f"{files}: files and directories cache, {format_size(files_bytes)} on disk "
            "(entries unused for 30 days are pruned)"
        )
    return 0


def _disk_usage(path: Path) -> int:
    """Bytes the files of `path` take on disk (0 if it does not exist)."""
    if not path.is_dir():
        return 0
    return sum(f.stat().st_blocks * 512 for f in path.iterdir() if f.is_file())
