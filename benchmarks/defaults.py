"""Weights that transfer, and the defaults of `l2d-sweep train` on the embedded datasets.

The setting is `l2d-sweep train`'s own default: mosaic-digits (scale 1: 2,000 train / 500 val / 1,000 test
canvases at 32 px), teacher resnet14t (3 epochs, from the teacher store), student resnet10t from scratch, 4 epochs,
Adam with one-cycle lr 2e-3, batch 64, D = 128; the metrics of the last epoch on the test split.

1. **Search**: an l2d-sweep over L2D's three weights (Optuna TPE + ASHA, ``--trials`` trials, the val split only),
   the recipe otherwise fixed; its best full-budget trial's weights, rounded to 3 significant digits, are the
   candidate defaults.
2. **Seeds**: every arm trained with the same seeds, paired by seed against the student alone (``bce``):
   ``official`` (the COCO weights as they are), ``labels`` (times C / 80), ``balanced`` (times the factor that
   makes the weighted terms as large as the BCE at initialisation, measured per seed), ``tuned`` (the search's),
   and ``defaults`` (what `l2d-sweep train` uses now: l2d.data's ``method_weights``, or the official weights).

Every run is cached (``<storage>/defaults-runs.jsonl``): a rerun resumes. ``--summarize JSON`` prints the README
block from a saved report (``--readme`` writes it).

Usage:
    python benchmarks/defaults.py [--trials 12] [--seeds 0 1 2 3 4] [--storage runs/benchmarks]
        [--out benchmarks/results/defaults.json]
    python benchmarks/defaults.py --summarize benchmarks/results/defaults.json --readme
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import (  # noqa: E402 - run as a script: the repository on sys.path first
    add_report_arguments,
    command_line,
    parse_report_args,
    readme_block,
    write_report,
)
from benchmarks._stats import RunCache, paired, restate, verdict  # noqa: E402 - run as a script: the repository on sys.path first
from sweeps.cli._common import key_value  # noqa: E402 - run as a script: the repository on sys.path first

ARMS = ("bce", "official", "labels", "balanced", "tuned", "defaults")
DATASET = "mosaic-digits"


def round3(value: float) -> float:
    return float(f"{value:.3g}")


def search_spec(args):
    from sweeps.specs import parse_spec

    return parse_spec(
        {
            "name": "defaults-l2d-search",
            "dataset": {"name": DATASET, "options": dict(args.options)},
            "pairings": [{"teacher": args.teacher, "students": [args.student]}],
            "methods": ["l2d"],
            "search_space": {
                "lambda_mld": {"low": 0.1, "high": 50},
                "lambda_cd": {"low": 0.1, "high": 300},
                "lambda_id": {"low": 1, "high": 3000},
            },
            "budget": {
                "num_samples": args.trials,
                "max_epochs": args.epochs,
                "grace_period": min(2, args.epochs),
                "reduction_factor": 2,
                "teacher_epochs": args.teacher_epochs,
            },
            "resources": {"workers_per_trial": 1, "cpus_per_worker": os.cpu_count() or 1, "max_concurrent_trials": 1},
            "recipe": {"batch_size": 64, "embed_dim": 128},
            "storage": args.storage,
            "seed": 0,
        },
        "benchmarks/defaults.py",
    )


def search(args) -> dict:
    """The sweep (resumed when it exists) and its best full-budget trial."""
    from sweeps.results import SweepResults
    from sweeps.tune.runner import resume_sweep, run_sweep, sweep_exists

    spec = search_spec(args)
    if sweep_exists(spec.sweep_dir):
        results = resume_sweep(spec.sweep_dir, quiet=True).results
    else:
        results = run_sweep(spec, quiet=True).results
    results = results or SweepResults(spec.sweep_dir)
    full = results.sql(
        f"SELECT * FROM trials WHERE status = 'completed' AND epochs_run = {args.epochs} ORDER BY last_val_mAP DESC"
    ).to_pylist()
    if not full:
        sys.exit(f"error: no trial of {spec.sweep_dir} ran all {args.epochs} epochs")
    best = full[0]
    weights = {name: round3(best[name]) for name in ("lambda_mld", "lambda_cd", "lambda_id")}
    return {
        "sweep": str(spec.sweep_dir),
        "trials": results.trials.num_rows,
        "full_budget": len(full),
        "best_trial": best["trial_id"],
        "best_last_val_mAP": best["last_val_mAP"],
        "weights": weights,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=12, help="trials of the weight search")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=None, help="student epochs (default: train's, 4)")
    parser.add_argument("--teacher", default=None)
    parser.add_argument("--student", default=None)
    parser.add_argument("--teacher-epochs", type=int, default=None)
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        type=key_value,
        metavar="KEY=VALUE",
        help="a dataset option (default: none, as `l2d-sweep train`)",
    )
    parser.add_argument("--storage", default=str(ROOT / "runs" / "benchmarks"))
    add_report_arguments(parser, "defaults")
    args = parse_report_args(parser, argv, summarize)
    if args is None:
        return

    import torch

    from l2d.data import DATASETS, check_dataset_options
    from l2d.losses import official_weights
    from l2d.run import RunConfig, balanced_weights, build_run, build_splits, fit, get_teacher, resolve
    from l2d.teachers import TeacherStore

    args.options = check_dataset_options(DATASET, dict(args.option))
    info = DATASETS[DATASET]
    args.epochs = args.epochs or info.epochs
    args.teacher_epochs = args.teacher_epochs or info.teacher_epochs
    base = resolve(
        RunConfig(
            dataset=DATASET,
            dataset_options=args.options,
            teacher=args.teacher,
            student=args.student,
            epochs=args.epochs,
            teacher_epochs=args.teacher_epochs,
            device="cpu",
        )
    )
    args.teacher, args.student = base.teacher, base.student
    torch.set_num_threads(os.cpu_count() or 1)
    began = time.time()
    splits = build_splits(base)
    store = TeacherStore(Path(args.storage) / "teachers")
    teacher, card, _ = get_teacher(base, store, splits)
    cache = RunCache(Path(args.storage) / "defaults-runs.jsonl")

    print(
        f"1. search: {args.trials} trials over L2D's weights on {DATASET} ({args.student}, {args.epochs} epochs)",
        flush=True,
    )
    found = search(args)
    print(
        f"   best of {found['full_budget']} full-budget trials: val mAP {found['best_last_val_mAP']:.2f} with "
        + ", ".join(f"{k}={v:g}" for k, v in found["weights"].items()),
        flush=True,
    )
    defaults = resolve(RunConfig(dataset=DATASET, method="l2d")).hparams
    num_classes = len(splits["train"].class_names)

    def hparams_of(arm: str, seed: int) -> tuple[str, dict, float | None]:
        if arm == "bce":
            return "bce", {}, None
        if arm in ("official", "labels"):
            return "l2d", official_weights("l2d", arm, num_classes), None
        if arm == "balanced":
            weights, factor = balanced_weights(base.replace(method="l2d", seed=seed), splits=splits, teacher=teacher)
            return "l2d", weights, factor
        return "l2d", dict(found["weights"] if arm == "tuned" else defaults), None

    runs = []
    print(f"2. seeds {args.seeds}: {', '.join(ARMS)}", flush=True)
    for arm in ARMS:
        for seed in args.seeds:
            method, hparams, factor = hparams_of(arm, seed)
            key = cache.key(
                dataset=DATASET,
                options=args.options,
                teacher=args.teacher,
                student=args.student,
                epochs=args.epochs,
                lr=base.lr,
                method=method,
                hparams=hparams,
                seed=seed,
            )
            result = cache.get(key)
            if result is None:
                start = time.time()
                run = build_run(base.replace(method=method, hparams=hparams, seed=seed), splits=splits, teacher=teacher)
                last = fit(run, test="last")[-1]
                result = {k: last[k] for k in ("test_mAP", "test_CF1", "test_OF1", "val_mAP")}
                result["seconds"] = time.time() - start
                cache.put(key, result)
            runs.append({"arm": arm, "seed": seed, "method": method, "hparams": hparams, "factor": factor, **result})
            print(f"   {arm:<9} seed {seed}: test mAP {result['test_mAP']:.2f} ({result['seconds']:.0f} s)", flush=True)

    minutes = (time.time() - began) / 60
    report = build_report(runs, found, defaults, args, card, minutes)
    print(summarize(report, False))
    write_report(args.out, "defaults", report["rows"], **{k: v for k, v in report.items() if k != "rows"})


def build_report(runs, found, defaults, args, card, minutes) -> dict:
    import statistics

    by_arm = {arm: {r["seed"]: r["test_mAP"] for r in runs if r["arm"] == arm} for arm in ARMS}
    rows = []
    for arm in ARMS:
        group = [r for r in runs if r["arm"] == arm]
        row = {
            "arm": arm,
            "method": group[0]["method"],
            "seeds": len(group),
            "hparams": group[0]["hparams"] if arm != "balanced" else None,
            "factor": statistics.fmean(r["factor"] for r in group) if arm == "balanced" else None,
        }
        for metric in ("test_mAP", "test_CF1", "test_OF1"):
            values = [r[metric] for r in group]
            row[metric], row[f"{metric}_std"] = (
                statistics.fmean(values),
                statistics.stdev(values) if len(values) > 1 else 0.0,
            )
        row["vs_bce"] = paired(by_arm[arm], by_arm["bce"]) if arm != "bce" else None
        rows.append(row)
    return {
        "rows": rows,
        "runs": runs,
        "search": found,
        "defaults": defaults,
        "dataset": DATASET,
        "options": args.options,
        "teacher": args.teacher,
        "student": args.student,
        "epochs": args.epochs,
        "seeds": args.seeds,
        "teacher_test_mAP": card.get("test_mAP"),
        "minutes": minutes,
        "command": command_line("defaults.py", args.argv),
        "defaults_are_tuned": defaults == found["weights"],
    }


def summarize(report: dict, write: bool) -> str:
    command = report.get("command") or command_line("defaults.py", [])
    against_bce = sum(1 for r in report["rows"] if r["vs_bce"])
    rows = [{**r, "vs_bce": restate(r["vs_bce"], against_bce)} for r in report["rows"]]
    lines = [
        f"$ {command}   # {report['minutes']:.0f} min on this 2-core CPU",
        f"{report['dataset']}{' ' + str(report['options']) if report['options'] else ''}: "
        f"{report['teacher']} (test mAP "
        f"{report['teacher_test_mAP']:.2f}) -> {report['student']}, {report['epochs']} epochs, seeds "
        f"{report['seeds']}; paired differences to the student alone (bce): t-intervals, family-wise 95 % "
        f"(Bonferroni over {against_bce} comparisons)",
        f"{'arm':<10}{'weights (mld, cd, id)':<26}{'test mAP':>16}{'CF1':>8}{'OF1':>8}  {'vs bce':<26}verdict",
        "-" * 118,
    ]
    for row in rows:
        if row["arm"] == "bce":
            weights = "-"
        elif row["arm"] == "balanced":
            weights = f"official x {row['factor']:.3f} (mean)"
        else:
            weights = ", ".join(f"{row['hparams'][k]:g}" for k in ("lambda_mld", "lambda_cd", "lambda_id"))
        diff = row["vs_bce"]
        versus = f"{diff['mean']:+.2f} [{diff['low']:+.2f}, {diff['high']:+.2f}]" if diff else "-"
        said = verdict(diff, row["arm"], "bce") if diff else f"seed-to-seed std {row['test_mAP_std']:.2f}"
        lines.append(
            f"{row['arm']:<10}{weights:<26}{row['test_mAP']:>8.2f} +- {row['test_mAP_std']:<4.2f}"
            f"{row['test_CF1']:>8.2f}{row['test_OF1']:>8.2f}  {versus:<26}{said}"
        )
    search = report["search"]
    lines.append(
        f"search: {search['trials']} trials ({search['full_budget']} ran all epochs), best val mAP "
        f"{search['best_last_val_mAP']:.2f}; l2d-sweep train's defaults "
        f"{'are' if report['defaults_are_tuned'] else 'are NOT'} the tuned weights"
    )
    return readme_block("defaults", lines, write)


if __name__ == "__main__":
    main()
