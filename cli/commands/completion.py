"""`cas completion bash|zsh|tcsh`: a shell completion script, generated from the parser."""

from __future__ import annotations

import argparse

import shtab

from cas_cli.common import refuse_json


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the `completion` command."""
    p = sub.add_parser(
        "completion",
        parents=[common],
        help="print a shell completion script",
        description="Print a completion script for SHELL, e.g. "
        "`cas completion bash > /etc/bash_completion.d/cas` or, for zsh, into a directory "
        "on $fpath as _cas.",
    )
    p.add_argument("shell", choices=shtab.SUPPORTED_SHELLS, metavar="SHELL")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Execute `cas completion`."""
    from cas_cli.main import build_parser  # every command, not only this one

    refuse_json(args, "cas completion", "it prints a shell script")
    print(shtab.complete(build_parser([]), shell=args.shell))
    return 0
