"""The ``l2d-sweep`` command line.

Commands import their heavy dependencies (torch, timm, Ray) only when they run, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

logger = logging.getLogger(__name__)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``l2d-sweep train: error: ...``), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _cmd_methods(args: argparse.Namespace) -> int:
    from l2d.losses import METHODS, loss_parts

    print(f"{'method':<7} {'losses':<16} {'default hyperparameters':<40} description")
    for name, method in METHODS.items():
        defaults = ", ".join(f"{k}={v:g}" for k, v in method.defaults.items()) or "-"
        print(f"{name:<7} {'+'.join(loss_parts(name)):<16} {defaults:<40} {method.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="l2d-sweep",
        description="Find the best multi-label knowledge-distillation recipe (L2D and baselines) for a dataset.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    methods = commands.add_parser("methods", help="list the distillation methods and their default weights",
                                  description="List the distillation methods, their loss parts and defaults.")
    methods.set_defaults(func=_cmd_methods)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
