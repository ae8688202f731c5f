"""`cas put DIR`: store a directory, print its manifest id."""

from __future__ import annotations

import argparse
import time

from cas import codec
from cas.chunking import ChunkParams
from cas.errors import IncompletePut, UsageError
from cas.objects import parse_label
from cas.pack import TARGET_PACK_BYTES
from cas.put.listing import Excludes
from cas.put.uploader import PutOptions, PutResult, check_source
from cas.session import Session
from cas.sizes import format_size, parse_size
from cas_cli.common import BarProgress, add_progress_option, emit_json, info, run_with_session


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the `put` command."""
    p = sub.add_parser(
        "put",
        parents=[common],
        help="store a directory and print its manifest id",
        description="Store DIR: upload only the chunks the store lacks, then print the "
        "manifest id (64 hex characters) on stdout.",
    )
    p.add_argument("source", metavar="DIR", help="directory to store")
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="gitignore-style pattern to leave out (repeatable), e.g. '*.o'",
    )
    p.add_argument(
        "--exclude-from",
        action="append",
        default=[],
        metavar="FILE",
        help="read exclude patterns from FILE, one per line (repeatable)",
    )
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="record a label in the manifest, e.g. commit=abc123 (repeatable)",
    )
    p.add_argument("--ref", metavar="NAME", help="also create the ref NAME (create-only)")
    p.add_argument(
        "--parent",
        metavar="REF|ID",
        help="reuse what this manifest stored instead of uploading it again (default: the "
        "newest ref beside --ref, e.g. ci/main/41 for --ref ci/main/42, and the manifest "
        "this directory was last put as from this machine)",
    )
    p.add_argument(
        "--level",
        type=int,
        default=codec.DEFAULT_LEVEL,
        help=f"zstd level {codec.MIN_LEVEL}-{codec.MAX_LEVEL} (default %(default)s)",
    )
    p.add_argument(
        "--chunk-size",
        metavar="SIZE",
        default=None,
        help="average chunk size, 64K-4M (default 512K; min = avg/4, max = avg*4)",
    )
    p.add_argument(
        "--pack-size",
        metavar="SIZE",
        default=None,
        help="seal packs at this many stored bytes (default 64M; 64K-64M): bigger packs, "
        "fewer store writes",
    )
    p.add_argument(
        "--no-mtimes", action="store_true", help="leave modification times out of the trees"
    )
    p.add_argument(
        "--reproducible",
        action="store_true",
        help="same tree, same manifest id anywhere: implies --no-mtimes and "
        "leaves out the creation time and tool version",
    )
    p.add_argument("--workers", type=int, default=None, help="reader threads (default: CPUs)")
    p.add_argument(
        "--no-files-cache",
        action="store_true",
        help="read every file and ask the store about every object, even those "
        "unchanged since the last put",
    )
    p.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="leave out files and directories that cannot be read, with a warning each; the "
        "manifest is stored and the exit code is 12 (by default one unreadable file fails the "
        "put: a build output should be complete)",
    )
    add_progress_option(p)
    p.set_defaults(run=run)


CHUNK_SIZE_MIN = 64 << 10
CHUNK_SIZE_MAX = 4 << 20


def run(args: argparse.Namespace) -> int:
    """Execute `cas put`."""
    check_source(args.source)  # before the store is opened: a typo creates nothing
    params = ChunkParams()
    if args.chunk_size:
        avg = parse_size(args.chunk_size, "--chunk-size")
        if not CHUNK_SIZE_MIN <= avg <= CHUNK_SIZE_MAX:
            # Smaller chunks multiply objects and index entries; larger ones defeat dedup.
            raise UsageError(f"--chunk-size {args.chunk_size}: must be 64K..4M")
        try:
            params = ChunkParams.from_avg(avg)
        except UsageError as exc:
            raise UsageError(f"--chunk-size {args.chunk_size}: {exc}") from None
    options = PutOptions(
        params=params,
        level=args.level,
        excludes=Excludes.from_options(args.exclude, args.exclude_from),
        labels=dict(parse_label(label) for label in args.label),
        mtimes=not (args.no_mtimes or args.reproducible),
        reproducible=args.reproducible,
        ref=args.ref,
        parent=args.parent,
        skip_unreadable=args.skip_unreadable,
        pack_size=parse_size(args.pack_size, "--pack-size")
        if args.pack_size
        else TARGET_PACK_BYTES,
        workers=max(1, args.workers) if args.workers else PutOptions.workers,
    )
    progress = BarProgress(args, "put")

    created: list[str] = []  # told after a successful put (an error stays one line)

    async def action(session: Session) -> PutResult:
        if session.store.created:
            created.append(session.store.url)
        return await session.put(args.source, options, progress)

    t0 = time.monotonic()
    try:
        result = run_with_session(args, action, create=True, use_cache=False, level=args.level)
    finally:
        progress.close()
    seconds = time.monotonic() - t0
    s = result.stats
    if args.json:
        emit_json(
            {
                "manifest": str(result.manifest_id),
                "ref": args.ref,
                "files": s.files,
                "dirs": s.dirs,
                "symlinks": s.symlinks,
                "bytes": s.bytes_read + s.bytes_unchanged,
                "bytes_read": s.bytes_read,
                "files_unchanged": s.files_unchanged,
                "parents": s.parents,
                "packs": s.packs,
                "chunks": s.chunks,
                "chunks_new": s.chunks_new,
                "bytes_new": s.bytes_new_raw,
                "bytes_uploaded": s.bytes_uploaded,
                "gc_waits": s.gc_waits,
                "skipped": [{"path": p, "reason": r} for p, r in s.skipped],
                "unreadable": [{"path": p, "reason": r} for p, r in s.unreadable],
                "seconds": round(seconds, 3),
                "created_store": bool(created),
            }
        )
    else:
        print(result.manifest_id)
        total = s.bytes_read + s.bytes_unchanged
        rate = total / seconds if seconds > 0 else 0.0
        info(
            args,
            f"put {s.files} files, {format_size(total)} in {seconds:.1f}s "
            f"({format_size(rate)}/s): {s.files_unchanged} unchanged files not read, "
            f"{s.chunks_new}/{s.chunks} chunks new, {format_size(s.bytes_uploaded)} uploaded "
            f"in {s.packs} packs"
            + (f", reusing {len(s.parents)} earlier puts" if s.parents else "")
            + (f"; created a new store at {created[0]}" if created else ""),
        )
    if s.unreadable:
        raise IncompletePut(
            f"{len(s.unreadable)} unreadable files or directories were left out "
            f"(--skip-unreadable), first {s.unreadable[0][0]}; manifest {result.manifest_id} "
            "is stored without them"
        )
    return 0
