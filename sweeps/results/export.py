"""Take a trial's best student out of a sweep: its ``best/`` checkpoint written as an export folder
(:mod:`l2d.export`), with a model card that says what it is, how good it was and what produced it."""

from __future__ import annotations

import io
import logging
import time

import torch

from l2d.export import check_formats, save_student
from l2d.losses import METHODS
from l2d.models import build_model, count_parameters
from l2d.storage import Location
from sweeps.core.vocab import SCORED, sign
from sweeps.folder.checkpoints import BEST, UnreadableCheckpointError, read_best
from sweeps.folder.marker import read_marker
from sweeps.folder.provenance import git_commit, versions
from sweeps.results import OBJECTIVE_COLUMNS, SweepResults
from sweeps.results.confirm import summarize
from sweeps.specs.stored import load_sweep_spec

logger = logging.getLogger(__name__)


def choose_trial(sweep_dir: Location, trial_id: str | None, say=None):
    """``(spec, row)``: the trial ``trial_id``; else the confirmed winner's best run when the sweep has a confirmation
    stage with a winner (:mod:`sweeps.results.confirm`), else the best finished trial of the search by the spec's
    primary objective. ``say`` is told which it took."""
    spec = load_sweep_spec(sweep_dir)
    results = SweepResults(spec.sweep_dir)
    rows = results.trials.to_pylist()
    if trial_id is not None:
        row = next((r for r in rows if r["trial_id"] == trial_id), None)
        if row is None:
            raise ValueError(
                f"--trial {trial_id}: no such trial in {spec.sweep_dir} (it has: "
                f"{', '.join(r['trial_id'] for r in rows[:12])}{'...' if len(rows) > 12 else ''})"
            )
        return spec, row

    say = say or (lambda text: None)
    confirmation = summarize(spec, rows)
    chosen = confirmation.chosen() if confirmation is not None else None
    if chosen is not None:
        run, words = chosen
        say(words)
        return spec, next(r for r in rows if r["trial_id"] == run)
    column = OBJECTIVE_COLUMNS[spec.metric]
    scored = [r for r in results.search_rows() if r.get(column) is not None and r["status"] in SCORED]
    if not scored:
        raise ValueError(f"{spec.sweep_dir}: no finished trial with a {spec.metric} to export yet")
    best = max(scored, key=lambda r: (sign(spec.mode) * r[column], r["trial_id"]))
    say(
        f"the search's best trial by {spec.metric} ({best['trial_id']}: one run, at seed {spec.seed}"
        + (
            "; the confirmation stage has no winner yet)"
            if confirmation is not None
            else "; `l2d-sweep confirm` reruns the finalists on fresh seeds)"
        )
    )
    return spec, best


def export_trial(
    sweep_dir: str | Location,
    trial_id: str | None,
    out: str | Location,
    formats: tuple[str, ...] = ("safetensors",),
    progress=print,
) -> dict:
    """Export trial ``trial_id`` (default: the best) of a sweep into ``out``; returns the card.

    Raises:
        ValueError: no such trial, or no best checkpoint (a trial that failed before its first epoch ended).
    """
    check_formats(formats)
    spec, row = choose_trial(Location.parse(sweep_dir, "sweep folder"), trial_id, progress)
    run_dir = spec.sweep_dir / "train" / f"trial-{row['trial_id']}"
    try:
        info, weights, _ = read_best(run_dir)
    except FileNotFoundError:
        raise ValueError(
            f"trial {row['trial_id']} ({row['status']}) has no best checkpoint in {run_dir / BEST} (a "
            f"trial that failed in its first epoch, or a sweep from before best checkpoints were "
            f"kept)"
        ) from None
    progress(
        f"exporting trial {row['trial_id']} of {spec.sweep_dir}: {row['teacher']} -> {row['student']}, "
        f"{row['method']}, best epoch by {spec.metric}"
    )
    try:
        state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
        model = build_model(info["backbone"], info["num_classes"], info["embed_dim"])
        model.load_state_dict(state)
    except Exception as error:  # noqa: BLE001 - torch.load and load_state_dict raise many kinds for a bad file
        raise UnreadableCheckpointError(
            f"{run_dir / BEST / (info.get('files') or {}).get('model', 'model.pt')}: "
            f"unreadable weights ({str(error).splitlines()[0][:200]})"
        ) from None

    hparams = {name: row[name] for name in METHODS[row["method"]].defaults if row.get(name) is not None}
    marker = read_marker(spec.sweep_dir) or {}
    metrics = {k: v for k, v in info["metrics"].items() if isinstance(v, (int, float))}
    card = {
        "backbone": info["backbone"],
        "num_classes": info["num_classes"],
        "class_names": info["class_names"],
        "embed_dim": info["embed_dim"],
        "image_size": info["image_size"],
        "parameters": count_parameters(model),
        "eval_batch_size": spec.recipe.batch_size,
        "teacher": row["teacher"],
        "method": row["method"],
        "hparams": hparams,
        "lr": row.get("lr"),
        "dataset": {"name": spec.dataset.name, "root": spec.dataset.root, "options": dict(spec.dataset.options)},
        "epoch": info["epoch"],
        "selected_by": f"{info['metric']} ({info['mode']})" + _selection_said(info.get("selection")),
        "metrics": metrics,
        "latency_ms": metrics.get("latency_ms"),
        "device": info.get("device", "the trial's device"),
        "sweep": {"dir": str(spec.sweep_dir), "name": spec.name, "sweep_id": marker.get("sweep_id")},
        "trial_id": row["trial_id"],
        "trial_status": row["status"],
        "versions": versions(),
        "git_commit": git_commit(),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    selection = info.get("selection")
    if selection:  # budget.selection_seeds: the metrics are the means of the trial's students, this is the first
        card["selection"] = selection
    save_student(model, card, out, formats, progress)
    own = ""
    if selection:
        own = (
            f"; the mean of the trial's {len(selection['seeds'])} students, this one (seed {selection['seeds'][0]}) "
            f"{selection['metric']} {selection['values'][0]:.2f}"
        )
    progress(
        f"  card: {Location.parse(out) / 'card.json'} and README.md (val mAP "
        f"{metrics.get('val_mAP', float('nan')):.2f}, test mAP {metrics.get('test_mAP') or float('nan'):.2f} at "
        f"epoch {info['epoch']}{own})"
    )
    return card


def _selection_said(selection: dict | None) -> str:
    """A multi-seed trial's selection, in the card's words: its metrics are the mean of its students'."""
    if not selection:
        return ""
    seeds = selection["seeds"]
    return (
        f", the mean of {len(seeds)} students (seeds {seeds[0]} to {seeds[-1]}; budget.selection_seeds); "
        f"the weights are seed {seeds[0]}'s"
    )
