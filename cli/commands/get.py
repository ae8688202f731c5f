"""`cas get ID|REF DEST`: restore a manifest into a directory."""

from __future__ import annotations

import argparse

from cas.get import Downloader, GetStats
from cas.repo import Repository
from cas.sizes import format_size
from cas_cli.common import BarProgress, emit_json, info, run_with_repo


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the `get` command."""
    p = sub.add_parser(
        "get",
        parents=[common],
        help="restore a manifest into a directory",
        description="Write the tree of a manifest (id or ref) into DEST, verifying every "
        "chunk; chunks in the local cache are not fetched again.",
    )
    p.add_argument("manifest", metavar="ID|REF", help="manifest id or ref name")
    p.add_argument("dest", metavar="DEST", help="destination directory (created if missing)")
    p.add_argument("--no-cache", action="store_true", help="bypass the local chunk cache")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Execute `cas get`."""
    progress = BarProgress(args, "get")

    async def action(repo: Repository) -> GetStats:
        manifest_id = await repo.resolve(args.manifest)
        return await Downloader(repo, progress).get(manifest_id, args.dest)

    try:
        s = run_with_repo(args, action)
    finally:
        progress.close()
    if args.json:
        emit_json(
            {
                "files": s.files,
                "dirs": s.dirs,
                "symlinks": s.symlinks,
                "bytes": s.bytes_written,
                "chunks_from_cache": s.chunks_from_cache,
                "chunks_from_store": s.chunks_from_store,
                "bytes_from_cache": s.bytes_from_cache,
                "bytes_from_store": s.bytes_from_store,
                "seconds": round(s.seconds, 3),
            }
        )
    else:
        rate = s.bytes_written / s.seconds if s.seconds > 0 else 0.0
        info(
            args,
            f"got {s.files} files, {format_size(s.bytes_written)} in {s.seconds:.1f}s "
            f"({format_size(rate)}/s): {format_size(s.bytes_from_store)} from the store, "
            f"{format_size(s.bytes_from_cache)} from the cache",
        )
    return 0
