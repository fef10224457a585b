"""Commands that analyse sweeps without a browser: ``plot``, ``importance``, ``list`` and ``compare``. They read; they
write only the file ``--out`` names."""

from __future__ import annotations

import argparse
import sys


def _study_or_none(path):
    """The sweep's study, read-only (None, and a note, when it has none)."""
    from sweeps.search.study import load_sweep_study

    try:
        return load_sweep_study(path, read_only=True)[1]
    except FileNotFoundError as error:
        print(f"l2d-sweep: {error}", file=sys.stderr)
        return None


def _cmd_plot(args: argparse.Namespace) -> int:
    from sweeps.results import plots
    from sweeps.results import SweepResults
    from sweeps.specs.stored import load_sweep_spec

    plots.check_png_target(args.out)  # refused before anything is read
    spec = load_sweep_spec(args.path)
    results = SweepResults(spec.sweep_dir)
    study = _study_or_none(args.path) if plots.PLOTS[args.kind].study != "none" else None
    try:
        figure = plots.draw(args.kind, results, spec, study, args.method)
    except plots.NotEnoughData as reason:  # not bad input: the sweep cannot show it yet (exit 0, nothing written)
        print(f"l2d-sweep plot: no {args.kind} plot drawn: {reason}", file=sys.stderr)
        return 0
    where = plots.save_figure(figure, args.out)
    print(f"wrote the {args.kind} plot of {spec.sweep_dir} to {where}", file=sys.stderr)
    return 0


def _cmd_importance(args: argparse.Namespace) -> int:
    from sweeps.results import plots
    from sweeps.results import SweepResults
    from sweeps.specs.stored import load_sweep_spec

    spec = load_sweep_spec(args.path)
    study = _study_or_none(args.path)
    if study is None:  # a sweep from before studies were kept: nothing to show, not an error (said on stderr)
        return 0
    results = SweepResults(spec.sweep_dir)
    methods = [args.method] if args.method else list(spec.methods)
    for method in methods:
        found, count = plots.importances(study, spec, method, args.evaluator)
        if not found:
            print(f"{method}: {count} finished trial(s) with every searched hyperparameter: too few for an importance")
            continue
        print(f"{method}: importance of each searched hyperparameter ({args.evaluator}, {count} trials)")
        for name, value in found.items():
            print(f"  {name:<22} {value:6.3f}  {'#' * int(round(40 * value))}")
        if count < plots.FEW_TRIALS:
            print(
                f"  ({count} trials: fewer than {plots.FEW_TRIALS}, so these numbers mean little; grow the sweep with "
                f"`l2d-sweep extend`)"
            )
    del results
    return 0


def _sweep_row(path) -> dict:
    """One sweep as a row of ``list`` and ``compare``: its trials by state, who drives it, its best trial."""
    from sweeps.results import sweep_status
    from sweeps.specs.stored import load_sweep_spec

    from sweeps.folder.marker import read_marker

    spec = load_sweep_spec(path)
    status = sweep_status(spec.sweep_dir)
    best = status.best or {}
    return {
        "sweep": spec.sweep_dir.name,
        "state": status.state,
        "trials": sum(status.counts.values()),
        "completed": status.counts.get("completed", 0),
        "stopped": status.counts.get("stopped", 0),
        "failed": status.counts.get("failed", 0),
        "metric": status.metric,
        "best": best.get("value"),
        "test_mAP": best.get("test_mAP"),
        "method": best.get("method"),
        "student": best.get("student"),
        "trial_id": best.get("trial_id"),
        "updated": _last_change(spec.sweep_dir),
        "path": str(spec.sweep_dir),
        "sweep_id": (read_marker(spec.sweep_dir) or {}).get("sweep_id"),
    }


def _copies(rows: list[dict], key: str = "path") -> list[str]:
    """One line per sweep id that more than one of ``rows`` carries: those folders are copies of one sweep (the same
    trials up to the copy; each goes on on its own since). ``key``: what names a folder in the line."""
    by_id: dict[str, list[str]] = {}
    for row in rows:
        if row.get("sweep_id"):
            by_id.setdefault(row["sweep_id"], []).append(row[key])
    return [
        f"{', '.join(paths)} are copies of one sweep (id {sweep_id}): the same trials up to the copy, each on its "
        f"own since"
        for sweep_id, paths in by_id.items()
        if len(paths) > 1
    ]


def short_labels(paths: list) -> list[str]:
    """Labels for sweep folders: their names, or as many trailing path parts as make them differ."""
    parts = [str(p).rstrip("/").split("/") for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def _last_change(sweep_dir) -> str | None:
    """When the sweep's results last changed (the newest generation's time, as its reader sees it)."""
    from sweeps.results import ResultsStore

    when = ResultsStore(sweep_dir).last_change()
    return when.strftime("%Y-%m-%d %H:%M") if when is not None else None


def _cmd_list(args: argparse.Namespace) -> int:
    import pyarrow as pa

    from l2d.storage import Location
    from sweeps.cli._common import render
    from sweeps.folder.marker import is_sweep

    storage = Location.parse(args.storage, "storage")
    if not storage.is_dir():
        raise FileNotFoundError(f"{storage}: no such storage folder")
    rows, unreadable = [], []
    for child in sorted(storage.list(), key=lambda c: c.name):
        if child.is_dir() and is_sweep(child):
            try:
                row = _sweep_row(child)
            except Exception as error:  # noqa: BLE001 - one damaged sweep does not hide the others: named on stderr
                unreadable.append(f"{child}: {str(error).splitlines()[0] if str(error) else type(error).__name__}")
                continue
            rows.append(row)
    for line in unreadable:
        print(f"l2d-sweep list: {line}", file=sys.stderr)
    for line in _copies(rows):
        print(f"l2d-sweep list: {line}", file=sys.stderr)
    shown = ("trial_id", "path") if args.format == "table" else ("trial_id",)
    rows = [{k: v for k, v in row.items() if k not in shown} for row in rows]
    if not rows:
        print(f"{storage}: no sweep here", file=sys.stderr)
        return 1 if unreadable else 0
    print(render(pa.Table.from_pylist(rows), args.format))
    return 0


def _flatten(data, prefix: str = "") -> dict:
    if isinstance(data, dict):
        flat = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): data}


def _cmd_compare(args: argparse.Namespace) -> int:
    import json

    import pyarrow as pa

    from sweeps.cli._common import render
    from sweeps.results import SweepResults
    from sweeps.results.reader import _plain
    from sweeps.results.schema import OBJECTIVE_COLUMNS
    from sweeps.specs.stored import load_sweep_spec

    if args.format == "csv":
        raise ValueError(
            "compare --format csv: compare prints four tables, which one CSV cannot hold; use json (one "
            "document with every table) or jsonl (one row a line, each with its table's name)"
        )
    specs = [load_sweep_spec(path) for path in args.sweeps]
    names = short_labels([spec.sweep_dir for spec in specs])  # the folders' names, longer only where they clash
    sweeps = [{**_sweep_row(spec.sweep_dir), "sweep": name} for spec, name in zip(specs, names)]
    copies = _copies(sweeps, key="sweep")
    column = OBJECTIVE_COLUMNS.get(specs[0].metric, "best_val_mAP")
    # the searches (a confirmation stage's reruns are compared by `results`, within one sweep)
    tables = [SweepResults(spec.sweep_dir).search_rows() for spec in specs]
    best = best_per_pairing(tables, names, column, specs[0].mode)
    paired, why = paired_trials(tables, specs, names, column)
    # What differs between the specs (the storage left out: the sweeps live where they live).
    flat = [{k: v for k, v in _flatten(spec.to_dict()).items() if k != "storage" and k != "name"} for spec in specs]
    keys = sorted(set().union(*flat))
    differ = [
        {"field": key, **{name: str(f.get(key, "-")) for name, f in zip(names, flat)}}
        for key in keys
        if len({str(f.get(key, "-")) for f in flat}) > 1
    ]
    sections = {
        "sweeps": [{k: v for k, v in r.items() if k != "trial_id"} for r in sweeps],
        "best_per_pairing": best,
        "paired": paired,
        "spec_differences": differ,
    }
    if args.format in ("json", "jsonl"):  # every table, whole: the data of what the text shows
        if args.format == "json":
            document = {
                name: [{k: _plain(v) for k, v in row.items()} for row in rows] for name, rows in sections.items()
            }
            print(json.dumps({**document, "column": column, "copies": copies, "no_pairing": why or None}, indent=1))
        else:
            for name, rows in sections.items():
                for row in rows:
                    print(json.dumps({"table": name, **{k: _plain(v) for k, v in row.items()}}))
        return 0
    import textwrap

    for line in copies:
        print(textwrap.fill(f"note: {line}", 100, subsequent_indent="  "))
    print(
        render(
            pa.Table.from_pylist(
                [{k: v for k, v in r.items() if k not in ("path", "sweep_id", "trial_id")} for r in sweeps]
            )
        )
    )
    print(
        f"\nbest {column} per method and pairing" + (f" ({names[1]} - {names[0]} in diff):" if len(names) == 2 else ":")
    )
    print(render(pa.Table.from_pylist(best)))
    if paired:
        diffs = [row["diff"] for row in paired]
        better = sum((d > 0) == (specs[0].mode == "max") for d in diffs if d != 0)
        summary = (
            f"paired (seed {specs[0].seed}): {len(paired)} configuration(s) run by both; {names[1]} - "
            f"{names[0]}: mean {sum(diffs) / len(diffs):+.2f}, {names[1]} better in {better} of {len(paired)}"
        )
        if len(diffs) >= 2:  # the configurations are the pairs: a paired t-interval over them
            from sweeps.results.stats import paired_t

            found = paired_t(diffs)
            summary += f"; 95 % t-interval [{found.low:+.2f}, {found.high:+.2f}], " + (
                "established"
                if found.established
                else f"not established (this design detects |differences| of {found.detectable:.2f} or more)"
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
    elif why:
        print(f"\nno paired comparison: {why}")
    if differ:
        print("\nspec fields that differ:")
        print(render(pa.Table.from_pylist(differ)))
    else:
        print("\nthe specs are the same (but for name and storage)")
    return 0


def best_per_pairing(tables: list[list[dict]], names: list[str], column: str, mode: str) -> list[dict]:
    """One row per (method, teacher, student): the best ``column`` each sweep reached with it (None: not tried), and
    with two sweeps their difference (second minus first)."""
    pick = max if mode == "max" else min
    best: dict[tuple, dict[str, float]] = {}
    for rows, name in zip(tables, names):
        for row in rows:
            if row.get(column) is None:
                continue
            key = (row["method"], row["teacher"], row["student"])
            values = best.setdefault(key, {})
            values[name] = pick(values[name], row[column]) if name in values else row[column]
    out = []
    for (method, teacher, student), values in sorted(best.items()):
        row = {"method": method, "teacher": teacher, "student": student, **{n: values.get(n) for n in names}}
        if len(names) == 2:
            a, b = values.get(names[0]), values.get(names[1])
            row["diff"] = None if a is None or b is None else b - a
        out.append(row)
    return out


def paired_trials(tables: list[list[dict]], specs, names: list[str], column: str) -> tuple[list[dict], str]:
    """The configurations both of two sweeps ran (pairing, method, every hyperparameter equal) under the same seed:
    their values side by side and the difference, a paired comparison. Also why there is none."""
    import math

    from sweeps.results.schema import HPARAM_COLUMNS

    if len(specs) != 2:
        return [], "" if len(specs) < 2 else "it compares two sweeps at a time"
    if specs[0].seed != specs[1].seed:
        return [], f"the sweeps' seeds differ ({specs[0].seed} and {specs[1].seed}): no trial can be paired"

    def key(row):
        values = tuple(None if row.get(c) is None else float(f"{float(row[c]):.9g}") for c in HPARAM_COLUMNS)
        return row["teacher"], row["student"], row["method"], values

    first = {}
    for row in tables[0]:
        if row.get(column) is not None:
            first.setdefault(key(row), row)
    out = []
    for row in tables[1]:
        match = first.get(key(row)) if row.get(column) is not None else None
        if match is None:
            continue
        hparams = ", ".join(
            f"{c}={row[c]:.3g}"
            for c in HPARAM_COLUMNS
            if row.get(c) is not None and not (isinstance(row[c], float) and math.isnan(row[c]))
        )
        out.append(
            {
                "config": len(out) + 1,
                "method": row["method"],
                "student": row["student"],
                f"trial {names[0]}": match["trial_id"],
                names[0]: match[column],
                f"trial {names[1]}": row["trial_id"],
                names[1]: row[column],
                "diff": row[column] - match[column],
                "hyperparameters": hparams,
            }
        )
    return out, "" if out else "no configuration was run by both (the same pairing, method and hyperparameters)"


def add_commands(commands) -> None:
    """Add ``plot``, ``importance``, ``list`` and ``compare``."""
    from sweeps.cli._common import add_format_argument
    from sweeps.results.plots import PLOTS, describe_kinds

    plot = commands.add_parser(
        "plot",
        help=f"draw a sweep: {', '.join(PLOTS)}",
        description=f"Draw one plot of a sweep into a PNG file (--out): {describe_kinds()}. A plot the sweep has too "
        f"little data for is not drawn (said on stderr, exit 0).",
    )
    plot.add_argument("path", help="the sweep folder")
    plot.add_argument("--kind", choices=list(PLOTS), required=True, help="which plot")
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
