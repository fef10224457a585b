"""What the commands share: the one-line-error parser, argument types, data and recipe options, the progress line."""

from __future__ import annotations

import argparse
import difflib
import re
import shutil
import sys
import time
from typing import Any, Callable

import yaml

from l2d.data import DATASETS
from l2d.run import RunConfig
from l2d.settings import settings
from l2d.storage import cache_dir
from sweeps.results import format_table

# Loaded late, inside the functions that use them: l2d.teachers, rich (not needed when the command line starts).

#: The output formats of every command that prints a results table (:func:`sweeps.results.format_table`).
FORMATS = ("table", "csv", "json", "jsonl")


def add_format_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """``--format`` of a command that prints a results table (default: table)."""
    parser.add_argument("--format", choices=list(FORMATS), default="table", help=help)


def render(table, fmt: str = "table") -> str:
    """A results table for stdout: as text it fits the terminal's width (100 columns when stdout is not one; the
    columns left out are named below it); csv, json and jsonl hold every column."""
    return format_table(table, fmt, width=shutil.get_terminal_size((100, 24)).columns if fmt == "table" else None)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``l2d-sweep train: error: ...``), exit status 2, with the
    closest command or flag suggested for a misspelt one."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}{self._suggestion(message)} (see --help)\n")

    def _suggestion(self, message: str) -> str:
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            options = re.findall(r"'([^']*)'", choice.group(2)) or [c.strip() for c in choice.group(2).split(",")]
            close = difflib.get_close_matches(choice.group(1), options, n=1, cutoff=0.6)
            return f"; did you mean {close[0]!r}?" if close else ""
        unknown = re.search(r"unrecognized arguments: (.*)", message)
        if unknown:
            flags = {o for parser in _parsers(self) for o in parser._option_string_actions}
            for word in unknown.group(1).split():
                close = difflib.get_close_matches(word.split("=", 1)[0], sorted(flags), n=1, cutoff=0.7)
                if word.startswith("-") and close:
                    return f"; did you mean {close[0]!r}?"
        return ""


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """A parser and every subcommand's parser below it."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += _parsers(child)
    return found


def add_global_flags(parser: argparse.ArgumentParser, anywhere: bool = False) -> None:
    """``-q``, ``-v``, ``--debug``: on the top parser, and (``anywhere``) again on each command's, where they do
    not reset what was given before the command (``l2d-sweep -v results X`` and ``l2d-sweep results X -v`` agree)."""
    default = argparse.SUPPRESS if anywhere else False
    flags = [
        (("-q", "--quiet"), "only errors and each command's result (no progress lines)"),
        (("-v", "--verbose"), "informational logging (caches, teachers...), and the Ray workers' logs in a sweep"),
        (("--debug",), "debug logging, and the traceback of an error"),
    ]
    for names, text in flags:
        free = [n for n in names if n not in parser._option_string_actions]
        if len(free) == len(names):
            parser.add_argument(*names, action="store_true", default=default, help=text)


def key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE parsed as YAML (numbers, booleans, strings)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: bad value ({error})") from error


def bounded(
    kind: type, minimum: float, exclusive: bool = False, maximum: float | None = None
) -> Callable[[str], float]:
    """An argparse type: a finite ``kind`` (int or float) >= ``minimum`` (> when ``exclusive``), <= ``maximum``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if (
            value != value
            or value in (float("inf"), float("-inf"))
            or value < minimum
            or (exclusive and value == minimum)
            or (maximum is not None and value > maximum)
        ):
            show = (lambda v: f"{int(v):,}") if kind is int else (lambda v: f"{v:g}")
            bound = f"{'>' if exclusive else '>='} {show(minimum)}" + (
                f" and <= {show(maximum)}" if maximum is not None else ""
            )
            raise argparse.ArgumentTypeError(
                f"must be {'a finite number ' if kind is float else ''}{bound}, got {value}"
            )
        return value

    return parse


positive_int = bounded(int, 1)
non_negative_int = bounded(int, 0)
positive_float = bounded(float, 0.0, exclusive=True)
non_negative_float = bounded(float, 0.0)
seed_int = bounded(int, 0, maximum=2**32 - 1)


def add_data_options(parser: argparse.ArgumentParser, command: str) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset",
        default="mosaic-digits",
        choices=list(DATASETS),
        help="dataset name (default: mosaic-digits, embedded: nothing to download)",
    )
    group.add_argument("--data-root", help="the dataset's folder (required for voc2007, coco2014, nuswide)")
    group.add_argument(
        "--dataset-option",
        action="append",
        type=key_value,
        default=[],
        metavar="KEY=VALUE",
        help="a dataset option, repeatable (e.g. size=5000 for a mosaic, difficult_as_positive=true for VOC)",
    )
    add_setting_options(group, command, "dataset")


def setting_type(declared) -> Callable[[str], Any]:
    """An argparse ``type`` of a run setting (:class:`l2d.settings.Setting`): its kind, its bounds, its message."""

    def parse(text: str):
        try:
            value = declared.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if declared.kind is int else 'a number'}, got {text!r}"
            ) from None
        problem = declared.problem(value)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = declared.kind.__name__  # argparse names the type in its messages
    return parse


def add_setting_options(parser, command: str, section: str | None = None, config_class: type | None = None) -> None:
    """A flag for each run setting that names one for ``command`` (:mod:`l2d.settings`: one definition of its type,
    bounds, default and help); ``section``: only those the spec holds in that section (``dataset``), else the rest.
    Each flag's value lands under the setting's own name; left out, it is None (the run config's default)."""
    for name, declared in settings(config_class or RunConfig).items():
        flag = declared.flags.get(command)
        if flag is None or (declared.spec_section == "dataset") != (section == "dataset"):
            continue
        if declared.kind is bool:
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=declared.described()
            )
        elif declared.kind is str:
            parser.add_argument(flag, dest=name, choices=declared.choices, default=None, help=declared.described())
        else:
            parser.add_argument(
                flag,
                dest=name,
                type=setting_type(declared),
                default=None,
                metavar="N" if declared.kind is int else "X",
                help=declared.described(),
            )


def add_recipe_options(parser: argparse.ArgumentParser, command: str) -> None:
    group = parser.add_argument_group("recipe (defaults: the official L2D recipe, with the dataset's lr)")
    add_setting_options(group, command)
    group.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    group.add_argument(
        "--store",
        default=None,
        help="teacher store: a folder or s3:// / gs:// URI (default: $L2D_SWEEP_CACHE/teachers, "
        "$L2D_SWEEP_CACHE defaulting to ~/.cache/l2d-sweep)",
    )


def run_config(args: argparse.Namespace, config_class: type | None = None, **fields):
    """The :class:`~l2d.run.RunConfig` of the data options, every setting flag given (:func:`add_setting_options`)
    and ``fields``."""
    given = {
        name: getattr(args, name)
        for name, declared in settings(config_class or RunConfig).items()
        if args.command in declared.flags and getattr(args, name, None) is not None
    }
    return (config_class or RunConfig)(
        dataset=args.dataset,
        data_root=args.data_root,
        dataset_options=dict(args.dataset_option),
        device=getattr(args, "device", None),
        **given,
        **fields,
    )


def teacher_store(args: argparse.Namespace):
    from l2d.teachers import TeacherStore

    return TeacherStore(args.store or cache_dir() / "teachers")


class Progress:
    """Training progress on stderr. On a terminal: a bar over the whole run (epoch, batch, loss, elapsed, the time
    left for every epoch still to run), with one line per finished epoch above it (rich). Otherwise (a log, CI): one
    line per finished epoch. ``close()`` removes the bar (also after an error)."""

    def __init__(self, label: str, epochs: int | None):
        self.label = label
        self.epochs = epochs or 0
        self.epoch = 1
        self.tty = sys.stderr.isatty()
        self.start = time.time()
        self._bar = None
        self._task = None

    def _open(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import (
            Progress as Bar,
        )

        self._bar = Bar(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr, highlight=False),
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task(self.label, total=max(1, self.epochs) * total, loss="-")

    def batch(self, done: int, total: int, values) -> None:
        if not self.tty:
            return
        if self._bar is None:
            self._open(total)
        self._bar.update(
            self._task,
            completed=(self.epoch - 1) * total + done,
            loss=f"{values['loss']:.3g}",
            description=f"{self.label} epoch {self.epoch}/{self.epochs}",
        )

    def end_epoch(self, metrics) -> None:
        epoch = int(metrics["epoch"])
        test = f"  test mAP {metrics['test_mAP']:.2f}" if "test_mAP" in metrics else ""
        line = (
            f"{self.label} epoch {epoch}/{self.epochs}: loss {metrics['train_total']:.4g}  "
            f"val mAP {metrics['val_mAP']:.2f}{test}  {metrics['images_per_s']:.0f} img/s  "
            f"{time.time() - self.start:.0f}s"
        )
        if self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False)
        else:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        self.epoch = epoch + 1
        if self.epochs and epoch >= self.epochs:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
