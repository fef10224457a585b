"""Early stopping at a budget where it matters: what ASHA saves and what it costs, and what TPE adds.

On ``search_spaces/fashion.yaml`` (the setting of ``quality.py``: mosaic-fashion at scale 0.5, resnet14t ->
test_resnet, l2d / mld / led / kd and their weights, the learning rate), with ``--trials`` trials (16) of up to
``--max-epochs`` epochs (9) each, three arms per seed:

- ``random, full budget``: Optuna's random sampler, no early stopping: every trial runs every epoch;
- ``random + ASHA``: the same sampler and seed (so the same configurations), ASHA with grace period 1 and
  reduction factor 3 (rungs at 1, 3 and 9 epochs): the difference to the first arm is ASHA's alone;
- ``TPE + ASHA``: the platform's default (L2D's default weights first): the difference to the second arm is
  the searcher's.

Per seed and arm: the epochs spent, the best val mAP found (over every trial and epoch) and the test mAP at that
trial's best epoch. Per seed and ASHA arm: the **epochs ratio** (its epochs / the full search's) and the **regret**
(the full search's best minus its best, on val and on the test mAP at the best epoch; positive: ASHA missed
something). Aggregates over seeds: the mean with a 95 % t-interval and the range. Each seed has its own
teacher (the teacher key holds the seed), shared by its three arms. The sweeps live in ``--storage`` (default: the
spec's) and resume when the script is rerun. ``--summarize JSON`` prints the README block (``--readme`` writes it).

Usage:
    python benchmarks/asha_efficiency.py [--spec search_spaces/fashion.yaml] [--seeds 0 1 2] [--trials 16]
        [--max-epochs 9] [--storage DIR] [--out benchmarks/results/asha_efficiency.json]
"""

from __future__ import annotations

import argparse
import dataclasses
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
    spec_label,
    write_report,
)
from benchmarks._stats import mean_interval, paired, restate  # noqa: E402 - run as a script: the repository on sys.path first

ARMS = {"random, full budget": ("random", "none"), "random + ASHA": ("random", "asha"), "TPE + ASHA": ("tpe", "asha")}
FULL = "random, full budget"


def arm_spec(spec, arm: str, seed: int, args):
    searcher, scheduler = ARMS[arm]
    budget = dataclasses.replace(
        spec.budget,
        searcher=searcher,
        scheduler=scheduler,
        num_samples=args.trials,
        max_epochs=args.max_epochs,
        grace_period=1,
        reduction_factor=3,
    )
    dataset = spec.dataset
    if args.scale is not None:
        dataset = dataclasses.replace(dataset, options={**dataset.options, "scale": args.scale})
    return dataclasses.replace(
        spec,
        name=f"asha-{searcher}-{scheduler}-seed{seed}",
        seed=seed,
        budget=budget,
        storage=args.storage or spec.storage,
        dataset=dataset,
    )


def run_arm(spec, arm: str, seed: int) -> dict:
    from sweeps.tune.runner import resume_sweep, run_sweep, sweep_exists

    start = time.perf_counter()
    outcome = resume_sweep(spec.sweep_dir, quiet=True) if sweep_exists(spec.sweep_dir) else run_sweep(spec, quiet=True)
    wall = time.perf_counter() - start
    results = outcome.results
    best = results.sql(
        "SELECT trial_id, method, student, best_val_mAP, test_mAP_at_best FROM trials "
        "WHERE best_val_mAP IS NOT NULL ORDER BY best_val_mAP DESC LIMIT 1"
    ).to_pylist()[0]
    summary = results.sql(
        "SELECT count(*) AS trials, sum(epochs_run) AS epochs, "
        "sum(CASE WHEN stopped_early THEN 1 ELSE 0 END) AS stopped FROM trials"
    ).to_pylist()[0]
    return {
        "arm": arm,
        "seed": seed,
        "trials": int(summary["trials"]),
        "epochs": int(summary["epochs"]),
        "stopped_early": int(summary["stopped"]),
        "best_val_mAP": best["best_val_mAP"],
        "test_mAP_at_best": best["test_mAP_at_best"],
        "best_trial": f"{best['student']} {best['method']}",
        "wall_s": wall,
        "sweep": str(spec.sweep_dir),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default=str(ROOT / "search_spaces" / "fashion.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--max-epochs", type=int, default=9)
    parser.add_argument(
        "--scale",
        type=float,
        default=None,
        help="the dataset's scale option in place of the spec's (mosaics: 1 = 2,000 train canvases)",
    )
    parser.add_argument(
        "--storage",
        default=None,
        help="where the sweeps live (default: the spec's storage; rerunning the script resumes them)",
    )
    add_report_arguments(parser, "asha_efficiency")
    args = parse_report_args(parser, argv, summarize)
    if args is None:
        return

    from sweeps.specs import load_spec

    spec = load_spec(args.spec)
    began = time.time()
    rows = []
    for seed in args.seeds:
        for arm in ARMS:
            print(f"seed {seed}: {arm} ({args.trials} trials x up to {args.max_epochs} epochs) ...", flush=True)
            rows.append(run_arm(arm_spec(spec, arm, seed, args), arm, seed))
            row = rows[-1]
            print(
                f"  {row['epochs']} epochs, {row['stopped_early']} stopped early, best val mAP "
                f"{row['best_val_mAP']:.2f} (test {row['test_mAP_at_best']:.2f}) by {row['best_trial']}",
                flush=True,
            )
    report = build_report(rows, args, spec_label(args.spec), (time.time() - began) / 60)
    print(summarize(report, False))
    write_report(args.out, "asha_efficiency", rows, **{k: v for k, v in report.items() if k != "rows"})


def _aggregate(values: list[float]) -> dict:
    mean, low, high = mean_interval(values)
    return {"mean": mean, "low": low, "high": high, "min": min(values), "max": max(values), "values": values}


def build_report(rows, args, spec, minutes) -> dict:
    comparisons = []
    for seed in args.seeds:
        by_arm = {r["arm"]: r for r in rows if r["seed"] == seed}
        full = by_arm[FULL]
        for arm in ARMS:
            if arm == FULL:
                continue
            row = by_arm[arm]
            comparisons.append(
                {
                    "seed": seed,
                    "arm": arm,
                    "epochs_ratio": row["epochs"] / full["epochs"],
                    "regret_val": full["best_val_mAP"] - row["best_val_mAP"],
                    "regret_test": full["test_mAP_at_best"] - row["test_mAP_at_best"],
                }
            )
    aggregate = {
        arm: {
            key: _aggregate([c[key] for c in comparisons if c["arm"] == arm])
            for key in ("epochs_ratio", "regret_val", "regret_test")
        }
        for arm in ARMS
        if arm != FULL
    }
    best = {arm: {r["seed"]: r["best_val_mAP"] for r in rows if r["arm"] == arm} for arm in ARMS}
    tests = {arm: {r["seed"]: r["test_mAP_at_best"] for r in rows if r["arm"] == arm} for arm in ARMS}
    searcher = {
        "val": paired(best["TPE + ASHA"], best["random + ASHA"]),
        "test": paired(tests["TPE + ASHA"], tests["random + ASHA"]),
    }
    return {
        "rows": rows,
        "comparisons": comparisons,
        "aggregate": aggregate,
        "tpe_vs_random": searcher,
        "spec": spec,
        "trials": args.trials,
        "max_epochs": args.max_epochs,
        "grace_period": 1,
        "reduction_factor": 3,
        "seeds": args.seeds,
        "minutes": minutes,
        "scale": args.scale,
        "command": command_line("asha_efficiency.py", args.argv),
    }


def summarize(report: dict, write: bool) -> str:
    scale = f" (scale {report['scale']})" if report.get("scale") is not None else ""
    command = report.get("command") or command_line("asha_efficiency.py", [])
    lines = [
        f"$ {command}   # {report['minutes']:.0f} min on this 2-core CPU",
        f"{report['spec']}{scale}: {report['trials']} trials x up to {report['max_epochs']} epochs, ASHA grace "
        f"period {report['grace_period']}, reduction factor {report['reduction_factor']}, seeds {report['seeds']}",
        f"{'seed':>4}  {'search':<21}{'stopped':>8}{'epochs':>7}{'best val mAP':>13}{'its test mAP':>13}"
        f"{'epochs ratio':>13}{'regret val':>11}{'regret test':>12}  best trial",
        "-" * 118,
    ]
    for row in report["rows"]:
        comparison = next(
            (c for c in report["comparisons"] if c["seed"] == row["seed"] and c["arm"] == row["arm"]), None
        )
        extra = (
            (
                f"{comparison['epochs_ratio']:>13.2f}{comparison['regret_val']:>+11.2f}"
                f"{comparison['regret_test']:>+12.2f}"
            )
            if comparison
            else f"{'1.00':>13}{'-':>11}{'-':>12}"
        )
        lines.append(
            f"{row['seed']:>4}  {row['arm']:<21}{row['stopped_early']:>8}{row['epochs']:>7}"
            f"{row['best_val_mAP']:>13.2f}{row['test_mAP_at_best']:>13.2f}{extra}  {row['best_trial']}"
        )
    lines.append("over seeds: mean [95% t-interval] (range)")
    for arm, values in report["aggregate"].items():
        values = {
            name: {**v, **dict(zip(("mean", "low", "high"), mean_interval(v["values"])))} for name, v in values.items()
        }
        parts = [
            f"{name} {v['mean']:+.2f} [{v['low']:+.2f}, {v['high']:+.2f}] ({v['min']:+.2f} to {v['max']:+.2f})"
            if name != "epochs_ratio"
            else f"epochs ratio {v['mean']:.2f} [{v['low']:.2f}, {v['high']:.2f}] ({v['min']:.2f} to {v['max']:.2f})"
            for name, v in values.items()
        ]
        lines.append(
            f"  {arm}: "
            + "; ".join(p.replace("regret_val", "regret val").replace("regret_test", "regret test") for p in parts)
        )
    searcher = {name: restate(diff, 2) for name, diff in report["tpe_vs_random"].items()}
    lines.append(
        f"  TPE - random (both with ASHA), paired by seed: best val mAP {searcher['val']['mean']:+.2f} "
        f"[{searcher['val']['low']:+.2f}, {searcher['val']['high']:+.2f}], its test mAP "
        f"{searcher['test']['mean']:+.2f} [{searcher['test']['low']:+.2f}, {searcher['test']['high']:+.2f}] "
        f"(t-intervals, family-wise 95 % over the two)"
    )
    return readme_block("asha", lines, write)


if __name__ == "__main__":
    main()
