"""Command line: ``interp families | hooks | quickstart | reproduce | faithfulness | patch | ablate-method | explore | compare | organism | evaluate | merge``.

Errors a user can cause print one line (``error: ...``) and exit with status 2.


One module per group of commands, each adding its subcommands with ``add_parsers(sub)``.
"""

from __future__ import annotations

import argparse
import sys

from ..cli_args import Parser
from ..errors import InterpError
from . import basics, organism, patching, reproduce, runs
from .basics import quickstart
from .organism import default_organism_dir, organism_train_config, planted_train_config

__all__ = [
    "build_parser",
    "default_organism_dir",
    "main",
    "organism_train_config",
    "planted_train_config",
    "quickstart",
]


def build_parser() -> argparse.ArgumentParser:
    """The ``interp`` parser with every subcommand."""
    from ..evaluation.cli import add_commands as add_evaluation_commands  # interp evaluate | merge

    parser = Parser(
        prog="interp",
        description="Where does vision meet language inside a VLM?",
        epilog="First five minutes: interp quickstart (14 s on a laptop CPU, no download).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (basics, reproduce, runs, patching, organism):
        group.add_parsers(sub)
    add_evaluation_commands(sub)
    return parser


#: commands that only read configs or files: no torch threads to size
_LIGHT_COMMANDS = ("families", "hooks", "merge", "compare")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command not in _LIGHT_COMMANDS:
        from ..threads import set_default_threads

        set_default_threads()  # a busy machine's cores are not oversubscribed (OMP_NUM_THREADS overrides)
    try:
        return args.func(args)
    except InterpError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
