"""`cas ls ID|REF [PATH]`: list what a manifest holds."""

from __future__ import annotations

import argparse
import stat
import sys

from cas.get.browse import Located, lookup, walk
from cas.objects import DirEntry, FileEntry, SymlinkEntry
from cas.repo import Repository
from cas_cli.common import emit_json, run_with_repo


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the `ls` command."""
    p = sub.add_parser(
        "ls",
        parents=[common],
        help="list the files of a manifest",
        description="List entries under PATH (default: everything), recursively: "
        "mode, size, chunk count and path.",
    )
    p.add_argument("manifest", metavar="ID|REF", help="manifest id or ref name")
    p.add_argument("path", nargs="?", default="", metavar="PATH", help="directory or file inside")
    p.set_defaults(run=run)


def _row(located: Located) -> dict[str, object]:
    entry = located.entry
    row: dict[str, object] = {"path": located.path, "kind": entry.kind, "mtime_ns": entry.mtime_ns}
    if isinstance(entry, FileEntry):
        row.update(
            mode=entry.mode,
            size=entry.size,
            chunks=len(entry.chunks),
            inline=entry.inline is not None,
            digest=str(entry.digest),
        )
    elif isinstance(entry, DirEntry):
        row.update(mode=entry.mode, tree=str(entry.tree))
    elif isinstance(entry, SymlinkEntry):
        row.update(target=entry.target)
    return row


def _line(located: Located) -> str:
    entry = located.entry
    if isinstance(entry, FileEntry):
        mode = stat.filemode(stat.S_IFREG | entry.mode)
        return f"{mode} {entry.size:>14} {len(entry.chunks):>6}  {located.path}"
    if isinstance(entry, DirEntry):
        return f"{stat.filemode(stat.S_IFDIR | entry.mode)} {'-':>14} {'-':>6}  {located.path}/"
    assert isinstance(entry, SymlinkEntry)
    return f"{'lrwxrwxrwx'} {'-':>14} {'-':>6}  {located.path} -> {entry.target}"


def run(args: argparse.Namespace) -> int:
    """Execute `cas ls`."""

    async def action(repo: Repository) -> list[Located]:
        manifest = await repo.get_manifest(await repo.resolve(args.manifest))
        found = await lookup(repo, manifest, args.path)
        if found is not None and not isinstance(found.entry, DirEntry):
            return [found]
        out = []
        if found is None:
            async for located in walk(repo, manifest):
                out.append(located)
        else:
            assert isinstance(found.entry, DirEntry)
            start = (*found.parts, found.entry.name)
            async for located in walk(repo, manifest, found.entry.tree, start):
                out.append(located)
        return sorted(out, key=lambda item: item.path.encode("utf-8", "surrogateescape"))

    entries = run_with_repo(args, action)
    if args.json:
        emit_json([_row(e) for e in entries])
    else:
        write = sys.stdout.write
        for located in entries:
            write(_line(located) + "\n")
    return 0
