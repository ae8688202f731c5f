"""`cas mount ID|REF[:PATH] DIR`: a lazy, verified, read-only view of a manifest."""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from cas.errors import CasError, UsageError
from cas.mount.session import (
    FUSE_MISSING,
    MountOptions,
    MountStats,
    check_allow_other,
    open_manifest,
    preload_fuse,
    serve,
    subtree,
)
from cas.repo import Repository
from cas.sizes import format_size, parse_duration, parse_size
from cas_cli.common import add_cache_options, emit_json, info, run_with_repo, split_target


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the `mount` command."""
    p = sub.add_parser(
        "mount",
        parents=[common],
        help="mount a manifest read-only; files are fetched when first read",
        description="Mount the tree of a manifest (id or ref; ID:PATH for one directory of "
        "it) at DIR, read-only, in the foreground until SIGINT/SIGTERM or `fusermount3 -u "
        "DIR`. Listing and stat need only trees; file contents are fetched chunk by chunk on "
        "first read, through the local chunk cache, and every chunk is verified before a "
        "byte of it is returned: a corrupt or missing chunk is an I/O error (EIO) and one "
        "log line, never wrong bytes. See `cas docs mount`.",
    )
    p.add_argument("manifest", metavar="ID|REF[:PATH]", help="manifest id or ref name")
    p.add_argument("dir", metavar="DIR", help="mount point (created if missing)")
    p.add_argument(
        "--timeout",
        default="60s",
        metavar="DURATION",
        help="a store read that takes longer fails with EIO (default 60s)",
    )
    p.add_argument(
        "--readahead",
        default="8M",
        metavar="SIZE",
        help="bytes of a file fetched ahead of sequential reads (default 8M); 0 also stops "
        "fetching a directory's small files together and reading ahead the next files of a "
        "walk of the tree",
    )
    p.add_argument(
        "--memory",
        default="16M",
        metavar="SIZE",
        help="decoded chunks kept in memory (default 16M; trees have their own 32M)",
    )
    p.add_argument(
        "--record",
        metavar="FILE",
        help="append the path of each file opened, in first-open order, to FILE (an access "
        "trace for a later --prefetch)",
    )
    p.add_argument(
        "--prefetch",
        metavar="FILE|all",
        help="fetch into the chunk cache, in the background, the files listed in FILE (one "
        "path per line, e.g. a --record trace) or all files",
    )
    p.add_argument(
        "--allow-other",
        action="store_true",
        help="let users other than the one mounting read the tree (a job in a container "
        "under another uid); the kernel still checks each file's mode bits, the files being "
        "owned by the mounting user. Unless root, needs 'user_allow_other' in /etc/fuse.conf",
    )
    p.add_argument(
        "--daemon",
        action="store_true",
        help="return once the mount is up (exit 0) and serve it in the background; "
        "`fusermount3 -u DIR` or a SIGTERM to it stops it",
    )
    p.add_argument(
        "--log",
        metavar="FILE",
        help="with --daemon: append its messages (and its --json summary) to FILE",
    )
    add_cache_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Execute `cas mount`."""
    if importlib.util.find_spec("pyfuse3") is None:
        raise UsageError(FUSE_MISSING)
    if args.daemon:
        return daemonize(args)
    preload_fuse()
    name, subpath = split_target(args.manifest)
    options = MountOptions(
        timeout=parse_duration(args.timeout, "--timeout"),
        readahead=parse_size(args.readahead, "--readahead"),
        chunk_memory=parse_size(args.memory, "--memory"),
        record=args.record,
        prefetch=args.prefetch,
        allow_other=args.allow_other,
    )
    if options.timeout <= 0:
        raise UsageError("--timeout must be positive")
    if options.allow_other:
        check_allow_other()

    async def action(repo: Repository) -> MountStats:
        manifest_id = await repo.resolve(name)
        manifest = await open_manifest(repo, manifest_id)
        root = await subtree(repo, manifest, subpath)

        def ready() -> None:
            info(
                args,
                f"mounted {manifest_id}{':' + subpath if subpath else ''} at {args.dir} "
                f"(read-only; SIGINT, SIGTERM or fusermount3 -u {args.dir} unmounts)",
            )

        return await serve(
            repo,
            manifest_id,
            manifest,
            root,
            args.dir,
            options,
            fsname=f"cas:{str(manifest_id)[:12]}",
            on_ready=ready,
        )

    stats = run_with_repo(args, action)
    if args.json:
        emit_json(stats_json(stats))
    else:
        info(args, summary(stats, args.dir))
    return 0


def stats_json(s: MountStats) -> dict[str, Any]:
    """The `--json` document printed when the mount ends."""
    return {
        "trees_fetched": s.trees_fetched,
        "chunks_from_store": s.chunks_from_store,
        "chunks_from_cache": s.chunks_from_cache,
        "bytes_from_store": s.bytes_from_store,
        "bytes_from_cache": s.bytes_from_cache,
        "reads": s.reads,
        "index_reloads": s.index_reloads,
        "errors": s.errors,
        "recorded": s.recorded,
        "walks": s.walks,
        "prefetched": None
        if s.prefetched is None
        else {
            "files": s.prefetched.files,
            "chunks": s.prefetched.chunks,
            "bytes": s.prefetched.bytes,
            "failed_batches": s.prefetched.failed,
            "done": s.prefetched.done,
        },
        "seconds": round(s.seconds, 3),
    }


def summary(s: MountStats, where: str) -> str:
    """The one line a mount ends with."""
    return (
        f"unmounted {where} after {s.seconds:.1f} s: {s.trees_fetched} trees, "
        f"{s.chunks_from_store} chunks from the store ({format_size(s.bytes_from_store)} "
        f"compressed), {s.chunks_from_cache} from the cache, {s.errors} I/O errors"
    )


def child_command(args: argparse.Namespace) -> list[str]:
    """The same mount, in the foreground: what `--daemon` runs in the background."""
    command = [sys.executable, "-m", "cas", "mount", args.manifest, os.path.abspath(args.dir)]
    if args.store:
        command += ["--store", args.store]
    command += ["--timeout", args.timeout, "--readahead", args.readahead, "--memory", args.memory]
    for flag, value in (("--record", args.record), ("--prefetch", args.prefetch)):
        if value:
            command += [flag, value if value == "all" else os.path.abspath(value)]
    flags = {"--cache": args.cache, "--no-cache": args.no_cache, "--json": args.json}
    flags["--allow-other"] = args.allow_other
    flags |= {"-q": args.quiet, "-v": getattr(args, "verbose", False)}
    flags["--debug"] = getattr(args, "debug", False)
    return command + [flag for flag, on in flags.items() if on]


def daemonize(args: argparse.Namespace) -> int:
    """Start the mount in a new session, wait until the kernel shows it, and return."""
    log_path = os.path.abspath(args.log) if args.log else None
    with tempfile.TemporaryFile() if log_path is None else open(log_path, "a+b") as log_file:
        child = subprocess.Popen(
            child_command(args),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60 + parse_duration(args.timeout, "--timeout")
        while not os.path.ismount(args.dir):
            code = child.poll()
            if code is not None or time.monotonic() > deadline:
                if code is None:
                    child.terminate()
                    code = child.wait()
                log_file.seek(0)
                lines = log_file.read().decode(errors="replace").strip().splitlines()
                error = CasError(
                    f"the background mount exited with {code} before mounting"
                    + (f" ({lines[-1]})" if lines else "")
                )
                error.exit_code = code if code > 0 else 1  # the mount's own reason
                raise error
            time.sleep(0.02)
    info(args, f"mounted {args.manifest} at {args.dir} in the background (pid {child.pid})")
    return 0
