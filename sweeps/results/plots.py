"""Plots of a sweep (matplotlib, no display needed), drawn from its results tables and its Optuna study; read commands
write them where ``--out`` says, never into the sweep folder.

Every kind is one function registered with :func:`register_plot` (its name, a one-line description, whether it reads
the study): ``l2d-sweep plot --kind``, its help and the docs generated from it, and :meth:`sweeps.api.Sweep.plot` all
read :data:`PLOTS`, so a new kind is one function in this file; an unknown kind is an error everywhere.
"""

from __future__ import annotations

import io
import math
import struct
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna

from l2d.losses import METHODS
from l2d.storage import SWEEP_MARKER, Location, StorageError, redact
from sweeps.core.vocab import better
from sweeps.results import OBJECTIVE_COLUMNS
from sweeps.specs import Range

# Loaded late, inside the functions that use them: matplotlib, scipy (not needed when the command line starts).

#: Fewer trials than this and an importance or a rank correlation means little: the plots and commands say so.
FEW_TRIALS = 20


class NotEnoughData(Exception):
    """A plot the sweep has too little data for (too few trials, no study): not bad input. ``l2d-sweep plot`` says
    so and exits 0 without writing; :meth:`sweeps.api.Sweep.plot` raises it with the same words."""


@dataclass(frozen=True)
class PlotKind:
    """A registered kind of plot: ``draw(results, spec, study, method)`` returns a matplotlib Figure."""

    name: str
    description: str
    study: str  # "none", "optional" (used when there is one) or "required"
    draw: Callable


#: The plot kinds by name, in the order they are listed (see :func:`register_plot`).
PLOTS: dict[str, PlotKind] = {}


def register_plot(name: str, description: str, study: str = "none"):
    """Register a plot kind (a decorator); ``study``: whether it reads the sweep's Optuna study (``none``,
    ``optional``, ``required``). A name given twice is an error."""
    if study not in ("none", "optional", "required"):
        raise ValueError(f"study={study!r}: one of none, optional, required")

    def add(draw: Callable) -> Callable:
        if name in PLOTS:
            raise ValueError(f"plot kind {name!r} is registered twice")
        PLOTS[name] = PlotKind(name, description, study, draw)
        return draw

    return add


def kinds() -> tuple[str, ...]:
    return tuple(PLOTS)


def describe_kinds() -> str:
    """``history`` (each trial's value ...), ``parallel`` (...): for help texts."""
    return ", ".join(f"`{kind.name}` ({kind.description})" for kind in PLOTS.values())


def draw(kind: str, results, spec, study=None, method: str | None = None):
    """The figure of plot ``kind``.

    Raises:
        ValueError: an unknown kind (the known ones named).
        NotEnoughData: the sweep cannot show it yet (no study for a kind that needs one, too few trials).
    """
    if kind not in PLOTS:
        raise ValueError(f"unknown plot kind {kind!r}; one of {', '.join(PLOTS)}")
    plot = PLOTS[kind]
    if plot.study == "required" and study is None:
        raise NotEnoughData(f"{results.sweep_dir}: the {kind} plot needs the sweep's Optuna study")
    return plot.draw(results=results, spec=spec, study=study, method=method)


def close(figure) -> None:
    """Take ``figure`` out of pyplot's list of open figures (a loop of plots keeps no memory; a notebook shows it
    once)."""
    _pyplot().close(figure)


def _pyplot():
    try:
        import matplotlib

        if "ipykernel" not in sys.modules:  # a notebook keeps its inline backend: figures display in their cells
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("plots need matplotlib: pip install matplotlib") from None
    return plt


def check_png_target(out: str | Location) -> Location:
    """Where a plot may go: a new file, or a PNG this tool wrote before (its metadata says so); never into a sweep.

    Raises:
        StorageError: another file, a folder, or a path inside a sweep folder.
    """
    target = Location.parse(out, "--out")
    if not target.name.lower().endswith(".png"):
        raise StorageError(f"--out {redact(str(target))}: a plot is a PNG file; give a path ending in .png")
    if target.is_local:
        for folder in Path(target.path).parents:
            if (folder / SWEEP_MARKER).is_file():
                raise StorageError(
                    f"--out {target}: is inside the sweep folder {folder}; read commands write nothing "
                    f"into a sweep: give a path outside it"
                )
    if target.exists():
        if target.is_dir() or not written_by_this_tool(target.read_bytes()[:65536]):
            raise StorageError(
                f"--out {redact(str(target))}: exists and was not written by l2d-sweep; refusing to "
                f"replace it: give a new file"
            )
    return target


def written_by_this_tool(head: bytes) -> bool:
    """Whether ``head`` (a file's first bytes) is a PNG this tool wrote: the PNG signature, then a ``tEXt`` chunk
    ``Software`` = ``l2d-sweep`` among its first chunks (what :func:`save_figure` writes). Any other file, one that
    merely contains the words, is not."""
    if not head.startswith(b"\x89PNG\r\n\x1a\n"):
        return False
    at = 8
    while at + 8 <= len(head):
        length, kind = struct.unpack(">I4s", head[at : at + 8])
        data = head[at + 8 : at + 8 + length]
        if kind == b"tEXt" and data == b"Software\x00l2d-sweep":
            return True
        if kind == b"IDAT":  # matplotlib writes its text chunks before the image data
            return False
        at += 12 + length
    return False


def save_figure(figure, out: str | Location) -> str:
    """Write ``figure`` as a PNG to ``out`` (atomically, tagged as this tool's); returns where."""
    plt = _pyplot()
    target = check_png_target(out)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, metadata={"Software": "l2d-sweep"})
    plt.close(figure)
    target.write_bytes(buffer.getvalue())
    return str(target)


def _objective(results) -> tuple[str, str, str]:
    metric, mode = results.objectives[0]
    return metric, mode, OBJECTIVE_COLUMNS[metric]


def history_figure(results, study=None):
    """Each trial's value in the order the search tried them, and the best so far (a step line)."""
    plt = _pyplot()
    metric, mode, column = _objective(results)
    rows = [r for r in results.search_rows() if r.get(column) is not None]
    order = _trial_order(rows, study)
    rows.sort(key=lambda r: order.get(r["trial_id"], math.inf))
    figure, axes = plt.subplots(figsize=(7, 4))
    methods = sorted({r["method"] for r in rows})
    for index, method in enumerate(methods):
        points = [(i + 1, r[column]) for i, r in enumerate(rows) if r["method"] == method]
        axes.scatter([p[0] for p in points], [p[1] for p in points], s=18, c=f"C{index}", label=method)
    best, steps = None, []
    for row in rows:
        if better(row[column], best, mode):
            best = row[column]
        steps.append(best)
    axes.step(range(1, len(steps) + 1), steps, where="post", c="k", lw=1, label="best so far")
    axes.xaxis.get_major_locator().set_params(integer=True)  # trials are counted: no tick at 2.5
    axes.set_xlabel("trial (in the order the search tried it)")
    axes.set_ylabel(f"{metric} at its best epoch")
    axes.set_title(f"optimisation history ({len(rows)} trials)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _trial_order(rows: list[dict], study) -> dict[str, int]:
    if study is not None:
        return {t.user_attrs.get("tune_trial_id"): t.number for t in study.trials if "tune_trial_id" in t.user_attrs}
    return {r["trial_id"]: i for i, r in enumerate(rows)}


def searched_parameters(spec, method: str) -> list[str]:
    """The hyperparameters a sweep searched for ``method`` (the learning rate and its weights with a range)."""
    return [n for n in ("lr", *METHODS[method].defaults) if isinstance(spec.search_space.get(n), Range)]


def chosen_method(results, method: str | None) -> str:
    _, mode, column = _objective(results)
    if method:
        return method
    best = results.sql(
        f"SELECT method FROM trials WHERE {column} IS NOT NULL ORDER BY {column} "
        f"{'DESC' if mode == 'max' else 'ASC'} LIMIT 1"
    ).to_pylist()
    if not best:
        raise NotEnoughData(f"{results.sweep_dir}: no scored trial yet")
    return best[0]["method"]


def parallel_figure(results, spec, method: str | None = None):
    """Parallel coordinates of one method's searched hyperparameters and the objective (each line a trial)."""
    plt = _pyplot()
    from matplotlib import cm

    metric, _, column = _objective(results)
    method = chosen_method(results, method)
    names = searched_parameters(spec, method)
    rows = [r for r in results.search_rows() if r["method"] == method and r.get(column) is not None]
    if not names or not rows:
        raise NotEnoughData(f"{results.sweep_dir}: method {method!r} has no searched hyperparameter or no scored trial")
    axes_names = [*names, column]
    figure, axes = plt.subplots(figsize=(1.8 * len(axes_names) + 2, 4))
    values = {n: [r[n] for r in rows] for n in axes_names}
    logs = {n: n != column and spec.search_space[n].log for n in axes_names}

    def scaled(name, value):
        low, high = min(values[name]), max(values[name])
        if logs[name]:
            value, low, high = math.log10(value), math.log10(low), math.log10(high)
        return 0.5 if high == low else (value - low) / (high - low)

    scores = values[column]
    low, high = min(scores), max(scores)
    for row in rows:
        colour = cm.viridis(0.5 if high == low else (row[column] - low) / (high - low))
        axes.plot(range(len(axes_names)), [scaled(n, row[n]) for n in axes_names], c=colour, alpha=0.8)
    axes.set_xticks(range(len(axes_names)))
    axes.set_xticklabels(
        [f"{n}\n{min(values[n]):.3g}-{max(values[n]):.3g}" + (" (log)" if logs[n] else "") for n in axes_names],
        fontsize=8,
    )
    axes.set_yticks([])
    axes.set_title(f"{method}: {len(rows)} trials, coloured by {metric}")
    figure.tight_layout()
    return figure


def importances(study, spec, method: str, evaluator: str = "ped-anova") -> tuple[dict[str, float], int]:
    """Each searched hyperparameter's importance for ``method`` (over that method's finished trials only, since the
    space is conditional), and the number of trials: ``({name: importance}, trials)``."""
    names = searched_parameters(spec, method)
    trials = [
        t
        for t in study.trials
        if t.state == optuna.trial.TrialState.COMPLETE
        and t.params.get("method") == method
        and all(n in t.params for n in names)
        and "warm_start_from" not in t.user_attrs
    ]
    if len(trials) < 2 or not names:
        return {}, len(trials)
    sub = optuna.create_study(directions=study.directions)
    for trial in trials:
        sub.add_trial(
            optuna.trial.create_trial(
                params={n: trial.params[n] for n in names},
                distributions={n: trial.distributions[n] for n in names},
                values=trial.values,
                state=trial.state,
            )
        )
    if evaluator == "fanova":
        chosen = optuna.importance.FanovaImportanceEvaluator(seed=0)
    else:
        chosen = optuna.importance.PedAnovaImportanceEvaluator()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = optuna.importance.get_param_importances(
            sub, evaluator=chosen, target=(lambda t: t.values[0]) if len(study.directions) > 1 else None
        )
    return dict(found), len(trials)


def importance_figure(study, spec, results, method: str | None = None):
    plt = _pyplot()
    method = chosen_method(results, method)
    found, count = importances(study, spec, method)
    if not found:
        raise NotEnoughData(
            f"method {method!r} has {count} finished trial(s) with every searched hyperparameter: too "
            f"few for an importance; grow the sweep with `l2d-sweep extend`"
        )
    figure, axes = plt.subplots(figsize=(6, 0.5 * len(found) + 1.5))
    names = list(found)[::-1]
    axes.barh(names, [found[n] for n in names], color="C0")
    axes.set_xlabel("importance (PED-ANOVA)")
    caveat = f"; fewer than {FEW_TRIALS}: read with care" if count < FEW_TRIALS else ""
    axes.set_title(f"{method}: {count} trials{caveat}", fontsize=10)
    figure.tight_layout()
    return figure


def pareto_figure(results):
    """The trials and their Pareto front: the first objective against the last (val mAP against student parameters
    for one objective), the front a staircase, the best trial by the first objective marked."""
    plt = _pyplot()
    objectives = results.objectives if len(results.objectives) > 1 else [("val_mAP", "max"), ("student_params", "min")]
    y, x = OBJECTIVE_COLUMNS[objectives[0][0]], OBJECTIVE_COLUMNS[objectives[-1][0]]
    everything = results.sql(f"SELECT trial_id, {x}, {y} FROM trials WHERE {x} IS NOT NULL AND {y} IS NOT NULL")
    front = results.pareto()
    figure, axes = plt.subplots(figsize=(6.5, 4.2))
    axes.scatter(everything[x].to_pylist(), everything[y].to_pylist(), c="0.6", s=18, label="trials")
    points = sorted(zip(front[x].to_pylist(), front[y].to_pylist(), front["trial_id"].to_pylist()))
    if points:
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        # The front as what a budget on the x axis can reach: flat until the next point, then up (or down).
        axes.step(xs, ys, where="post", c="C1", label="Pareto front")
        axes.scatter(xs, ys, c="C1", s=30)
        better_y = max if objectives[0][1] == "max" else min
        chosen = better_y(points, key=lambda p: p[1])
        axes.scatter([chosen[0]], [chosen[1]], marker="*", s=220, c="C3", zorder=5, label=f"best: {chosen[2]}")
    if x == "student_params":
        axes.set_xscale("log")
    axes.set_xlabel(objectives[-1][0].replace("_", " ") + (" (log)" if x == "student_params" else ""))
    axes.set_ylabel(objectives[0][0].replace("_", " ") + " (best epoch)")
    axes.set_title(f"Pareto front: {len(points)} of {everything.num_rows} trials")
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def rung_correlations(results, spec) -> list[dict]:
    """For each ASHA rung (its milestone epoch), over the trials that ran every epoch: Spearman's rank correlation of
    the metric at that rung with the metric at the last epoch. High: stopping at the rung keeps the trials that end
    best on this data; low: early values rank them poorly."""
    from scipy.stats import spearmanr

    metric, _ = results.objectives[0]
    budget = spec.budget
    milestones, epoch = [], float(budget.grace_period)
    while epoch < budget.max_epochs:
        milestones.append(int(epoch))
        epoch *= budget.reduction_factor
    full = {r["trial_id"] for r in results.search_rows() if r["epochs_run"] >= budget.max_epochs}
    by_trial: dict[str, dict[int, float]] = {}
    for row in results.epochs.to_pylist():
        if row["trial_id"] in full and row.get(metric) is not None:
            by_trial.setdefault(row["trial_id"], {})[int(row["epoch"])] = row[metric]
    found = []
    for milestone in milestones:
        pairs = [
            (v[milestone], v[budget.max_epochs]) for v in by_trial.values() if milestone in v and budget.max_epochs in v
        ]
        rho = float(spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic) if len(pairs) >= 3 else None
        found.append({"rung": milestone, "trials": len(pairs), "spearman": rho, "pairs": pairs})
    return found


def rungs_figure(results, spec):
    plt = _pyplot()
    metric, _ = results.objectives[0]
    found = rung_correlations(results, spec)
    if not found:
        raise NotEnoughData("the sweep has no ASHA rung below max_epochs")
    if all(rung["trials"] < 3 for rung in found):
        raise NotEnoughData(
            f"a rung's correlation needs 3 trials that ran every epoch; "
            f"{max(rung['trials'] for rung in found)} did (ASHA stopped the others): grow the sweep "
            f"with `l2d-sweep extend`"
        )
    figure, axes = plt.subplots(1, len(found), figsize=(4 * len(found), 3.8), squeeze=False)
    for axis, rung in zip(axes[0], found):
        axis.scatter([p[0] for p in rung["pairs"]], [p[1] for p in rung["pairs"]], s=18)
        rho = "n/a (fewer than 3 trials)" if rung["spearman"] is None else f"{rung['spearman']:+.2f}"
        axis.set_title(
            f"rung at epoch {rung['rung']}: Spearman {rho}\n({rung['trials']} trials ran every epoch)", fontsize=9
        )
        axis.set_xlabel(f"{metric} at epoch {rung['rung']}")
        axis.set_ylabel(f"{metric} at epoch {spec.budget.max_epochs}")
    figure.tight_layout()
    return figure


# --- the registered kinds (the order is the order they are listed in) --------------------------------------------


@register_plot("history", "each trial's value in the order the search tried them, and the best so far", "optional")
def _history(results, spec, study, method):
    return history_figure(results, study)


@register_plot("parallel", "one method's searched hyperparameters, each line a trial coloured by its value")
def _parallel(results, spec, study, method):
    return parallel_figure(results, spec, method)


@register_plot("importance", "each searched hyperparameter's importance for one method (PED-ANOVA)", "required")
def _importance(results, spec, study, method):
    return importance_figure(study, spec, results, method)


@register_plot("pareto", "the Pareto front of the objectives as a staircase, the best trial marked")
def _pareto(results, spec, study, method):
    return pareto_figure(results)


@register_plot("rungs", "each ASHA rung against the final value, with their rank correlation")
def _rungs(results, spec, study, method):
    return rungs_figure(results, spec)


#: The kinds' names (kept for callers of before; :data:`PLOTS` is the registry).
KINDS = kinds()
