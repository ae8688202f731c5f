"""What several commands share: opening the repository, output, progress."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from cas.errors import UsageError
from cas.repo import Repository
from cas.session import Session
from cas.sizes import format_size

T = TypeVar("T")
log = logging.getLogger("cas.cli")


def run_with_repo(
    args: argparse.Namespace,
    action: Callable[[Repository], Awaitable[T]],
    *,
    create: bool = False,
    use_cache: bool = True,
    level: int = 3,
) -> T:
    """Open store (and cache), run `action` on the repository, close everything."""
    return run_with_session(
        args, lambda session: action(session.repo), create=create, use_cache=use_cache, level=level
    )


def run_with_session(
    args: argparse.Namespace,
    action: Callable[[Session], Awaitable[T]],
    *,
    create: bool = False,
    use_cache: bool = True,
    level: int = 3,
) -> T:
    """Open a `Session` as the options say, run `action`, close it, in one event loop."""

    async def body() -> T:
        async with Session.open(
            args.store,
            create=create,
            chunk_cache=cache_choice(args) if use_cache else False,
            local_state=not getattr(args, "no_files_cache", False),
            level=level,
        ) as session:
            return await action(session)

    return asyncio.run(body())


def split_target(text: str) -> tuple[str, str]:
    """`ID`, `REF`, `ID:PATH` or `REF:PATH` (ref names never contain ':')."""
    name, _, path = text.partition(":")
    return name, path


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


def cache_choice(args: argparse.Namespace) -> bool | None:
    """`--no-cache` / `--cache`, else None: the session puts a cache in front of remote stores.

    In front of a store on a local disk it would only copy every chunk a second time.
    """
    if getattr(args, "no_cache", False):
        return False
    return True if getattr(args, "cache", False) else None


def emit_json(obj: Any) -> None:
    """One JSON document on stdout."""
    json.dump(obj, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def refuse_json(args: argparse.Namespace, command: str, why: str) -> None:
    """`--json` where it would mean nothing is an error, not silently ignored."""
    if getattr(args, "json", False):
        args.json = False  # so the refusal itself is a plain error line
        raise UsageError(f"{command} takes no --json: {why}")


def info(args: argparse.Namespace, message: str) -> None:
    """A human summary line on stderr, unless quiet (stdout is kept for ids and data)."""
    if not args.quiet:
        print(message, file=sys.stderr)


PROGRESS_MODES = ("auto", "bar", "plain", "none")
PLAIN_EVERY_S = 5.0
"""How often `--progress plain` prints a line ($CAS_PROGRESS_INTERVAL seconds overrides)."""


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    """`--progress` for the commands that move data (put, get)."""
    parser.add_argument(
        "--progress",
        choices=PROGRESS_MODES,
        default="auto",
        help="auto: a bar on a terminal, plain lines when $CI is set, else none; plain: "
        f"one line every {PLAIN_EVERY_S:.0f} s (files and bytes done of the totals, rate, ETA; "
        "NDJSON events on stderr with --json); none: warnings only",
    )


def progress_mode(args: argparse.Namespace) -> str:
    """The mode `--progress auto` stands for here."""
    if args.quiet:
        return "none"
    mode = getattr(args, "progress", "auto")
    if mode != "auto":
        return mode
    if os.environ.get("CI"):
        return "plain"
    return "bar" if sys.stderr.isatty() else "none"


class BarProgress:
    """Progress of a put or get on stderr: a bar, plain lines, NDJSON events, or nothing."""

    def __init__(self, args: argparse.Namespace, description: str) -> None:
        self._lock = threading.Lock()
        self._mode = progress_mode(args)
        self._json = bool(getattr(args, "json", False))
        self._what = description
        self._done = 0
        self._total: int | None = None
        self._files = 0
        self._files_total: int | None = None
        self._started = time.monotonic()
        self._last_line = self._started
        self._every = _interval()
        from tqdm import tqdm  # only a bar needs it; `cas mount` and `cas ls` start without

        self._bar = (
            tqdm(
                desc=description,
                unit="iB",  # with the 1024 divisor: KiB, MiB, GiB like every other size shown
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                leave=False,
                dynamic_ncols=True,
            )
            if self._mode == "bar"
            else None
        )

    def advance(self, nbytes: int, files: int = 0) -> None:
        """Count bytes and files done; a plain line when the interval has passed."""
        with self._lock:
            self._done += nbytes
            self._files += files
            if self._bar is not None:
                if files:
                    self._bar.set_postfix_str(self._file_count(), refresh=False)
                self._bar.update(nbytes)
            elif self._mode == "plain":
                now = time.monotonic()
                if now - self._last_line >= self._every:
                    self._last_line = now
                    self._line(now)

    def set_total(self, nbytes: int, files: int | None = None) -> None:
        """Give the progress an end (it may grow while a put still lists its source)."""
        with self._lock:
            self._total = nbytes
            if files is not None:
                self._files_total = files
            if self._bar is not None:
                self._bar.total = nbytes
                self._bar.set_postfix_str(self._file_count(), refresh=False)
                self._bar.refresh()

    def _file_count(self) -> str:
        total = "" if self._files_total is None else f"/{self._files_total}"
        return f"{self._files}{total} files"

    def _line(self, now: float) -> None:
        elapsed = max(now - self._started, 1e-6)
        rate = self._done / elapsed
        total = self._total
        eta = (total - self._done) / rate if total is not None and rate > 0 else None
        if self._json:
            event = {
                "event": "progress",
                "command": self._what,
                "bytes_done": self._done,
                "bytes_total": total,
                "files_done": self._files,
                "files_total": self._files_total,
                "seconds": round(elapsed, 1),
                "bytes_per_second": round(rate),
                "eta_seconds": None if eta is None else round(eta),
            }
            print(json.dumps(event, sort_keys=True), file=sys.stderr, flush=True)
            return
        done = format_size(self._done)
        of = "" if total is None else f" of {format_size(total)} ({self._done / max(total, 1):.0%})"
        tail = "" if eta is None else f", ETA {_clock(eta)}"
        print(
            f"cas {self._what}: {self._file_count()}, {done}{of} in {_clock(elapsed)}, "
            f"{format_size(rate)}/s{tail}",
            file=sys.stderr,
            flush=True,
        )

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


def _interval() -> float:
    text = os.environ.get("CAS_PROGRESS_INTERVAL")
    if text is None:
        return PLAIN_EVERY_S
    try:
        return max(0.0, float(text))
    except ValueError:
        raise UsageError(f"CAS_PROGRESS_INTERVAL={text!r}: not a number of seconds") from None


def _clock(seconds: float) -> str:
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"
