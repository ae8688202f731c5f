"""`cas completion SHELL` and `cas manpage`: generated from the parser, so never out of date."""

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
    m = sub.add_parser(
        "manpage",
        parents=[common],
        help="print the man page (roff)",
        description="Print cas(1) in roff, e.g. `cas manpage > /usr/local/share/man/man1/cas.1`.",
    )
    m.set_defaults(run=run_manpage)


def run(args: argparse.Namespace) -> int:
    """Execute `cas completion`."""
    from cas_cli.main import build_parser  # every command, not only this one

    refuse_json(args, "cas completion", "it prints a shell script")
    print(shtab.complete(build_parser([]), shell=args.shell))
    return 0


def run_manpage(args: argparse.Namespace) -> int:
    """Execute `cas manpage`."""
    from argparse_manpage.manpage import Manpage

    from cas_cli.main import build_parser

    refuse_json(args, "cas manpage", "it prints roff")
    parser = build_parser([])
    parser.prog = "cas"
    print(str(Manpage(parser)).replace("Generated Python Manual", "cas manual"))
    return 0
