"""The ``l2d-sweep`` command line.

Commands about one run (``train``, ``teacher``, ``dataset``, ``methods``) are in :mod:`sweeps.cli.single`, commands
about sweeps in :mod:`sweeps.cli.sweep`; a new command goes in one of them, with its ``add_commands`` entry. The
parser needs the method and dataset registries (so torch); Ray, timm's models and the data are imported only by
the commands that use them.

Exit status: 0 when the command did its job (for ``run``/``resume``: at least one trial that did not fail), 1 when
it could not (every trial failed, another driver holds the sweep, a damaged state file, a failure of Ray or the
storage), 2 for bad input (a spec, a flag, a dataset, a path), 130 when interrupted (Ctrl-C), 143 when
stopped by SIGTERM. Every error is one line on
stderr; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys
import traceback
from importlib import metadata
from typing import Callable, Sequence

from l2d import __version__
from sweeps.cli import analysis, completion, single, specs, sweep, weights
from sweeps.cli._common import Parser, _parsers, add_global_flags
from sweeps.core.checks import SpecError

logger = logging.getLogger(__name__)

#: This floor's modules, bottom first (``__init__``: this package itself).
MODULES = ["_common", "single", "sweep", "specs", "weights", "analysis", "completion", "__init__", "__main__"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="l2d-sweep",
        description="Find the best multi-label knowledge-distillation recipe (L2D and baselines) for a dataset.",
    )
    parser.add_argument("--version", action="version", version=f"l2d-sweep {_version()}")
    add_global_flags(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True
    single.add_commands(commands)
    sweep.add_commands(commands)
    analysis.add_commands(commands)
    specs.add_commands(commands)
    weights.add_commands(commands)
    completion.add_commands(commands)
    for child in _parsers(parser)[1:]:  # the global flags after the command too
        add_global_flags(child, anywhere=True)
    parser.set_defaults(root_parser=parser)  # for `completion`, which describes the whole parser
    return parser


def _version() -> str:
    try:
        return metadata.version("l2d-sweep")
    except metadata.PackageNotFoundError:
        return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", force=True
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt as error:
        lease = sys.modules.get("sweeps.folder.lease")
        if lease is not None and lease.stopped_because:  # the driver stopped itself: its lease could not be renewed
            _report(args, f"failed: {lease.stopped_because}")
            return 1
        status = getattr(error, "exit_status", 130)  # sweeps.core.interrupt.SweepInterrupted: 143 for SIGTERM
        hint = f"; continue it with `l2d-sweep resume {args.sweep_dir}`" if getattr(args, "sweep_dir", None) else ""
        if getattr(error, "folder_deleted", False):  # stopped before its first trial: its new folder is gone
            hint = f"; nothing was kept: start it again with `l2d-sweep run {getattr(args, 'spec', 'SPEC')}`"
        print(f"l2d-sweep {args.command}: {str(error) or 'interrupted'}{hint}", file=sys.stderr)
        return status
    except BrokenPipeError:
        # `l2d-sweep results ... | head`: the reader has what it wanted. Quiet, as a Unix tool killed by SIGPIPE
        # (status 141); stdout is pointed at /dev/null so that Python's flush at exit raises nothing more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except SpecError as error:  # every error of the spec, one line each
        for line in error.errors:
            _report(args, f"error: {line}")
        return 2
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as error:
        # Bad input (a spec, a dataset file, an option value, a model name, a path): one line, no traceback.
        _report(args, f"error: {_first_line(error)}")
        return 2
    except Exception as error:  # noqa: BLE001 - the command could not run: one line, status 1
        _report(args, f"failed: {type(error).__name__ + ': ' if not str(error) else ''}{_first_line(error)}")
        return 1


def run() -> None:
    """The ``l2d-sweep`` program: :func:`main`, then exit without tearing the interpreter down.

    After the command has done its work, its output is flushed and the interpreter's exit handlers run (Ray's
    shutdown, logging, temporary files); then the process ends with ``os._exit``. A full teardown destroys pyarrow's
    native thread pools after the module state they use, which now and then (a few runs in a hundred on a loaded
    machine, seen with ``status`` and ``list``) aborts the process with "terminate called without an active exception"
    and exit status 134 after a command that succeeded.
    """
    try:
        code = main()
    except SystemExit as done:  # argparse's --help, --version and usage errors
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 2)
        if done.code is not None and not isinstance(done.code, int):
            print(done.code, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass
    atexit._run_exitfuncs()
    os._exit(code if isinstance(code, int) else 1)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _report(args: argparse.Namespace, message: str) -> None:
    if getattr(args, "debug", False):
        traceback.print_exc()
    print(f"l2d-sweep {args.command}: {message}", file=sys.stderr)


__all__ = ["build_parser", "main", "run"]
