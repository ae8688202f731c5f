"""`cas cat ID|REF PATH`: write one stored file to stdout."""

from __future__ import annotations

import argparse
import sys

from cas.errors import UsageError
from cas.get.browse import lookup, stream_file
from cas.objects import FileEntry
from cas.repo import Repository
from cas_cli.common import add_cache_options, refuse_json, run_with_repo


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the `cat` command."""
    p = sub.add_parser(
        "cat",
        parents=[common],
        help="write one file of a manifest to stdout",
        description="Stream the file at PATH inside a manifest to stdout, verified chunk by chunk.",
    )
    p.add_argument("manifest", metavar="ID|REF", help="manifest id or ref name")
    p.add_argument("path", metavar="PATH", help="file path inside the manifest")
    add_cache_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Execute `cas cat`."""
    refuse_json(args, "cas cat", "it writes the file's bytes to stdout")
    out = sys.stdout.buffer

    async def action(repo: Repository) -> None:
        manifest = await repo.get_manifest(await repo.resolve(args.manifest))
        found = await lookup(repo, manifest, args.path)
        if found is None or not isinstance(found.entry, FileEntry):
            raise UsageError(f"{args.path!r} is not a file in the manifest")

        async def sink(data: bytes) -> None:
            out.write(data)

        await stream_file(repo, found.entry, manifest.chunker.max_size, sink, where=found.path)

    run_with_repo(args, action)
    out.flush()
    return 0
