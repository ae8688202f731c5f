"""What several commands share: opening the repository, output, progress."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tqdm import tqdm

from cas.cache import ChunkCache, configured_cache_size
from cas.repo import Repository
from cas.store import Store, open_store

T = TypeVar("T")


def run_with_repo(
    args: argparse.Namespace,
    action: Callable[[Repository], Awaitable[T]],
    *,
    create: bool = False,
    use_cache: bool = True,
    level: int = 3,
) -> T:
    """Open store (and cache), run `action`, close everything, in one event loop."""

    async def body() -> T:
        store: Store = open_store(args.store, create=create)
        cache = None
        if use_cache and wants_cache(args, store) and configured_cache_size() > 0:
            cache = ChunkCache()
        try:
            async with store:
                return await action(Repository(store, cache, level=level))
        finally:
            if cache is not None:
                cache.close()

    return asyncio.run(body())


def add_cache_options(parser: argparse.ArgumentParser) -> None:
    """`--cache` / `--no-cache` for the commands that read chunks."""
    caching = parser.add_mutually_exclusive_group()
    caching.add_argument("--no-cache", action="store_true", help="bypass the local chunk cache")
    caching.add_argument(
        "--cache",
        action="store_true",
        help="use the local chunk cache even for a store on a local disk "
        "(by default only remote stores and network mounts are cached)",
    )


def wants_cache(args: argparse.Namespace, store: Store) -> bool:
    """The chunk cache sits in front of remote stores (and network mounts) unless told otherwise.

    In front of a store on a local disk it would only copy every chunk a second time.
    """
    if getattr(args, "no_cache", False):
        return False
    return bool(getattr(args, "cache", False)) or store.capabilities.remote


def emit_json(obj: Any) -> None:
    """One JSON document on stdout."""
    json.dump(obj, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def info(args: argparse.Namespace, message: str) -> None:
    """A human summary line on stderr, unless quiet (stdout is kept for ids and data)."""
    if not args.quiet:
        print(message, file=sys.stderr)


class BarProgress:
    """A byte progress bar on a terminal; silent (but warning) elsewhere."""

    def __init__(self, args: argparse.Namespace, description: str) -> None:
        self._lock = threading.Lock()
        enabled = not args.quiet and sys.stderr.isatty() and not os.environ.get("CI")
        self._bar = (
            tqdm(
                desc=description,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                leave=False,
                dynamic_ncols=True,
            )
            if enabled
            else None
        )

    def advance(self, nbytes: int) -> None:
        """Move the bar."""
        if self._bar is not None:
            with self._lock:
                self._bar.update(nbytes)

    def set_total(self, nbytes: int) -> None:
        """Give the bar an end."""
        if self._bar is not None:
            with self._lock:
                self._bar.total = nbytes
                self._bar.refresh()

    def warn(self, message: str) -> None:
        """Warnings always reach stderr, above the bar."""
        with self._lock:
            if self._bar is not None:
                self._bar.write(f"cas: warning: {message}", file=sys.stderr)
            else:
                print(f"cas: warning: {message}", file=sys.stderr)

    def close(self) -> None:
        """Remove the bar."""
        if self._bar is not None:
            self._bar.close()
