"""`cas gc`: delete what no kept ref and no recent manifest reaches."""

from __future__ import annotations

import argparse

from cas.errors import UsageError
from cas.gc.collector import (
    DEFAULT_GRACE,
    DEFAULT_LEASE,
    REPACK_BELOW,
    GcOptions,
    GcReport,
    collect,
)
from cas.gc.records import MAX_LEASE_SECONDS
from cas.gc.retention import rules_from_options
from cas.repo import Repository
from cas.sizes import format_duration, format_size, parse_duration
from cas_cli.common import emit_json, info, run_with_repo


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the `gc` command."""
    p = sub.add_parser(
        "gc",
        parents=[common],
        help="delete objects no kept ref or recent manifest reaches (needs delete rights)",
        description="Keep every ref (minus those the rules expire) and every manifest younger "
        "than the grace period, with all they reach; delete the rest once it is older than the "
        "grace period. Safe while puts run (the protocol: cas docs gc).",
    )
    p.add_argument(
        "--grace",
        metavar="AGE",
        default=format_duration(DEFAULT_GRACE),
        help="never delete objects younger than AGE, and keep unnamed manifests younger than "
        "AGE (default %(default)s; 0s only for a store nobody else writes to)",
    )
    p.add_argument(
        "--expire",
        action="append",
        default=[],
        metavar="PATTERN",
        help="drop refs matching PATTERN (glob; * also matches /) older than --older-than",
    )
    p.add_argument(
        "--older-than",
        action="append",
        default=[],
        metavar="AGE",
        help="age for --expire: one for all patterns, or one per --expire (e.g. 7d, 36h)",
    )
    p.add_argument(
        "--keep-last",
        nargs=2,
        action="append",
        default=[],
        metavar=("N", "PATTERN"),
        help="of the refs matching PATTERN, keep only the N newest",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="report what would be deleted; change nothing"
    )
    p.add_argument(
        "--lease",
        metavar="AGE",
        default=format_duration(DEFAULT_LEASE),
        help="heartbeat lease (default %(default)s): puts wait at most this long for a "
        "collection that died",
    )
    p.add_argument(
        "--repack-below",
        metavar="FRACTION",
        type=float,
        default=REPACK_BELOW,
        help="copy the live chunks out of kept packs less than this fraction live "
        "(default %(default)s; 0 never repacks)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Execute `cas gc`."""
    lease = parse_duration(args.lease, "--lease")
    if not 0.4 <= lease <= MAX_LEASE_SECONDS:
        raise UsageError("--lease must be between 0.4s and 1h")
    options = GcOptions(
        retention=rules_from_options(
            args.expire,
            [parse_duration(a, "--older-than") for a in args.older_than],
            [tuple(pair) for pair in args.keep_last],
        ),
        grace=parse_duration(args.grace, "--grace"),
        lease=lease,
        dry_run=args.dry_run,
        repack_below=args.repack_below,
    )
    if not 0 <= options.repack_below <= 1:
        raise UsageError("--repack-below must be between 0 and 1")

    async def action(repo: Repository) -> GcReport:
        return await collect(repo, options)

    report = run_with_repo(args, action, use_cache=False)
    verb = "would delete" if report.dry_run else "deleted"
    if args.json:
        emit_json(
            {
                "dry_run": report.dry_run,
                "refs_expired": [r.name for r in report.refs_expired],
                "roots": report.roots,
                "deleted": {k.value: vars(c) for k, c in report.deleted.items()},
                "kept_young": {k.value: vars(c) for k, c in report.kept_young.items()},
                "kept_reachable": {k.value: vars(c) for k, c in report.kept_reachable.items()},
                "bytes_reclaimed": report.bytes_reclaimed,
                "sweep_skipped": report.sweep_skipped,
                "repacked": vars(report.repacked),
                "repack_written": vars(report.repack_written),
                "indexes_rewritten": report.indexes_rewritten,
                "unreadable": [
                    {"kind": k.value, "id": str(i), "problem": p} for k, i, p in report.unreadable
                ],
            }
        )
    else:
        for ref in report.refs_expired:
            print(f"{verb} ref {ref.name} -> {ref.target}")
        for kind, object_id, problem in report.unreadable:
            print(f"cas: warning: reachable {kind} {object_id} is {problem}", flush=True)
        if report.sweep_skipped:
            print(
                "cas: warning: trees and chunks were kept because a reachable tree is "
                "unreadable; `cas verify --all` names the manifests, re-put or `cas ref rm` them",
                flush=True,
            )
        parts = ", ".join(f"{c.objects} {k.value}s" for k, c in report.deleted.items())
        info(
            args,
            f"gc {verb} {parts} ({format_size(report.bytes_reclaimed)}) from {report.roots} "
            f"roots; kept {sum(c.objects for c in report.kept_reachable.values())} reachable "
            f"and {sum(c.objects for c in report.kept_young.values())} younger than the grace "
            "period",
        )
    return 0
