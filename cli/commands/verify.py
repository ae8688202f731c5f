"""`cas verify ID|REF...|--all`: read back what manifests reach and report damage."""

from __future__ import annotations

import argparse

from cas.errors import IntegrityError, ObjectNotFound, UsageError
from cas.gc.repair import RepairReport, repair
from cas.gc.verify import Checker, VerifyReport
from cas.ids import ObjectId
from cas.repo import DEFAULT_MAX_CHUNK, Repository
from cas.store.base import Kind
from cas.store.listing import list_concurrently
from cas_cli.common import emit_json, info, run_with_repo


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the `verify` command."""
    p = sub.add_parser(
        "verify",
        parents=[common],
        help="check that manifests can be read in full; report missing and corrupt objects",
        description="Fetch every tree and chunk the manifests reach, decompress and hash each, "
        "and report missing or corrupt objects with the manifests they break. Exit code 4 "
        "when anything is corrupt, 3 when objects are only missing. With --repair, corrupt "
        "objects are then removed (intact frames of a damaged pack move to a new pack) so that "
        "the next put of a source holding them stores them again, and manifests missing "
        "objects get a new index where other puts stored copies; the exit code still says "
        "what was found.",
    )
    p.add_argument("manifests", nargs="*", metavar="ID|REF", help="manifest ids or ref names")
    p.add_argument(
        "--all",
        action="store_true",
        help="every manifest in the store, then every other stored tree and chunk",
    )
    p.add_argument(
        "--sample",
        metavar="FRACTION",
        type=_fraction,
        default=1.0,
        help="read only this random fraction of chunks (0 < FRACTION <= 1; trees always)",
    )
    p.add_argument(
        "--repair",
        action="store_true",
        help="delete what is corrupt (needs the admin scope) so the next put stores it again; "
        "heal manifests from copies that other puts stored",
    )
    p.set_defaults(run=run)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    """Execute `cas verify`."""
    if bool(args.manifests) == bool(args.all):
        raise UsageError("give manifest ids or refs, or --all (not both)")

    names: dict[ObjectId, list[str]] = {}
    repaired: list[RepairReport] = []

    async def action(repo: Repository) -> VerifyReport:
        async for ref in repo.store.list_refs(""):
            names.setdefault(ref.target, []).append(ref.name)
        checker = Checker(repo, sample=args.sample)
        try:
            if args.all:
                async for listed in list_concurrently(repo.store, Kind.MANIFEST, 16):
                    for info in listed:
                        await checker.check_manifest(info.id)
                await checker.check_orphans(DEFAULT_MAX_CHUNK)
            else:
                for name in args.manifests:
                    await checker.check_manifest(await repo.resolve(name))
            if args.repair:
                repaired.append(await repair(repo, checker.report))
            return checker.report
        finally:
            checker.close()

    report = run_with_repo(args, action, use_cache=False)
    problems = sorted(report.broken.items(), key=lambda item: (item[0].kind, str(item[0].id)))
    if args.json:
        emit_json(
            {
                "ok": report.ok,
                "manifests": report.manifests,
                "trees": report.trees,
                "chunks_checked": report.chunks_checked,
                "bytes_checked": report.bytes_checked,
                "problems": [
                    {
                        "kind": p.kind.value,
                        "id": str(p.id),
                        "problem": p.detail,
                        "breaks": [str(m) for m in manifests],
                        "breaks_refs": sorted(n for m in manifests for n in names.get(m, [])),
                    }
                    for p, manifests in problems
                ],
                **({"repair": _repair_json(repaired[0])} if repaired else {}),
            }
        )
    else:
        for problem, manifests in problems:
            breaks = ", ".join(_named(m, names) for m in manifests) or "no manifest"
            print(f"{problem.kind} {problem.id}: {problem.detail}; breaks {breaks}")
        info(
            args,
            f"verified {report.manifests} manifests, {report.trees} trees, "
            f"{report.chunks_checked} chunks: "
            + ("all intact" if report.ok else f"{len(problems)} objects missing or corrupt"),
        )
        if repaired:
            _say_repaired(args, repaired[0], report)
    if report.ok:
        return 0
    corrupt = any(p.detail.startswith("corrupt") for p, _ in problems)
    return IntegrityError.exit_code if corrupt else ObjectNotFound.exit_code


def _repair_json(done: RepairReport) -> dict[str, object]:
    return {
        "packs_replaced": [str(p) for p in done.packs_replaced],
        "frames_copied": done.frames_copied,
        "frames_dropped": done.frames_dropped,
        "packs_written": done.packs_written,
        "bytes_written": done.bytes_written,
        "indexes_rewritten": done.indexes_rewritten,
        "indexes_deleted": [str(i) for i in done.indexes_deleted],
        "manifests_deleted": [str(m) for m in done.manifests_deleted],
        "healed": [str(m) for m in done.healed],
    }


def _say_repaired(args: argparse.Namespace, done: RepairReport, report: VerifyReport) -> None:
    if not done.changed:
        info(args, "repair: nothing to remove or heal (a put of the lost content comes first)")
        return
    info(
        args,
        f"repair: replaced {len(done.packs_replaced)} damaged packs "
        f"({done.frames_copied} intact objects moved, {done.frames_dropped} corrupt dropped), "
        f"rewrote {done.indexes_rewritten} indexes, deleted {len(done.indexes_deleted)} corrupt "
        f"indexes and {len(done.manifests_deleted)} corrupt manifests, "
        f"healed {len(done.healed)} manifests from copies stored elsewhere",
    )
    left = {m for ms in report.broken.values() for m in ms} - set(done.healed)
    if left:
        info(
            args,
            f"repair: {len(left)} manifests stay incomplete until their lost content is put "
            "again (`cas put DIR`), then `cas verify --repair` heals them",
        )


def _named(manifest: ObjectId, names: dict[ObjectId, list[str]]) -> str:
    """A manifest id with the refs that point at it, which is how users know it."""
    refs = names.get(manifest)
    return f"{manifest} ({', '.join(sorted(refs))})" if refs else str(manifest)
