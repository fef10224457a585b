"""The LED verdict at a size that can detect 1 mAP: do L2D's label-wise embedding terms (CD, ID) add to MLD?

On the scenes setting of ``benchmarks/quality_scenes.py`` (``mosaic-scenes``, ``tf_efficientnet_lite2 ->
tf_efficientnet_lite0`` from ImageNet weights, the same teacher store), with selection and testing on disjoint seeds:

1. **Selection by the mean of several seeds** (``budget.selection_seeds``: every trial trains a student on each
   tuning seed, ``--tuning-seeds``, default 0 1 2, and is scored by their mean val mAP; TPE + ASHA on val, the best
   trial that ran every epoch by its last mean val mAP). ``bce``: its lr. ``mld``: lr and lambda_mld. Then, with
   mld's lr and lambda_mld fixed, the doses on top of it (method ``l2d``): ``mld + LED`` (lambda_cd and lambda_id
   searched), ``mld + CD`` (lambda_id 0), ``mld + ID`` (lambda_cd 0); and ``hint`` (lr, lambda_hint) as a positive
   control, a method that should beat the student alone if the design can see anything. Every weight is searched
   log-uniform from 1e-3 of its official value (effectively off) to 10x it, the lr from 1e-4 to 1e-2.
2. **Confirmation on fresh seeds** (``--seeds``, default 3-17: none of them a tuning seed): the six arms and a
   **placebo** (mld + LED at 1e-4 of the official weights: a term that changes the loss by almost nothing, so its
   difference to mld measures how far two nearly identical trajectories drift apart) at ``--epochs`` (3), each run
   scored on test at its last epoch.
3. **Training time**: bce, mld and mld + LED again on ``--long-seeds`` (default 3-12) at ``--long-epochs`` (8): do the
   embedding terms need more epochs than the search gave them?

Planned comparisons, paired by seed, each a paired t-interval at the Bonferroni level of its table and
Holm-adjusted p-values over the table: at 3 epochs mld + LED, mld + CD, mld + ID and the placebo against mld, mld and
hint against bce (6); at 8 epochs mld + LED against mld and mld against bce (2). Beside every "not established" the
smallest difference the design could detect (80 % power at that level).

Resumable: the tuning sweeps resume and every choice and run is cached (``--cache``, default
``benchmarks/results/led_verdict-cache.jsonl``, committed with the results: a rerun elsewhere, or in parts, skips
what it holds). ``--summarize JSON
[--readme]`` prints (and writes into docs/benchmarks.md) the report's block.

Usage:
    python benchmarks/led_verdict.py [--trials-per-dim 3] [--seeds 3 ... 17] [--long-seeds 3 ... 12]
    python benchmarks/led_verdict.py --summarize benchmarks/results/led_verdict.json --readme
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import add_report_arguments, command_line, parse_report_args, readme_block, write_report  # noqa: E402 - run as a script: the repository on sys.path first
from benchmarks._stats import RunCache, paired, verdict  # noqa: E402 - run as a script: the repository on sys.path first
from benchmarks.quality_scenes import DATASET, LR_RANGE, base_run, dataset_options, run_seeds, seed_jobs, weight_range  # noqa: E402 - run as a script: the repository on sys.path first

OFFICIAL = {"lambda_cd": 100.0, "lambda_id": 1000.0, "lambda_mld": 10.0, "lambda_hint": 100.0}
PLACEBO_SCALE = 1e-4
#: The arms, in the order they are tuned: (name, method, what it searches beyond what it fixes).
ARMS = ("bce", "mld", "mld+LED", "mld+CD", "mld+ID", "hint")
#: The planned comparisons of each table: (arm, against).
PLANNED = [
    ("mld+LED", "mld"),
    ("mld+CD", "mld"),
    ("mld+ID", "mld"),
    ("placebo", "mld"),
    ("mld", "bce"),
    ("hint", "bce"),
]
PLANNED_LONG = [("mld+LED", "mld"), ("mld", "bce")]


def _range(name: str) -> dict:
    low, high = weight_range(OFFICIAL[name])
    return {"low": low, "high": high}


def arm_space(arm: str, mld: dict | None) -> tuple[str, dict]:
    """An arm's method and search space (mld's chosen lr and lambda_mld fixed for the doses on top of it)."""
    lr = {"low": LR_RANGE[0], "high": LR_RANGE[1]}
    if arm == "bce":
        return "bce", {"lr": lr}
    if arm == "mld":
        return "mld", {"lr": lr, "lambda_mld": _range("lambda_mld")}
    if arm == "hint":
        return "hint", {"lr": lr, "lambda_hint": _range("lambda_hint")}
    fixed = {"lr": mld["lr"], "lambda_mld": mld["hparams"]["lambda_mld"]}
    if arm == "mld+LED":
        return "l2d", {**fixed, "lambda_cd": _range("lambda_cd"), "lambda_id": _range("lambda_id")}
    if arm == "mld+CD":
        return "l2d", {**fixed, "lambda_cd": _range("lambda_cd"), "lambda_id": 0.0}
    if arm == "mld+ID":
        return "l2d", {**fixed, "lambda_cd": 0.0, "lambda_id": _range("lambda_id")}
    raise ValueError(f"unknown arm {arm!r}")


def tuning_spec(args, arm: str, mld: dict | None):
    from sweeps.specs import parse_spec

    method, space = arm_space(arm, mld)
    searched = sum(isinstance(v, dict) for v in space.values())
    data = {
        "name": f"led-verdict-tune-{arm.replace('+', '-').lower()}",
        "dataset": {"name": DATASET, "root": args.fashion_root, "options": dataset_options(args)},
        "pairings": [{"teacher": args.teacher, "students": [args.student]}],
        "methods": [method],
        "search_space": space,
        "budget": {
            "num_samples": args.trials_per_dim * searched,
            "max_epochs": args.epochs,
            "grace_period": 1,
            "reduction_factor": 3,
            "teacher_epochs": args.teacher_epochs,
            "selection_seeds": len(args.tuning_seeds),
        },
        "resources": {"workers_per_trial": 1, "cpus_per_worker": 1, "max_concurrent_trials": args.parallel},
        "recipe": {"batch_size": args.batch_size},
        "storage": args.storage,
        "seed": args.tuning_seeds[0],
    }
    return parse_spec(data, "benchmarks/led_verdict.py")


def tune(args, arm: str, mld: dict | None, cache: RunCache) -> dict:
    """Run (or resume) ``arm``'s sweep; its chosen configuration (cached: the choice survives the sweep's folder)."""
    from l2d.losses import METHODS
    from sweeps.tune.runner import resume_sweep, run_sweep, sweep_exists

    spec = tuning_spec(args, arm, mld)
    key = RunCache.key(benchmark="led-verdict-tune", arm=arm, spec=spec.to_dict())
    if cache.get(key) is not None:
        return cache.get(key)
    outcome = resume_sweep(spec.sweep_dir, quiet=True) if sweep_exists(spec.sweep_dir) else run_sweep(spec, quiet=True)
    full = outcome.results.sql(
        f"SELECT * FROM trials WHERE status = 'completed' AND epochs_run = {args.epochs} "
        f"ORDER BY last_val_mAP DESC, trial_id"
    ).to_pylist()
    if not full:
        sys.exit(f"error: no trial of {spec.sweep_dir} ran all {args.epochs} epochs")
    best = full[0]
    method = spec.methods[0]
    pick = {
        "arm": arm,
        "method": method,
        "trials": outcome.results.trials.num_rows,
        "full_budget": len(full),
        "trial": best["trial_id"],
        "val_mAP_mean_of_tuning_seeds": best["last_val_mAP"],
        "lr": best["lr"],
        "hparams": {name: best[name] for name in METHODS[method].defaults},
        "epochs_spent": int(outcome.results.sql("SELECT sum(epochs_run) AS n FROM trials").to_pylist()[0]["n"]),
    }
    cache.put(key, pick)
    return pick


def table(results: dict[str, dict[int, dict]], planned: list[tuple[str, str]]) -> list[dict]:
    """The planned comparisons of one table: paired t at its Bonferroni level, Holm-adjusted p-values."""
    from sweeps.results.stats import holm

    scores = {arm: {s: r["test_mAP"] for s, r in runs.items()} for arm, runs in results.items()}
    rows = [
        {"arm": arm, "against": other, **paired(scores[arm], scores[other], len(planned))}
        for arm, other in planned
        if arm in scores and other in scores
    ]
    for row, adjusted in zip(rows, holm([row["p"] for row in rows]), strict=True):
        row["p_holm"] = adjusted
    return rows


def main(argv: list[str] | None = None) -> None:
    from benchmarks.quality import FASHION_ROOT, ensure_fashion_mnist

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="tf_efficientnet_lite2")
    parser.add_argument("--student", default="tf_efficientnet_lite0")
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3, help="student epochs of the tuning and the confirmation")
    parser.add_argument("--long-epochs", type=int, default=8, help="student epochs of the training-time table")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--scale", type=float, help="factor on the split sizes (default: the dataset's)")
    parser.add_argument("--trials-per-dim", type=int, default=3, help="tuning trials per searched dimension")
    parser.add_argument("--tuning-seeds", type=int, nargs="+", default=[0, 1, 2], help="consecutive, from the first")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(3, 18)))
    parser.add_argument("--long-seeds", type=int, nargs="+", default=list(range(3, 13)))
    parser.add_argument("--parallel", type=int, default=2, help="runs (and sweep trials) at a time, one thread each")
    parser.add_argument("--fashion-root", default=str(FASHION_ROOT))
    parser.add_argument("--storage", default=str(ROOT / "runs" / "benchmarks-scenes"), help="teachers and sweeps")
    parser.add_argument(
        "--cache",
        default=str(ROOT / "benchmarks" / "results" / "led_verdict-cache.jsonl"),
        help="finished runs and choices, JSON lines (committed with the results; a rerun skips what it holds)",
    )
    add_report_arguments(parser, "led_verdict")
    args = parse_report_args(parser, argv, summarize)
    if args is None:
        return
    first = args.tuning_seeds[0]
    if args.tuning_seeds != list(range(first, first + len(args.tuning_seeds))):
        parser.error("--tuning-seeds must be consecutive (a trial trains the spec's seed and the ones after it)")
    tuning = set(args.tuning_seeds)
    if tuning & (set(args.seeds) | set(args.long_seeds)):
        parser.error(f"--seeds and --long-seeds must leave out the tuning seeds {sorted(tuning)}")
    ensure_fashion_mnist(Path(args.fashion_root))

    from l2d.run import build_splits, get_teacher
    from l2d.teachers import TeacherStore

    began = time.time()
    base = base_run(args).replace(seed=first)  # the teacher's seed: the tuning sweeps' (their spec's seed)
    splits = build_splits(base)
    print(f"{DATASET}: {base.teacher} -> {base.student}; tuning seeds {args.tuning_seeds}", flush=True)
    get_teacher(  # trained into the store first when missing (the tuning sweeps and the runs load it)
        base,
        TeacherStore(Path(args.storage) / "teachers"),
        splits,
        on_epoch=lambda m: print(f"  teacher epoch {int(m['epoch'])}: val mAP {m['val_mAP']:.2f}", flush=True),
    )
    cache = RunCache(args.cache)

    chosen: dict[str, dict] = {}
    for arm in ARMS:
        spec = tuning_spec(args, arm, chosen.get("mld"))
        print(
            f"{arm}: tuning ({spec.budget.num_samples} trials x {len(args.tuning_seeds)} seeds x up to "
            f"{args.epochs} epochs)",
            flush=True,
        )
        pick = chosen[arm] = tune(args, arm, chosen.get("mld"), cache)
        print(
            f"  chose {pick['trial']}: mean val mAP {pick['val_mAP_mean_of_tuning_seeds']:.2f} over the tuning "
            f"seeds, lr {pick['lr']:.3g}" + "".join(f", {k} {v:.3g}" for k, v in pick["hparams"].items()),
            flush=True,
        )
    placebo = {
        **chosen["mld+LED"],
        "arm": "placebo",
        "hparams": {
            "lambda_mld": chosen["mld"]["hparams"]["lambda_mld"],
            "lambda_cd": OFFICIAL["lambda_cd"] * PLACEBO_SCALE,
            "lambda_id": OFFICIAL["lambda_id"] * PLACEBO_SCALE,
        },
        "lr": chosen["mld"]["lr"],
    }

    def runs_of(arms: dict[str, dict], seeds, epochs: int) -> dict[str, dict[int, dict]]:
        out = {}
        for arm, pick in arms.items():
            jobs = seed_jobs(
                args, base, pick["method"], pick["lr"], pick["hparams"], arm, seeds, epochs, benchmark="led-verdict"
            )
            done = run_seeds(args, cache, jobs)
            out[arm] = {seed: done[key] for seed, (key, _, _) in zip(seeds, jobs)}
        return out

    print(f"confirmation: {len(ARMS) + 1} arms x {len(args.seeds)} seeds x {args.epochs} epochs", flush=True)
    short = runs_of({**chosen, "placebo": placebo}, args.seeds, args.epochs)
    long_arms = {arm: chosen[arm] for arm in ("bce", "mld", "mld+LED")}
    print(f"training time: 3 arms x {len(args.long_seeds)} seeds x {args.long_epochs} epochs", flush=True)
    long = runs_of(long_arms, args.long_seeds, args.long_epochs)

    report = {
        "rows": table(short, PLANNED),
        "rows_long": table(long, PLANNED_LONG),
        "means": {arm: _mean_sd(runs) for arm, runs in short.items()},
        "means_long": {arm: _mean_sd(runs) for arm, runs in long.items()},
        "runs": {arm: {str(s): r for s, r in runs.items()} for arm, runs in short.items()},
        "runs_long": {arm: {str(s): r for s, r in runs.items()} for arm, runs in long.items()},
        "chosen": {**chosen, "placebo": placebo},
        "tuning_seeds": args.tuning_seeds,
        "seeds": args.seeds,
        "long_seeds": args.long_seeds,
        "epochs": args.epochs,
        "long_epochs": args.long_epochs,
        "teacher": args.teacher,
        "student": args.student,
        "minutes": (time.time() - began) / 60,
        "command": command_line("led_verdict.py", args.argv),
    }
    print(summarize(report, False))
    write_report(args.out, "led_verdict", report["rows"], **{k: v for k, v in report.items() if k != "rows"})


def _mean_sd(runs: dict[int, dict]) -> dict:
    values = [r["test_mAP"] for r in runs.values()]
    return {"test_mAP": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def _interval(row: dict) -> str:
    return f"{row['mean']:+.2f} [{row['low']:+.2f}, {row['high']:+.2f}]"


def _lines(rows: list[dict], means: dict, title: str) -> list[str]:
    lines = [title, f"{'arm':<10}{'test mAP':>16}  {'vs':<5}{'difference [t]':<26}{'Holm p':>8}  verdict"]
    for row in rows:
        mean = means[row["arm"]]
        said = verdict(row, row["arm"], row["against"])  # "not established" comes with the detectable difference
        lines.append(
            f"{row['arm']:<10}{mean['test_mAP']:>8.2f} +- {mean['sd']:<5.2f}  {row['against']:<5}"
            f"{_interval(row):<26}{row['p_holm']:>8.3f}  {said}"
        )
    levels = {row["level"] for row in rows}
    lines.append(
        f"paired t over {len(rows[0]['seeds']) if rows else 0} seeds, each interval at "
        + ", ".join(f"{level:.2%}" for level in sorted(levels))
        + f" (Bonferroni over {len(rows)} planned comparisons: family-wise 95 %)"
    )
    return lines


def summarize(report: dict, write: bool) -> str:
    chosen = report["chosen"]
    lines = [f"$ {report['command']}   # {report['minutes']:.0f} min on this 2-core CPU"]
    lines.append(
        f"{report['teacher']} -> {report['student']}; chosen by the mean val mAP of tuning seeds "
        f"{report['tuning_seeds']}, tested on seeds {report['seeds'][0]}-{report['seeds'][-1]}"
    )
    for arm, pick in chosen.items():
        lines.append(f"  {arm:<9} lr {pick['lr']:.3g}" + "".join(f", {k} {v:.3g}" for k, v in pick["hparams"].items()))
    lines += _lines(report["rows"], report["means"], f"at {report['epochs']} epochs:")
    if report.get("rows_long"):
        lines += _lines(
            report["rows_long"],
            report["means_long"],
            f"at {report['long_epochs']} epochs (seeds {report['long_seeds'][0]}-{report['long_seeds'][-1]}):",
        )
    return readme_block("led_verdict", lines, write)


if __name__ == "__main__":
    main()
