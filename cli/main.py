"""Entry point of the `cas` command.

This is the single place that turns a `CasError` into one line on stderr and
its exit code (the table is in the README and in `cas --help`). Anything else escaping is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from cas import __version__
from cas.allocator import return_large_blocks
from cas.errors import CasError, PermissionDenied, UsageError

COMMANDS = (
    "put",
    "get",
    "ls",
    "cat",
    "mount",
    "diff",
    "show",
    "manifests",
    "refs",
    "ref",
    "gc",
    "verify",
    "reindex",
    "stats",
    "cache",
    "serve",
    "completion",
    "manpage",
    "docs",
)
"""In help order; each lives in `cas_cli.commands.<name>` (`ref` shares `refs`)."""
_MODULE = {"ref": "refs", "manifests": "show", "manpage": "completion"}
_GLOBAL_FLAGS = ("--json", "-q", "--quiet", "-v", "--verbose", "--debug")
_GLOBAL_VALUED = ("--store",)
"""Options every command takes, accepted before the command name too (`cas --json refs`)."""
_NESTED = ("ref", "cache")
"""Commands with actions: global options go after the action."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2 like every other error."""

    def error(self, message: str) -> NoReturn:
        wrong = re.search(r"invalid choice: '([^']*)'", message)
        if wrong is not None and self.prog == "cas":
            close = difflib.get_close_matches(wrong.group(1), COMMANDS, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}? " if close else ""
            message = f"unknown command {wrong.group(1)!r}; {hint}(cas --help lists them)"
        self.exit(UsageError.exit_code, f"cas: error: {self.prog}: {message}\n")


def _modules(argv: Sequence[str] | None) -> list[str]:
    """Only the command being run is imported (start-up time); all of them for help."""
    words = [w for w in (sys.argv[1:] if argv is None else argv) if not w.startswith("-")]
    chosen = words[0] if words and words[0] in COMMANDS else None
    names = [chosen] if chosen is not None else list(COMMANDS)
    return list(dict.fromkeys(_MODULE.get(name, name) for name in names))


NEEDS_SCOPE = {"put": "write", "gc": "admin", "ref": "admin"}
"""The `cas serve` token scope each command needs (the rest need 'read')."""


def _with_scope_hint(command: str, exc: PermissionDenied) -> PermissionDenied:
    """Name the command the user ran and the scope it needs, not only the call that failed."""
    text = str(exc)
    if "scope" not in text:  # not a cas serve refusal (GCS names its IAM role itself)
        return exc
    scope = NEEDS_SCOPE.get(command, "read")
    return PermissionDenied(
        f"cas {command} needs a token with the {scope!r} scope in $CAS_TOKEN ({text})"
    )


EXAMPLES = {
    "put": "cas put ./build --ref ci/main/42 --label commit=$SHA --exclude '*.o'",
    "get": "cas get ci/main/42 ./build   (or ci/main/42:bin ./bin for one subtree)",
    "ls": "cas ls ci/main/42 bin/",
    "cat": "cas cat ci/main/42 bin/app > app",
    "mount": "cas mount ci/main/42 /mnt/build   (fusermount3 -u /mnt/build unmounts)",
    "diff": "cas diff ci/main/41 ci/main/42 --exit-code",
    "show": "cas show ci/main/42",
    "manifests": "cas manifests --label commit=$SHA --last 5",
    "refs": "cas refs ci/main/",
    "gc": "cas gc --keep-last 10 'ci/main/*' --dry-run",
    "verify": "cas verify ci/main/42   (or --all --sample 0.05)",
    "reindex": "cas reindex ci/main/42",
    "stats": "cas stats --chunks",
    "serve": "cas serve --store /srv/cas --listen 0.0.0.0:8431 --token-file tokens",
    "completion": "cas completion bash > /etc/bash_completion.d/cas",
    "manpage": "cas manpage > /usr/local/share/man/man1/cas.1",
    "docs": "cas docs gc",
}
"""One example per command, shown at the end of its --help."""


def hoist_global_options(argv: Sequence[str]) -> list[str]:
    """Move `--store URL`, `--json` and `-q` given before the command name to after it."""
    words = list(argv)
    moved: list[str] = []
    i = 0
    while i < len(words) and words[i].startswith("-"):
        word = words[i]
        name = word.split("=", 1)[0]
        if word in _GLOBAL_FLAGS:
            moved.append(words.pop(i))
        elif name in _GLOBAL_VALUED:
            moved.append(words.pop(i))
            if "=" not in word and i < len(words):
                moved.append(words.pop(i))
        else:
            i += 1  # --version, -h: the top-level parser's own
    if not moved or i >= len(words):
        return list(argv)
    # `ref rm`, `cache info`: after the action, where the options are defined last
    # (a subparser's defaults would overwrite values parsed before it).
    at = i + 1
    if words[i] in _NESTED and at < len(words) and not words[at].startswith("-"):
        at += 1
    return words[:at] + moved + words[at:]


EPILOG = """\
examples:
  ID=$(cas put ./build --ref ci/main/42 --label commit=$SHA)
  cas get ci/main/42 ./build          # or an id, or a unique id prefix
  cas show ci/main/42; cas manifests --label commit=$SHA

environment:
  CAS_STORE              store URL when --store is not given
  CAS_TOKEN              bearer token for a cas serve store
  CAS_CACHE_DIR          chunk and files caches (default $XDG_CACHE_HOME/cas)
  CAS_CACHE_SIZE         chunk cache cap, e.g. 4G (0 disables it)
  CAS_PROGRESS_INTERVAL  seconds between --progress plain lines (default 5)
  CI                     when set, progress is plain lines instead of a bar
  XDG_DATA_HOME          the default store lives in $XDG_DATA_HOME/cas/store

exit codes:
  0 success               4 corrupt data          8 permission denied
  1 other failure         5 unsafe manifest       9 source unreadable
  2 usage error           6 ref exists           10 destination unwritable
  3 not found             7 store unavailable    11 invalid object format
                                                 12 put left unreadable files out
                                                 13 put raced gc (rerun)
                                                 14 gc lost its lease (rerun)
"""


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The commands (those `argv` needs, or all) with their options."""
    parser = _Parser(
        prog="cas",
        description="Content-addressed chunk store: pass build directories between machines, "
        "moving only what changed.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log on stderr what happens: the store opened, parents, retries and their causes, "
        "cache use, the time of each phase",
    )
    common.add_argument(
        "--debug", action="store_true", help="log everything, the libraries' debug messages too"
    )
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )
    for name in _modules(argv):
        importlib.import_module(f"cas_cli.commands.{name}").register(sub, common)
    for name, command in sub.choices.items():
        example = EXAMPLES.get(name)
        if example is not None and command.epilog is None:
            command.epilog = f"example: {example}. Exit codes, environment: cas --help."
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code."""
    return_large_blocks()
    argv = hoist_global_options(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    if not argv:
        parser.print_help()
        return UsageError.exit_code
    args = parser.parse_args(argv)
    _configure_logging(args)
    try:
        return int(args.run(args) or 0)
    except CasError as exc:
        if isinstance(exc, PermissionDenied):
            exc = _with_scope_hint(args.command, exc)
        if getattr(args, "json", False):
            # Scripts reading --json output get the error in the same form, on stderr.
            error = {"type": type(exc).__name__, "message": str(exc), "exit_code": exc.exit_code}
            print(json.dumps({"error": error}, sort_keys=True), file=sys.stderr)
        else:
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


def _configure_logging(args: argparse.Namespace) -> None:
    level = (
        logging.DEBUG
        if getattr(args, "debug", False)
        else logging.INFO
        if getattr(args, "verbose", False)
        else logging.WARNING
    )
    debug = getattr(args, "debug", False)
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="cas: %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("cas").setLevel(level)


def entry() -> None:
    """Console-script wrapper."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
