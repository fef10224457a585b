"""Commands that analyse sweeps without a browser: ``plot``, ``importance``, ``list`` and ``compare``. They read; they
write only the file ``--out`` names."""

from __future__ import annotations

import argparse
import sys


def _study_or_none(path):
    """The sweep's study, read-only (None, and a note, when it has none)."""
    from sweeps.study import load_sweep_study

    try:
        return load_sweep_study(path, read_only=True)[1]
    except FileNotFoundError as error:
        print(f"l2d-sweep: {error}", file=sys.stderr)
        return None


def _cmd_plot(args: argparse.Namespace) -> int:
    from sweeps import plots
    from sweeps.results import SweepResults
    from sweeps.stored import load_sweep_spec

    plots.check_png_target(args.out)  # refused before anything is read
    spec = load_sweep_spec(args.path)
    results = SweepResults(spec.sweep_dir)
    if args.kind == "history":
        figure = plots.history_figure(results, _study_or_none(args.path))
    elif args.kind == "parallel":
        figure = plots.parallel_figure(results, spec, args.method)
    elif args.kind == "importance":
        study = _study_or_none(args.path)
        if study is None:
            raise ValueError(f"{spec.sweep_dir}: the importance plot needs the sweep's Optuna study")
        figure = plots.importance_figure(study, spec, results, args.method)
    elif args.kind == "pareto":
        figure = plots.pareto_figure(results)
    else:
        figure = plots.rungs_figure(results, spec)
    where = plots.save_figure(figure, args.out)
    print(f"wrote the {args.kind} plot of {spec.sweep_dir} to {where}", file=sys.stderr)
    return 0


def _cmd_importance(args: argparse.Namespace) -> int:
    from sweeps import plots
    from sweeps.results import SweepResults
    from sweeps.stored import load_sweep_spec

    spec = load_sweep_spec(args.path)
    study = _study_or_none(args.path)
    if study is None:
        return 1
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
            print(f"  ({count} trials: fewer than {plots.FEW_TRIALS}, so these numbers mean little; grow the sweep with "
                  f"`l2d-sweep extend`)")
    del results
    return 0


def add_commands(commands) -> None:
    """Add ``plot`` and ``importance``."""
    from sweeps.plots import KINDS

    plot = commands.add_parser(
        "plot", help="draw a sweep: history, parallel coordinates, importance, Pareto front, ASHA rungs",
        description="Draw one plot of a sweep into a PNG file (--out): `history` (each trial's value in the order "
                    "tried, and the best so far), `parallel` (one method's searched hyperparameters, each line a "
                    "trial), `importance` (PED-ANOVA over one method's trials), `pareto` (the front as a staircase, "
                    "the best trial marked), `rungs` (each ASHA rung against the final value, with their rank "
                    "correlation).")
    plot.add_argument("path", help="the sweep folder")
    plot.add_argument("--kind", choices=KINDS, required=True, help="which plot")
    plot.add_argument("--out", required=True, help="the PNG file to write (new, or one this tool wrote)")
    plot.add_argument("--method", help="for parallel / importance: the method (default: the best trial's)")
    plot.set_defaults(func=_cmd_plot)

    importance = commands.add_parser(
        "importance", help="how much each hyperparameter mattered, per method",
        description="Each searched hyperparameter's importance for each method of a sweep (over that method's "
                    "finished trials), with the number of trials it rests on and a warning when they are few.")
    importance.add_argument("path", help="the sweep folder")
    importance.add_argument("--method", help="one method only")
    importance.add_argument("--evaluator", choices=["ped-anova", "fanova"], default="ped-anova",
                            help="Optuna's importance evaluator (default: ped-anova)")
    importance.set_defaults(func=_cmd_importance)
