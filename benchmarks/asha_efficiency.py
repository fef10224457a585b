"""What ASHA + TPE saves: full-budget random search vs ASHA + TPE, same number of trials, same space.

For each seed, two sweeps of the quickstart spec (same space, trial count and epoch budget):

- ``random, full budget``: Optuna's random sampler, no early stopping (every trial runs max_epochs);
- ``TPE + ASHA``: the platform's default (Optuna TPE, the official L2D weights as first point, ASHA stopping
  weak trials at rungs of 1, 2 epochs).

Reported per sweep: epochs spent (the sum over trials), the best val mAP found (over every trial and epoch)
and the test mAP at that trial's best epoch; per seed the ratio of epochs (ASHA / random) and the mAP
difference (ASHA - random). Each seed has its own teacher (the teacher key holds the seed), shared by both arms.

Usage:
    python benchmarks/asha_efficiency.py [--spec search_spaces/quickstart.yaml] [--seeds 0 1]
        [--out benchmarks/results/asha_efficiency.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import add_sweep_arguments, spec_label, sweep_storage, write_report  # noqa: E402

ARMS = {"random, full budget": ("random", "none"), "TPE + ASHA": ("tpe", "asha")}


def run_arm(spec, arm: str, seed: int) -> dict:
    from sweeps.runner import run_sweep

    searcher, scheduler = ARMS[arm]
    spec = dataclasses.replace(spec, name=f"asha-{searcher}-{scheduler}-seed{seed}", seed=seed,
                               budget=dataclasses.replace(spec.budget, searcher=searcher, scheduler=scheduler))
    start = time.perf_counter()
    results = run_sweep(spec, new=True, quiet=True).results
    wall = time.perf_counter() - start
    best = results.sql("SELECT trial_id, method, student, best_val_mAP, test_mAP_at_best FROM trials "
                       "WHERE best_val_mAP IS NOT NULL ORDER BY best_val_mAP DESC LIMIT 1").to_pylist()[0]
    summary = results.sql("SELECT count(*) AS trials, sum(epochs_run) AS epochs, "
                          "sum(CASE WHEN stopped_early THEN 1 ELSE 0 END) AS stopped FROM trials").to_pylist()[0]
    return {"arm": arm, "seed": seed, "trials": int(summary["trials"]), "epochs": int(summary["epochs"]),
            "stopped_early": int(summary["stopped"]), "best_val_mAP": best["best_val_mAP"],
            "test_mAP_at_best": best["test_mAP_at_best"], "best_trial": f"{best['student']} {best['method']}",
            "wall_s": wall}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_sweep_arguments(parser, "asha_efficiency")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args(argv)

    from sweeps.spec import load_spec

    rows = []
    with sweep_storage(load_spec(args.spec), args.storage) as spec:
        for seed in args.seeds:
            for arm in ARMS:
                print(f"seed {seed}: {arm} ({spec.budget.num_samples} trials x up to {spec.budget.max_epochs} "
                      f"epochs) ...", flush=True)
                rows.append(run_arm(spec, arm, seed))

    comparisons = []
    for seed in args.seeds:
        full, asha = (next(r for r in rows if r["seed"] == seed and r["arm"] == arm) for arm in ARMS)
        comparisons.append({"seed": seed, "epochs_ratio": asha["epochs"] / full["epochs"],
                            "val_mAP_diff": asha["best_val_mAP"] - full["best_val_mAP"],
                            "test_mAP_diff": asha["test_mAP_at_best"] - full["test_mAP_at_best"]})
    header = (f"{'seed':>4}  {'search':<20}{'trials':>7}{'stopped':>8}{'epochs':>7}{'best val mAP':>13}"
              f"{'its test mAP':>13}  best trial")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['seed']:>4}  {row['arm']:<20}{row['trials']:>7}{row['stopped_early']:>8}{row['epochs']:>7}"
              f"{row['best_val_mAP']:>13.2f}{row['test_mAP_at_best']:>13.2f}  {row['best_trial']}")
    for c in comparisons:
        print(f"seed {c['seed']}: ASHA used {c['epochs_ratio']:.2f}x the epochs; best val mAP "
              f"{c['val_mAP_diff']:+.2f}, its test mAP {c['test_mAP_diff']:+.2f} (ASHA - random)")
    mean = {key: statistics.fmean(c[key] for c in comparisons)
            for key in ("epochs_ratio", "val_mAP_diff", "test_mAP_diff")}
    print(f"mean over seeds: {mean['epochs_ratio']:.2f}x the epochs, best val mAP {mean['val_mAP_diff']:+.2f}, "
          f"test mAP {mean['test_mAP_diff']:+.2f}")
    write_report(args.out, "asha_efficiency", rows, comparisons=comparisons, mean=mean, spec=spec_label(args.spec))


if __name__ == "__main__":
    main()
