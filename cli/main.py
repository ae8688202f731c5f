"""Entry point of the `cas` command.

This is the single place that turns a `CasError` into one line on stderr and
its exit code (see docs/cli.md for the table). Anything else escaping is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from cas import __version__
from cas.allocator import return_large_blocks
from cas.errors import CasError, UsageError

COMMANDS = (
    "put",
    "get",
    "ls",
    "cat",
    "diff",
    "refs",
    "ref",
    "gc",
    "verify",
    "reindex",
    "cache",
    "serve",
)
"""In help order; each lives in `cas_cli.commands.<name>` (`ref` shares `refs`)."""
_MODULE = {"ref": "refs"}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2 like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(UsageError.exit_code, f"cas: error: {self.prog}: {message}\n")


def _modules(argv: Sequence[str] | None) -> list[str]:
    """Only the command being run is imported (start-up time); all of them for help."""
    words = [w for w in (sys.argv[1:] if argv is None else argv) if not w.startswith("-")]
    chosen = words[0] if words and words[0] in COMMANDS else None
    names = [chosen] if chosen is not None else list(COMMANDS)
    return list(dict.fromkeys(_MODULE.get(name, name) for name in names))


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The commands (those `argv` needs, or all) with their options."""
    parser = _Parser(
        prog="cas",
        description="Content-addressed chunk store: pass build directories between machines, "
        "moving only what changed.",
    )
    parser.add_argument("--version", action="version", version=f"cas {__version__}")
    common = _Parser(add_help=False)
    common.add_argument(
        "--store",
        metavar="URL",
        help="store location: a path, file:///path, http(s)://HOST:PORT (cas serve) or "
        "gs://BUCKET/PREFIX (default: $CAS_STORE, else $XDG_DATA_HOME/cas/store)",
    )
    common.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    common.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar and no summary line"
    )
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )
    for name in _modules(argv):
        importlib.import_module(f"cas_cli.commands.{name}").register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code."""
    return_large_blocks()
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except CasError as exc:
        print(f"cas: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("cas: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`cas cat … | head`): not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def entry() -> None:
    """Console-script wrapper."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
