"""Commands that analyse sweeps without a browser: ``plot``, ``importance``, ``list`` and ``compare``. They read; they
write only the file ``--out`` names."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

import pyarrow as pa

from sweeps.api import Sweep
from sweeps.cli._common import add_format_argument, render
from sweeps.results import plots
from sweeps.results.compare import copies
from sweeps.results.reader import plain_value


def _cmd_plot(args: argparse.Namespace) -> int:
    sweep = Sweep.open(args.path)
    try:
        sweep.plot(args.kind, args.method, out=args.out)
    except plots.NotEnoughData as reason:  # not bad input: the sweep cannot show it yet (exit 0, nothing written)
        print(f"l2d-sweep plot: no {args.kind} plot drawn: {reason}", file=sys.stderr)
        return 0
    print(f"wrote the {args.kind} plot of {sweep.path} to {args.out}", file=sys.stderr)
    return 0


def _cmd_importance(args: argparse.Namespace) -> int:
    try:
        found = Sweep.open(args.path).importance(args.method, args.evaluator)
    except plots.NotEnoughData as reason:  # a sweep from before studies were kept: nothing to show, not an error
        print(f"l2d-sweep: {reason}", file=sys.stderr)
        return 0
    for method, (importances, count) in found.items():
        if not importances:
            print(f"{method}: {count} finished trial(s) with every searched hyperparameter: too few for an importance")
            continue
        print(f"{method}: importance of each searched hyperparameter ({args.evaluator}, {count} trials)")
        for name, value in importances.items():
            print(f"  {name:<22} {value:6.3f}  {'#' * int(round(40 * value))}")
        if count < plots.FEW_TRIALS:
            print(
                f"  ({count} trials: fewer than {plots.FEW_TRIALS}, so these numbers mean little; grow the sweep with "
                f"`l2d-sweep extend`)"
            )
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    rows, unreadable = Sweep.find(args.storage)
    for line in unreadable:
        print(f"l2d-sweep list: {line}", file=sys.stderr)
    for line in copies(rows):
        print(f"l2d-sweep list: {line}", file=sys.stderr)
    shown = ("trial_id", "path") if args.format == "table" else ("trial_id",)
    rows = [{k: v for k, v in row.items() if k not in shown} for row in rows]
    if not rows:
        print(f"{args.storage}: no sweep here", file=sys.stderr)
        return 1 if unreadable else 0
    print(render(pa.Table.from_pylist(rows), args.format))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    if args.format == "csv":
        raise ValueError(
            "compare --format csv: compare prints four tables, which one CSV cannot hold; use json (one "
            "document with every table) or jsonl (one row a line, each with its table's name)"
        )
    found = Sweep.compare(args.sweeps)
    names, tables = found.names, found.tables
    if args.format in ("json", "jsonl"):  # every table, whole: the data of what the text shows
        if args.format == "json":
            document = {
                name: [{k: plain_value(v) for k, v in row.items()} for row in rows] for name, rows in tables.items()
            }
            extra = {"column": found.column, "copies": found.copies, "no_pairing": found.no_pairing or None}
            print(json.dumps({**document, **extra}, indent=1))
        else:
            for name, rows in tables.items():
                for row in rows:
                    print(json.dumps({"table": name, **{k: plain_value(v) for k, v in row.items()}}))
        return 0
    for line in found.copies:
        print(textwrap.fill(f"note: {line}", 100, subsequent_indent="  "))
    print(
        render(
            pa.Table.from_pylist(
                [{k: v for k, v in r.items() if k not in ("path", "sweep_id")} for r in tables["sweeps"]]
            )
        )
    )
    print(
        f"\nbest {found.column} per method and pairing"
        + (f" ({names[1]} - {names[0]} in diff):" if len(names) == 2 else ":")
    )
    print(render(pa.Table.from_pylist(tables["best_per_pairing"])))
    paired = tables["paired"]
    if paired:
        diffs = [row["diff"] for row in paired]
        better = sum((d > 0) == (found.mode == "max") for d in diffs if d != 0)
        summary = (
            f"paired (seed {found.seed}): {len(paired)} configuration(s) run by both; {names[1]} - "
            f"{names[0]}: mean {sum(diffs) / len(diffs):+.2f}, {names[1]} better in {better} of {len(paired)}"
        )
        interval = found.paired_interval
        if interval is not None:
            summary += f"; 95 % t-interval [{interval.low:+.2f}, {interval.high:+.2f}], " + (
                "established"
                if interval.established
                else f"not established (this design detects |differences| of {interval.detectable:.2f} or more)"
            )
        print("\n" + textwrap.fill(summary, 100, subsequent_indent="  "))
        # The values and their difference first; each configuration's hyperparameters in a table of their own.
        print(
            render(pa.Table.from_pylist([{k: v for k, v in row.items() if k != "hyperparameters"} for row in paired]))
        )
        print("\nthe paired configurations' hyperparameters:")
        print(
            render(
                pa.Table.from_pylist(
                    [{"config": row["config"], "hyperparameters": row["hyperparameters"]} for row in paired]
                )
            )
        )
    elif found.no_pairing:
        print(f"\nno paired comparison: {found.no_pairing}")
    if tables["spec_differences"]:
        print("\nspec fields that differ:")
        print(render(pa.Table.from_pylist(tables["spec_differences"])))
    else:
        print("\nthe specs are the same (but for name and storage)")
    return 0


def add_commands(commands) -> None:
    """Add ``plot``, ``importance``, ``list`` and ``compare``."""
    plot = commands.add_parser(
        "plot",
        help=f"draw a sweep: {', '.join(plots.PLOTS)}",
        description=f"Draw one plot of a sweep into a PNG file (--out): {plots.describe_kinds()}. A plot the sweep has "
        f"too little data for is not drawn (said on stderr, exit 0).",
    )
    plot.add_argument("path", help="the sweep folder")
    plot.add_argument("--kind", choices=list(plots.PLOTS), required=True, help="which plot")
    plot.add_argument("--out", required=True, help="the PNG file to write (new, or one this tool wrote)")
    plot.add_argument("--method", help="for parallel / importance: the method (default: the best trial's)")
    plot.set_defaults(func=_cmd_plot)

    importance = commands.add_parser(
        "importance",
        help="how much each hyperparameter mattered, per method",
        description="Each searched hyperparameter's importance for each method of a sweep (over that method's "
        "finished trials), with the number of trials it rests on and a warning when they are few.",
    )
    importance.add_argument("path", help="the sweep folder")
    importance.add_argument("--method", help="one method only")
    importance.add_argument(
        "--evaluator",
        choices=["ped-anova", "fanova"],
        default="ped-anova",
        help="Optuna's importance evaluator (default: ped-anova)",
    )
    importance.set_defaults(func=_cmd_importance)

    listing = commands.add_parser(
        "list",
        help="the sweeps in a storage folder, each with its trials and best",
        description="List the sweeps under a storage folder (a folder, s3:// or gs://): each one's trials by "
        "state, whether a driver runs it, its best trial. A damaged sweep is named on stderr.",
    )
    listing.add_argument("storage", help="the storage folder (the spec's `storage`)")
    add_format_argument(listing, "output format (default: table)")
    listing.set_defaults(func=_cmd_list)

    compare = commands.add_parser(
        "compare",
        help="two or more sweeps side by side: best per method and pairing, paired trials, spec differences",
        description="Compare sweeps: each one's trials and best trial; the best value each method and pairing "
        "(teacher, student) reached in each, with the difference for two sweeps; for two sweeps with the "
        "same seed, the configurations both ran (a paired comparison: the mean difference and how "
        "often the second is better); and the spec fields that differ.",
    )
    compare.add_argument("sweeps", nargs="+", metavar="SWEEP", help="sweep folders (two or more)")
    add_format_argument(
        compare,
        "output format: table (text, default); json (one document holding every table); "
        "jsonl (one row a line, with its table's name); csv is refused (four tables)",
    )
    compare.set_defaults(func=_cmd_compare)
