"""What the platform costs over a plain Ray Tune loop: the same trials, side by side, in one Ray session.

Four runs of the same sweep spec (default: the quickstart), one after the other on one local Ray cluster:

- ``l2d-sweep``: our sweep as users run it (the spec's ``resources.trainer``, ``auto`` = in-process for one
  worker): Optuna TPE, ASHA, per-epoch checkpoints, Parquet tables and TensorBoard at every report.
- ``l2d-sweep (torch-trainer)``: the same spec forced to one Ray Train TorchTrainer per trial (the path of a
  multi-worker DDP trial), i.e. our sweep before the in-process path existed.
- ``plain Tune``: a bare Tune function trainable calling the same engine (build the splits, load the teacher,
  ``Distiller.run_epoch``, ``tune.report``) on exactly the trials of the first run (same configs, each for the
  same number of epochs ASHA gave it), with no searcher, scheduler, checkpoint, table or event file; with
  Tune's defaults (``reuse_actors=False``: a fresh process per trial), and again with ``reuse_actors=True``
  (one process for all trials: the fastest plain loop).

For each: wall time, training time (the sum of the epochs' train + eval seconds the engine measured), the
overhead per trial ((wall - training) / trials) and the wall-time ratios to both plain runs. The teacher is trained
(or found in the store) before any timing starts.

Usage:
    python benchmarks/sweep_overhead.py [--spec search_spaces/quickstart.yaml] [--skip-torch-trainer]
        [--out benchmarks/results/sweep_overhead.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import add_sweep_arguments, spec_label, sweep_storage, write_report  # noqa: E402 - run as a script: the repository on sys.path first


def plain_trial(config: dict, context, trials: list[dict]) -> None:
    """A plain Tune function trainable: the engine, nothing else (no checkpoint, table or event file)."""
    import torch
    from ray import tune

    from l2d.losses import METHODS
    from l2d.run import build_run, build_splits, splits_key
    from l2d.teachers import TeacherStore
    from sweeps.search.space import trial_run

    trial = trials[config["index"]]
    torch.set_num_threads(max(1, round(context.cpus_per_worker)))
    run_config = trial_run(context.base, trial).replace(device="cpu")
    splits = build_splits(run_config)
    teacher = None
    if METHODS[run_config.method].needs_teacher:
        teacher, _ = TeacherStore(context.teacher_store).load(splits_key(run_config, splits), 0)
    run = build_run(run_config, splits=splits, teacher=teacher)
    for _ in range(trial["epochs"]):
        tune.report(run.distiller.run_epoch())


def run_plain(spec, trials: list[dict], reuse_actors: bool) -> tuple[float, float, int]:
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from sweeps.tune.trial import TrialContext

    trainable = tune.with_resources(
        tune.with_parameters(plain_trial, context=TrialContext.from_spec(spec), trials=trials),
        {"cpu": spec.resources.cpus_per_worker},
    )
    with tempfile.TemporaryDirectory() as storage:
        tuner = tune.Tuner(
            trainable,
            param_space={"index": tune.grid_search(list(range(len(trials))))},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=spec.resources.max_concurrent_trials, reuse_actors=reuse_actors
            ),
            run_config=tune.RunConfig(
                name="plain",
                storage_path=storage,
                verbose=0,
                # Ray 2.60 adds no result logger by itself; without one
                # metrics_dataframe is empty
                callbacks=[JsonLoggerCallback()],
            ),
        )
        start = time.perf_counter()
        grid = tuner.fit()
        wall = time.perf_counter() - start
        frames = [result.metrics_dataframe for result in grid]
    if any(result.error for result in grid):
        raise RuntimeError(f"a plain Tune trial failed: {[str(r.error) for r in grid if r.error][0]}")
    training = float(sum(frame["epoch_seconds"].sum() for frame in frames))
    epochs = sum(len(frame) for frame in frames)
    return wall, training, epochs


def run_ours(spec) -> tuple[float, float, list[dict]]:
    from sweeps.tune.runner import run_sweep

    start = time.perf_counter()
    results = run_sweep(spec, new=True, quiet=True).results
    wall = time.perf_counter() - start
    training = results.sql("SELECT sum(epoch_seconds) AS s FROM epochs").column("s")[0].as_py()
    trials = results.sql("SELECT * FROM trials ORDER BY trial_id").to_pylist()
    return wall, float(training), trials


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_sweep_arguments(parser, "sweep_overhead")
    parser.add_argument("--skip-torch-trainer", action="store_true", help="do not time the TorchTrainer path")
    args = parser.parse_args(argv)

    from sweeps.specs import load_spec
    from sweeps.tune.runner import init_ray
    from sweeps.tune.teacher_phase import teacher_phase

    with sweep_storage(load_spec(args.spec), args.storage) as spec:
        spec = dataclasses.replace(spec, name="overhead")
        init_ray()
        teacher_phase(spec, print)

        print(f"[1/4] l2d-sweep on {args.spec} ({spec.trainer}) ...", flush=True)
        ours_wall, ours_training, trials = run_ours(spec)
        runs = [
            {
                "run": "l2d-sweep",
                "trainer": spec.trainer,
                "wall_s": ours_wall,
                "training_s": ours_training,
                "trials": len(trials),
                "epochs": int(sum(t["epochs_run"] for t in trials)),
            }
        ]
        plain_trials = [
            {**{k: v for k, v in t.items() if v is not None}, "epochs": int(t["epochs_run"])} for t in trials
        ]
        for step, reuse in ((2, False), (3, True)):
            label = "plain Tune" + (" (reuse_actors)" if reuse else "")
            print(f"[{step}/4] {label} on the same {len(trials)} trials ...", flush=True)
            wall, training, epochs = run_plain(spec, plain_trials, reuse)
            runs.append(
                {
                    "run": label,
                    "trainer": "function trainable",
                    "reuse_actors": reuse,
                    "wall_s": wall,
                    "training_s": training,
                    "trials": len(trials),
                    "epochs": epochs,
                }
            )
        if not args.skip_torch_trainer:
            forced = dataclasses.replace(spec, resources=dataclasses.replace(spec.resources, trainer="torch-trainer"))
            print("[4/4] l2d-sweep with one TorchTrainer per trial ...", flush=True)
            wall, training, forced_trials = run_ours(forced)
            runs.append(
                {
                    "run": "l2d-sweep (torch-trainer)",
                    "trainer": "torch-trainer",
                    "wall_s": wall,
                    "training_s": training,
                    "trials": len(forced_trials),
                    "epochs": int(sum(t["epochs_run"] for t in forced_trials)),
                }
            )

    plain_wall = runs[1]["wall_s"]
    best_plain = runs[2]["wall_s"]
    for run in runs:
        run["overhead_per_trial_s"] = (run["wall_s"] - run["training_s"]) / run["trials"]
        run["ratio_to_plain"] = run["wall_s"] / plain_wall
        run["ratio_to_plain_reuse"] = run["wall_s"] / best_plain
    header = (
        f"{'run':<30}{'trials':>7}{'epochs':>7}{'wall s':>9}{'train s':>9}{'overhead/trial s':>18}"
        f"{'x plain':>9}{'x plain (reuse)':>17}"
    )
    print(header)
    print("-" * len(header))
    for run in runs:
        print(
            f"{run['run']:<30}{run['trials']:>7}{run['epochs']:>7}{run['wall_s']:>9.1f}{run['training_s']:>9.1f}"
            f"{run['overhead_per_trial_s']:>18.1f}{run['ratio_to_plain']:>9.2f}{run['ratio_to_plain_reuse']:>17.2f}"
        )
    write_report(args.out, "sweep_overhead", runs, spec=spec_label(args.spec))


if __name__ == "__main__":
    main()
