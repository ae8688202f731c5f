"""`cas reindex ID|REF`: write a manifest's index again from the packs alone."""

from __future__ import annotations

import argparse

from cas.gc.reindex import reindex
from cas.repo import Repository
from cas_cli.common import emit_json, info, run_with_repo


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the `reindex` command."""
    p = sub.add_parser(
        "reindex",
        parents=[common],
        help="rebuild a manifest's index from the packs (its index lost or damaged)",
        description="Find every tree and chunk of the manifest in the packs' own trailers "
        "(reading each pack's trailer: a listing of every pack) and store a new index of "
        "it. Needs only create rights; `cas verify` afterwards reads it all back.",
    )
    p.add_argument("manifest", metavar="ID|REF", help="manifest id or ref name")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Execute `cas reindex`."""

    async def action(repo: Repository) -> tuple[str, int, int, int, bool]:
        name, index, created = await reindex(repo, await repo.resolve(args.manifest))
        return str(name), len(index.trees), len(index.chunks), len(index.packs()), created

    name, trees, chunks, packs, created = run_with_repo(args, action)
    if args.json:
        emit_json({"index": name, "trees": trees, "chunks": chunks, "packs": packs, "new": created})
    else:
        print(name)
        info(
            args,
            f"index of {trees} trees and {chunks} chunks in {packs} packs "
            + ("stored" if created else "was already stored"),
        )
    return 0
