"""Plots of a sweep's results (matplotlib, no display needed): read commands draw them into ``--out``, never into the
sweep folder."""

from __future__ import annotations

import io

from l2d.storage import Location


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("plots need matplotlib: pip install matplotlib") from None
    return plt


def save_figure(figure, out: str | Location) -> str:
    """Write ``figure`` as a PNG to ``out`` (atomically); returns where."""
    plt = _pyplot()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    target = Location.parse(out, "--out")
    target.write_bytes(buffer.getvalue())
    return str(target)


def pareto_figure(results):
    """The trials and their Pareto front: the first objective against the last (val mAP against student parameters
    for one objective), the front drawn as a staircase."""
    from sweeps.results import OBJECTIVE_COLUMNS

    plt = _pyplot()
    objectives = results.objectives if len(results.objectives) > 1 else [("val_mAP", "max"), ("student_params", "min")]
    y, x = OBJECTIVE_COLUMNS[objectives[0][0]], OBJECTIVE_COLUMNS[objectives[-1][0]]
    everything = results.sql(f"SELECT {x}, {y} FROM trials WHERE {x} IS NOT NULL AND {y} IS NOT NULL")
    front = results.pareto()
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.scatter(everything[x].to_pylist(), everything[y].to_pylist(), c="0.6", label="trials")
    points = sorted(zip(front[x].to_pylist(), front[y].to_pylist()))
    if points:
        axes.step([p[0] for p in points], [p[1] for p in points], where="post", c="C1", label="Pareto front")
        axes.scatter([p[0] for p in points], [p[1] for p in points], c="C1")
    if x == "student_params":
        axes.set_xscale("log")
    axes.set_xlabel(objectives[-1][0].replace("_", " "))
    axes.set_ylabel(objectives[0][0].replace("_", " ") + " (best epoch)")
    axes.legend()
    figure.tight_layout()
    return figure
