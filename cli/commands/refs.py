"""`cas refs [PREFIX]` lists refs; `cas ref rm NAME` removes one (needs delete rights)."""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC

from cas.errors import CasError, ObjectNotFound
from cas.repo import Repository
from cas.sizes import format_size
from cas.store.base import RefInfo, validate_ref_name
from cas_cli.common import emit_json, info, refuse_json, run_with_repo


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the `refs` and `ref` commands."""
    p = sub.add_parser(
        "refs",
        parents=[common],
        help="list refs with their target, creation time and size",
        description="List refs whose name starts with PREFIX: name, manifest id, creation "
        "time and the size of the tree the manifest describes.",
    )
    p.add_argument("prefix", nargs="?", default="", metavar="PREFIX")
    p.set_defaults(run=run_list)
    r = sub.add_parser("ref", help="manage one ref (rm)")
    action = r.add_subparsers(dest="ref_action", metavar="ACTION", required=True)
    rm = action.add_parser("rm", parents=[common], help="remove a ref (its data goes at next gc)")
    rm.add_argument("name", metavar="NAME")
    r.set_defaults(run=run_rm)


async def _size(repo: Repository, ref: RefInfo, limit: asyncio.Semaphore) -> int | None:
    async with limit:
        try:
            return (await repo.get_manifest(ref.target)).totals.bytes
        except CasError:
            return None  # missing or damaged: shown as such, `cas verify` says more


def run_list(args: argparse.Namespace) -> int:
    """Execute `cas refs`."""

    async def action(repo: Repository) -> list[tuple[RefInfo, int | None]]:
        refs = [r async for r in repo.store.list_refs(args.prefix)]
        limit = asyncio.Semaphore(max(1, repo.store.capabilities.max_concurrency))
        sizes = await asyncio.gather(*(_size(repo, r, limit) for r in refs))
        return list(zip(refs, sizes, strict=True))

    rows = run_with_repo(args, action, use_cache=False)
    if args.json:
        emit_json(
            [
                {
                    "name": ref.name,
                    "target": str(ref.target),
                    "created": ref.mtime.isoformat(timespec="seconds"),
                    "bytes": size,
                }
                for ref, size in rows
            ]
        )
    else:
        for ref, size in rows:
            shown = format_size(size) if size is not None else "manifest missing"
            created = ref.mtime.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            print(f"{ref.name}\t{ref.target}\t{created}\t{shown}")
    return 0


def run_rm(args: argparse.Namespace) -> int:
    """Execute `cas ref rm`."""
    refuse_json(args, "cas ref rm", "it prints nothing on success (exit code 0)")
    name = validate_ref_name(args.name)

    async def action(repo: Repository) -> None:
        try:
            await repo.store.read_ref(name)
        except ObjectNotFound:
            raise ObjectNotFound(f"no ref named {name!r}") from None
        await repo.store.delete_ref(name)

    run_with_repo(args, action, use_cache=False)
    info(args, f"removed ref {name}")
    return 0
