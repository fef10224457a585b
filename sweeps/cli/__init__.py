"""The ``l2d-sweep`` command line.

Commands about one run (``train``, ``teacher``, ``dataset``, ``methods``) are in :mod:`sweeps.cli.single`, commands
about sweeps in :mod:`sweeps.cli.sweep`; a new command goes in one of them, with its ``add_commands`` entry. The
parser needs the method and dataset registries (so torch); Ray, timm's models and the data are imported only by
the commands that use them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from sweeps.cli._common import Parser

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    from sweeps.cli import single, sweep

    parser = Parser(
        prog="l2d-sweep",
        description="Find the best multi-label knowledge-distillation recipe (L2D and baselines) for a dataset.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True
    single.add_commands(commands)
    sweep.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ValueError, FileNotFoundError) as error:
        # Bad input (a dataset file, an option value, a model name): one line, no traceback.
        print(f"l2d-sweep {args.command}: error: {error}", file=sys.stderr)
        return 2


__all__ = ["build_parser", "main"]
