"""Mounting a manifest, serving it until unmounted or signalled, and unmounting cleanly.

Everything that can fail before the kernel sees the mount (the manifest,
its index, the root tree, the mount point) is checked first, so a typo is
an error with its exit code, never an empty mount. SIGINT, SIGTERM and
SIGHUP end the serving loop and unmount; `fusermount3 -u DIR` by anyone
allowed ends it the same way. A process killed with SIGKILL leaves a dead
mount ("Transport endpoint is not connected") that `fusermount3 -u DIR`
removes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from cas.errors import DestinationError, UsageError
from cas.get.browse import lookup, split_path
from cas.ids import ObjectId
from cas.mount.nodes import NodeTable
from cas.mount.prefetch import PrefetchStats, every_file, listed_files, prefetch
from cas.mount.reader import DEFAULT_CHUNK_BYTES, DEFAULT_READAHEAD, ChunkReader
from cas.mount.record import Recorder, read_trace
from cas.mount.relocation import Relocation
from cas.mount.trees import DEFAULT_TREE_BYTES, TreeSource
from cas.mount.walkahead import CACHED_BUDGET, WalkAhead
from cas.objects import DirEntry, Manifest
from cas.repo import Repository

FUSE_MISSING: Final = (
    "cas mount needs pyfuse3 and libfuse3: apt-get install fuse3 libfuse3-dev "
    "pkg-config, then pip install 'cas-store[mount]'"
)
_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
log = logging.getLogger("cas.mount")


@dataclass(frozen=True)
class MountOptions:
    """Bounds of one mount: memory caps, readahead, and how long a store may take."""

    timeout: float = 60.0
    """Seconds a store read may take before the request fails with EIO."""
    readahead: int = DEFAULT_READAHEAD
    chunk_memory: int = DEFAULT_CHUNK_BYTES
    tree_memory: int = DEFAULT_TREE_BYTES
    record: str | None = None
    """Append the path of each file opened first to this file (`--record`)."""
    prefetch: str | None = None
    """A list of paths (one per line), or "all": fetched in the background (`--prefetch`)."""
    allow_other: bool = False
    """Let other users in (FUSE's `allow_other`); the kernel still checks mode bits."""


@dataclass
class MountStats:
    """What a mount did, for its summary line and `--json`."""

    trees_fetched: int = 0
    chunks_from_store: int = 0
    chunks_from_cache: int = 0
    bytes_from_store: int = 0
    bytes_from_cache: int = 0
    reads: int = 0
    """Ranged reads of packs (trees and chunks)."""
    index_reloads: int = 0
    """Times a missing pack made the mount read the manifest's index again."""
    errors: int = 0
    """Requests answered EIO."""
    recorded: int = 0
    """Paths written to the `--record` trace."""
    walks: int = 0
    """Sequential walks of the tree recognised (their next files were read ahead)."""
    prefetched: PrefetchStats | None = None
    seconds: float = 0.0


def preload_fuse() -> None:
    """Import the FUSE binding in a thread: its imports overlap the first round trips.

    `serve` imports it again, which waits for this import to finish, or
    raises its error in the main thread.
    """
    from cas.mount import compat

    def load() -> None:
        with contextlib.suppress(ImportError):
            compat.import_binding()

    threading.Thread(target=load, name="cas-mount-import", daemon=True).start()


async def open_manifest(repo: Repository, manifest_id: ObjectId) -> Manifest:
    """The manifest, with its index read alongside (a mount needs both before anything)."""
    index = asyncio.ensure_future(repo.index(manifest_id))
    try:
        manifest = await repo.get_manifest(manifest_id)  # its errors come first
        await index
    finally:
        if not index.done():
            index.cancel()
        await asyncio.gather(index, return_exceptions=True)
    return manifest


async def subtree(repo: Repository, manifest: Manifest, path: str) -> ObjectId:
    """The tree of directory `path` of the manifest (`ID:PATH`), as `cas get` finds it."""
    if not split_path(path):
        return manifest.root
    found = await lookup(repo, manifest, path)
    if found is None:
        return manifest.root
    if not isinstance(found.entry, DirEntry):
        raise UsageError(f"{found.path!r} is not a directory of the manifest (use cas cat)")
    return found.entry.tree


_C_SPACE: Final = " \t\n\v\f\r"
_CONF_LINE_MAX: Final = 255
"""fusermount3 reads its configuration in lines of at most this many bytes (and a newline)."""


def check_allow_other(fuse_conf: str = "/etc/fuse.conf") -> None:
    """Refuse `--allow-other` before mounting where `fusermount3` would (no opt-in, not root).

    Read as fusermount3 reads it: only whole lines (ending in a newline, not
    longer than its buffer), a `#` starts a comment, C white space around.
    """
    if os.getuid() == 0:  # fusermount3 asks the real user id
        return
    try:
        with open(fuse_conf, "rb") as conf:
            lines = conf.read().split(b"\n")[:-1]  # the last piece has no newline
    except OSError:
        lines = []
    allowed = any(
        len(line) < _CONF_LINE_MAX
        and line.split(b"#")[0].strip(_C_SPACE.encode()) == b"user_allow_other"
        for line in lines
    )
    if not allowed:
        raise UsageError(
            f"--allow-other needs a line 'user_allow_other' in {fuse_conf} (or mounting as root)"
        )


def check_mountpoint(path: str) -> None:
    """An existing or new empty directory that is not already a mount point."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise DestinationError(f"cannot create mount point {path}: {exc.strerror}") from None
    if not os.path.isdir(path):
        raise DestinationError(f"mount point {path} is not a directory")
    if os.path.ismount(path):
        raise DestinationError(f"{path} is already a mount point (fusermount3 -u {path})")


async def serve(
    repo: Repository,
    manifest_id: ObjectId,
    manifest: Manifest,
    root: ObjectId,
    mountpoint: str,
    options: MountOptions,
    *,
    fsname: str,
    on_ready: Callable[[], None] | None = None,
) -> MountStats:
    """Mount `root` (of `manifest`) at `mountpoint`; answer the kernel until unmounted."""
    from cas.mount import compat

    try:
        pyfuse3 = compat.import_binding()
    except ImportError:  # the package is there but libfuse3 is not
        raise UsageError(FUSE_MISSING) from None
    from cas.mount.fs import CasOperations

    compat.enable()
    started = time.monotonic()
    max_chunk = manifest.chunker.max_size
    relocation = Relocation(repo, manifest_id, options.timeout)
    trees = TreeSource(repo, max_chunk, capacity=options.tree_memory, relocation=relocation)
    await trees.listing(root, ".")  # a broken root fails here, before anything is mounted
    reader = ChunkReader(
        repo,
        max_chunk,
        capacity=options.chunk_memory,
        readahead=options.readahead,
        relocation=relocation,
    )
    walk = None
    if options.readahead > 0 and repo.cache is not None:
        walk = WalkAhead(trees, reader.fetch_into_cache, CACHED_BUDGET, per_file=CACHED_BUDGET)
    elif options.readahead > 0:
        walk = WalkAhead(trees, reader.fetch_ahead, options.readahead // 2)
    nodes = NodeTable(root, time.time_ns())
    paths = read_trace(options.prefetch) if options.prefetch not in (None, "all") else None
    check_mountpoint(mountpoint)
    recorder = Recorder(options.record) if options.record else None
    ops = CasOperations(
        nodes,
        trees,
        reader,
        manifest.totals,
        on_open=recorder.opened if recorder is not None else None,
        walk=walk,
    )
    mount_options = set(pyfuse3.default_options) | {"ro", f"fsname={fsname}", "subtype=cas"}
    if options.allow_other:
        mount_options.add("allow_other")
    try:
        pyfuse3.init(ops, mountpoint, mount_options)
    except RuntimeError as exc:
        raise DestinationError(f"cannot mount at {mountpoint}: {exc}") from None
    loop = asyncio.get_running_loop()
    signalled: list[int] = []

    def stop(signum: int) -> None:
        signalled.append(signum)
        pyfuse3.terminate()

    for signum in _SIGNALS:
        loop.add_signal_handler(signum, stop, signum)
    prefetched = None
    background: list[asyncio.Future[Any]] = []
    try:
        if on_ready is not None:
            on_ready()
        warming = None
        if root == manifest.root and options.readahead > 0:  # a subtree's are not told apart
            index = await repo.index(manifest_id)
            warming = asyncio.ensure_future(trees.warm(index.trees))
            background.append(warming)
        if options.prefetch is not None:
            prefetched = PrefetchStats()
            files = (
                every_file(repo, manifest, root)
                if paths is None
                else listed_files(trees, root, paths, after=warming)
            )
            background.append(
                asyncio.ensure_future(
                    prefetch(repo, files, max_chunk, prefetched, timeout=options.timeout)
                )
            )
        await pyfuse3.main()
    finally:
        for signum in _SIGNALS:
            loop.remove_signal_handler(signum)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if walk is not None:
            await walk.close()
        await reader.close()
        await trees.close()
        pyfuse3.close(unmount=True)
        if recorder is not None:
            recorder.close()
    if signalled:
        log.info("unmounted %s on %s", mountpoint, signal.Signals(signalled[0]).name)
    return MountStats(
        trees_fetched=trees.fetched,
        chunks_from_store=repo.counts.chunks_from_store,
        chunks_from_cache=repo.counts.chunks_from_cache,
        bytes_from_store=repo.counts.bytes_from_store,
        bytes_from_cache=repo.counts.bytes_from_cache,
        reads=repo.counts.reads,
        index_reloads=relocation.reloads,
        errors=ops.errors,
        recorded=recorder.count if recorder is not None else 0,
        walks=walk.walks if walk is not None else 0,
        prefetched=prefetched,
        seconds=time.monotonic() - started,
    )
