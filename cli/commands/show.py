"""`cas show ID|REF` describes one manifest; `cas manifests` lists them, newest first."""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cas.errors import CasError, UsageError
from cas.ids import ObjectId
from cas.objects import Manifest, parse_label
from cas.repo import Repository
from cas.sizes import format_size
from cas.store.base import Kind, RefInfo
from cas_cli.common import emit_json, run_with_repo


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the `show` and `manifests` commands."""
    p = sub.add_parser(
        "show",
        parents=[common],
        help="describe one manifest: labels, creation, totals, refs",
        description="Show what a manifest records (labels, creation time, tool version, "
        "totals, chunking, excludes) and the refs that point at it.",
    )
    p.add_argument("manifest", metavar="ID|REF", help="manifest id, unique id prefix or ref")
    p.set_defaults(run=run_show)
    m = sub.add_parser(
        "manifests",
        parents=[common],
        help="list stored manifests, newest first, with their refs and labels",
        description="List every manifest of the store, named or not, newest first: id, "
        "creation time, size, refs and labels. Filters combine (all must match).",
    )
    m.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only manifests with this label (repeatable)",
    )
    m.add_argument(
        "--ref-prefix",
        metavar="PREFIX",
        help="only manifests a ref starting with PREFIX points at, e.g. ci/main/",
    )
    m.add_argument("--last", type=int, metavar="N", help="only the newest N")
    m.set_defaults(run=run_list)


@dataclass(frozen=True)
class _Described:
    id: ObjectId
    manifest: Manifest | None
    """None when it cannot be read (missing or damaged; `cas verify` says more)."""
    stored: datetime
    refs: tuple[str, ...]

    @property
    def when(self) -> str:
        if self.manifest is not None and self.manifest.created is not None:
            return self.manifest.created
        return self.stored.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": str(self.id), "refs": list(self.refs), "stored": self.when}
        m = self.manifest
        if m is None:
            out["error"] = "cannot be read"
            return out
        out.update(
            created=m.created,
            tool=m.tool,
            labels=dict(m.labels),
            totals=m.totals.to_dict(),
            chunker=m.chunker.to_dict(),
            excludes=list(m.excludes),
            mtimes=m.mtimes,
            root=str(m.root),
        )
        return out


async def _refs_by_target(repo: Repository, prefix: str = "") -> dict[ObjectId, list[RefInfo]]:
    found: dict[ObjectId, list[RefInfo]] = {}
    async for ref in repo.store.list_refs(prefix):
        found.setdefault(ref.target, []).append(ref)
    return found


async def _read(repo: Repository, manifest_id: ObjectId) -> Manifest | None:
    try:
        return await repo.get_manifest(manifest_id)
    except CasError:
        return None


def run_show(args: argparse.Namespace) -> int:
    """Execute `cas show`."""

    async def action(repo: Repository) -> _Described:
        manifest_id = await repo.resolve(args.manifest)
        manifest = await repo.get_manifest(manifest_id)
        info = await repo.store.stat(Kind.MANIFEST, manifest_id)
        refs = (await _refs_by_target(repo)).get(manifest_id, [])
        return _Described(manifest_id, manifest, info.mtime, tuple(r.name for r in refs))

    shown = run_with_repo(args, action, use_cache=False)
    if args.json:
        emit_json(shown.to_json())
        return 0
    m = shown.manifest
    assert m is not None
    t = m.totals
    lines = [
        ("manifest", str(shown.id)),
        ("created", m.created or f"{shown.when} (stored; not recorded: --reproducible)"),
        ("tool", m.tool or "not recorded"),
        ("refs", ", ".join(shown.refs) or "none"),
        (
            "size",
            f"{format_size(t.bytes)} in {t.files} files, {t.dirs} directories, "
            f"{t.symlinks} symlinks; {t.chunks} chunks",
        ),
        ("chunking", ", ".join(f"{k}={v}" for k, v in m.chunker.to_dict().items())),
        ("mtimes", "recorded" if m.mtimes else "not recorded"),
        ("excludes", " ".join(m.excludes) or "none"),
        ("root tree", str(m.root)),
    ]
    lines += [(f"label {key}", value) for key, value in sorted(m.labels.items())]
    width = max(len(key) for key, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    """Execute `cas manifests`."""
    wanted = dict(parse_label(label) for label in args.label)
    if args.last is not None and args.last < 1:
        raise UsageError("--last must be at least 1")

    async def action(repo: Repository) -> list[_Described]:
        refs = await _refs_by_target(repo, args.ref_prefix or "")
        stored = {i.id: i.mtime async for i in repo.store.list(Kind.MANIFEST)}
        ids = [i for i in stored if args.ref_prefix is None or i in refs]
        limit = asyncio.Semaphore(max(1, repo.store.capabilities.max_concurrency))

        async def describe(manifest_id: ObjectId) -> _Described:
            async with limit:
                manifest = await _read(repo, manifest_id)
            names = tuple(sorted(r.name for r in refs.get(manifest_id, [])))
            return _Described(manifest_id, manifest, stored[manifest_id], names)

        found = await asyncio.gather(*(describe(i) for i in ids))
        return [d for d in found if _matches(d, wanted)]

    rows = sorted(run_with_repo(args, action, use_cache=False), key=lambda d: d.when, reverse=True)
    if args.last is not None:
        rows = rows[: args.last]
    if args.json:
        emit_json([d.to_json() for d in rows])
        return 0
    for d in rows:
        m = d.manifest
        size = format_size(m.totals.bytes) if m is not None else "cannot be read"
        labels = " ".join(f"{k}={v}" for k, v in sorted(m.labels.items())) if m is not None else ""
        print(f"{d.id}\t{d.when}\t{size}\t{','.join(d.refs) or '-'}\t{labels}")
    return 0


def _matches(d: _Described, wanted: dict[str, str]) -> bool:
    if not wanted:
        return True
    if d.manifest is None:
        return False
    return all(d.manifest.labels.get(k) == v for k, v in wanted.items())
