"""`cas get ID|REF[:PATH] DEST`: make a directory hold a manifest's tree (or part of it)."""

from __future__ import annotations

import argparse
from typing import Any

from cas.get.downloader import GetOptions, GetStats
from cas.get.selection import Selection
from cas.get.sources import SOURCES
from cas.session import Session
from cas.sizes import format_size
from cas_cli.common import (
    BarProgress,
    add_cache_options,
    add_progress_option,
    emit_json,
    info,
    run_with_session,
    split_target,
)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the `get` command."""
    p = sub.add_parser(
        "get",
        parents=[common],
        help="restore a manifest into a directory, reusing what is already there",
        description="Make DEST hold the tree of a manifest (id or ref; ID:PATH for one "
        "directory of it), verifying every chunk. Files already identical in DEST are left "
        "untouched; changed ones are rebuilt from chunks found, in order, in the local cache, "
        "in DEST itself and in --seed directories, and only the rest is fetched from the "
        "store. Every file is replaced atomically.",
    )
    p.add_argument("manifest", metavar="ID|REF[:PATH]", help="manifest id or ref name")
    p.add_argument("dest", metavar="DEST", help="destination directory (created if missing)")
    p.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="PATTERN",
        help="get only paths matching this gitignore-style pattern (repeatable); "
        "a pattern matching nothing is an error (exit 3)",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="leave out paths matching this gitignore-style pattern (repeatable)",
    )
    p.add_argument(
        "--seed",
        action="append",
        default=[],
        metavar="DIR",
        help="a directory likely to share content (e.g. a previous build): its matching "
        "chunks are copied instead of fetched (repeatable)",
    )
    p.add_argument(
        "--delete",
        action="store_true",
        help="remove files and directories in DEST that the manifest lacks "
        "(excluded paths are kept)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="write nothing; report what would come from each source",
    )
    add_cache_options(p)
    p.add_argument(
        "--no-files-cache",
        action="store_true",
        help="read every local file instead of trusting remembered chunk lists",
    )
    add_progress_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Execute `cas get`."""
    name, subpath = split_target(args.manifest)
    options = GetOptions(
        selection=Selection(args.include, args.exclude),
        subpath=subpath,
        seeds=tuple(args.seed),
        delete=args.delete,
        dry_run=args.dry_run,
    )
    progress = BarProgress(args, "get")

    async def action(session: Session) -> GetStats:
        return await session.get(name, args.dest, options, progress)

    try:
        s = run_with_session(args, action)
    finally:
        progress.close()
    if args.json:
        emit_json(stats_json(s))
    elif s.dry_run:
        info(args, dry_run_report(s))
    else:
        info(args, summary(s, args.delete))
    return 0


def stats_json(s: GetStats) -> dict[str, Any]:
    """The `--json` document of a get or dry run."""
    return {
        "dry_run": s.dry_run,
        "files": s.files,
        "files_untouched": s.files_untouched,
        "dirs": s.dirs,
        "symlinks": s.symlinks,
        "bytes": s.bytes_written,
        "bytes_untouched": s.bytes_untouched,
        "chunks_from_cache": s.chunks_from_cache,
        "chunks_from_destination": s.chunks_from_destination,
        "chunks_from_seeds": s.chunks_from_seeds,
        "chunks_from_store": s.chunks_from_store,
        "bytes_from_cache": s.bytes_from_cache,
        "bytes_from_destination": s.bytes_from_destination,
        "bytes_from_seeds": s.bytes_from_seeds,
        "bytes_from_store": s.bytes_from_store,
        "sources": {
            name: {"files": c.files, "chunks": c.chunks, "bytes": c.bytes}
            for name, c in s.planned.items()
        },
        "extra_files": s.extra_files,
        "extra_bytes": s.extra_bytes,
        "extra_paths": s.extra_paths,
        "deleted": s.deleted,
        "leftovers_removed": s.leftovers_removed,
        "seconds": round(s.seconds, 3),
    }


def summary(s: GetStats, deleted: bool) -> str:
    """The one line every get ends with."""
    rate = s.bytes_written / s.seconds if s.seconds > 0 else 0.0
    extra = (
        f"{s.deleted} paths not in the manifest deleted"
        if deleted
        else f"{s.extra_files} files not in the manifest kept (--delete removes them)"
    )
    return (
        f"got {s.files} files written ({format_size(s.bytes_written)}), "
        f"{s.files_untouched} untouched ({format_size(s.bytes_untouched)}), {extra}; "
        f"from the store {format_size(s.bytes_from_store)} (compressed), "
        f"cache {format_size(s.bytes_from_cache)} (compressed), "
        f"destination {format_size(s.bytes_from_destination)}, "
        f"seeds {format_size(s.bytes_from_seeds)}; "
        f"{s.seconds:.1f}s ({format_size(rate)}/s)"
        + (
            f"; removed {s.leftovers_removed} temporary files an interrupted get had left"
            if s.leftovers_removed
            else ""
        )
    )


def dry_run_report(s: GetStats) -> str:
    """What a get would do, source by source."""
    lines = [
        f"would write {s.files} files ({format_size(s.bytes_written)}), "
        f"leave {s.files_untouched} untouched ({format_size(s.bytes_untouched)}); "
        f"{s.extra_files} files ({format_size(s.extra_bytes)}) not in the manifest",
        f"{'source':<12} {'files':>8} {'chunks':>8} {'bytes':>12}",
    ]
    for name in SOURCES:
        c = s.planned.get(name)
        if c is not None:
            lines.append(f"{name:<12} {c.files:>8} {c.chunks:>8} {format_size(c.bytes):>12}")
    return "\n".join(lines)
