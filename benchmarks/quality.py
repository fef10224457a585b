"""Distillation quality on mosaic-fashion, fair and paired: every method tuned by the same sweep budget, then
trained with 5 seeds; paired differences with t-intervals, family-wise 95 % per column of the table.

1. **Teacher**: ``resnet14t`` (BCE, 10 epochs) through the teacher store; its test metrics are the gap's top.
2. **Tuning**: for every method, baselines included, an l2d-sweep with the same budget (``--trials`` trials of up
   to ``--epochs`` epochs, Optuna TPE, ASHA with grace period 2 and reduction factor 3, the val split only) over
   the student's learning rate and the method's weights (the ranges in :data:`RANGES`). The chosen configuration
   is the best trial that ran every epoch, by its last epoch's val mAP.
3. **Seeds**: each method's chosen configuration trained with seeds 0-4 (``--seeds``) for ``--epochs`` epochs and
   scored on the test split at its last epoch.

Reported per method: mean test mAP, CF1, OF1 (and the seed-to-seed std); the paired difference (per seed) to the
student alone (``bce``) and to the best other method, each a paired t-interval over the seeds at the Bonferroni
level of its column (family-wise 95 %); the share of the teacher-student gap closed, (method - bce) / (teacher -
bce) on mean test mAP. The student budget must make the student alone steady: the script stops when bce's
seed-to-seed std exceeds ``--max-student-std`` (1 mAP).

Every sweep resumes where it stopped and every seed run is cached (``<storage>/quality-runs.jsonl``), so the script
can be killed and rerun, or run in pieces (``--methods``). ``--summarize JSON`` prints the README block from a
saved report (``--readme`` writes it into its page of docs/). Fashion-MNIST comes from the Debian package
``dataset-fashion-mnist`` (installed here when run as root and missing).

Usage:
    python benchmarks/quality.py [--scale 0.5] [--epochs 6] [--trials 8] [--seeds 0 1 2 3 4]
        [--methods bce kd ...] [--storage runs/benchmarks] [--out benchmarks/results/quality.json]
    python benchmarks/quality.py --summarize benchmarks/results/quality.json --readme
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
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
from benchmarks._stats import RunCache, levels_line, paired, restate, verdict  # noqa: E402 - run as a script: the repository on sys.path first

FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
METHODS = ("bce", "kd", "mse", "ps", "rkd", "pkt", "hint", "reviewkd", "mld", "led", "l2d")
#: The search range of every weight (log-uniform), each around its method's default.
RANGES = {
    "lambda_kd": (0.5, 50),
    "kd_temperature": (1, 8),
    "lambda_mse": (0.1, 10),
    "lambda_ps": (0.5, 50),
    "lambda_rkd": (0.1, 10),
    "lambda_pkt": (1000, 100000),
    "lambda_hint": (1, 300),
    "lambda_reviewkd": (1, 100),
    "lambda_mld": (0.1, 50),
    "lambda_cd": (0.1, 300),
    "lambda_id": (1, 3000),
}
LR_RANGE = (5e-4, 5e-3)


def ensure_fashion_mnist(root: Path) -> None:
    """Make sure the Fashion-MNIST IDX files are in ``root``: install the Debian package as root, else explain."""
    if all((root / name).is_file() for name in FASHION_FILES):
        return
    if root != FASHION_ROOT:
        sys.exit(f"error: {root} lacks the Fashion-MNIST files {', '.join(FASHION_FILES)}")
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        print("Fashion-MNIST missing: apt-get install -y dataset-fashion-mnist", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"], check=True)
        if all((root / name).is_file() for name in FASHION_FILES):
            return
    sys.exit(
        f"error: Fashion-MNIST not found in {root}; install it with "
        f"`sudo apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu), or pass --fashion-root a folder "
        f"holding {', '.join(FASHION_FILES)}"
    )


def tuning_spec(args, method: str):
    """The sweep that tunes ``method``: the same budget for every method."""
    from l2d.losses import METHODS as ALL
    from sweeps.specs import parse_spec

    space = {"lr": {"low": LR_RANGE[0], "high": LR_RANGE[1]}}
    space.update({name: {"low": RANGES[name][0], "high": RANGES[name][1]} for name in ALL[method].defaults})
    return parse_spec(
        {
            "name": f"quality-tune-{method}",
            "dataset": {"name": "mosaic-fashion", "root": args.fashion_root, "options": {"scale": args.scale}},
            "pairings": [{"teacher": args.teacher, "students": [args.student]}],
            "methods": [method],
            "search_space": space,
            "budget": {
                "num_samples": args.trials,
                "max_epochs": args.epochs,
                "grace_period": min(2, args.epochs),
                "reduction_factor": 3,
                "teacher_epochs": args.teacher_epochs,
            },
            "resources": {"workers_per_trial": 1, "cpus_per_worker": os.cpu_count() or 1, "max_concurrent_trials": 1},
            "recipe": {"batch_size": args.batch_size, "embed_dim": args.embed_dim},
            "storage": args.storage,
            "seed": 0,
        },
        "benchmarks/quality.py",
    )


def tune(args, method: str) -> dict:
    """Run (or resume) ``method``'s sweep; its chosen configuration."""
    from l2d.losses import METHODS as ALL
    from sweeps.tune.runner import resume_sweep, run_sweep, sweep_exists

    spec = tuning_spec(args, method)
    outcome = resume_sweep(spec.sweep_dir, quiet=True) if sweep_exists(spec.sweep_dir) else run_sweep(spec, quiet=True)
    full = outcome.results.sql(
        f"SELECT * FROM trials WHERE status = 'completed' AND epochs_run = {args.epochs} ORDER BY last_val_mAP DESC"
    ).to_pylist()
    if not full:
        sys.exit(f"error: no trial of {spec.sweep_dir} ran all {args.epochs} epochs")
    best = full[0]
    return {
        "method": method,
        "sweep": str(spec.sweep_dir),
        "trials": outcome.results.trials.num_rows,
        "full_budget": len(full),
        "trial": best["trial_id"],
        "val_mAP": best["last_val_mAP"],
        "lr": best["lr"],
        "hparams": {name: best[name] for name in ALL[method].defaults},
        "epochs_spent": int(outcome.results.sql("SELECT sum(epochs_run) AS n FROM trials").to_pylist()[0]["n"]),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=0.5, help="mosaic size factor (0.5: 1000/250/500 canvases)")
    parser.add_argument("--epochs", type=int, default=6, help="student epochs (tuning and seeds, every method)")
    parser.add_argument("--trials", type=int, default=8, help="trials of every method's tuning sweep")
    parser.add_argument("--teacher", default="resnet14t")
    parser.add_argument("--teacher-epochs", type=int, default=10)
    parser.add_argument("--student", default="test_resnet")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--embed-dim", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument(
        "--max-student-std",
        type=float,
        default=1.0,
        help="stop when the student alone's seed-to-seed std of test mAP exceeds it",
    )
    parser.add_argument("--fashion-root", default=str(FASHION_ROOT))
    parser.add_argument(
        "--storage",
        default=str(ROOT / "runs" / "benchmarks"),
        help="teacher store, tuning sweeps and the run cache (reused when rerun)",
    )
    add_report_arguments(parser, "quality")
    args = parse_report_args(parser, argv, summarize)
    if args is None:
        return
    if "bce" not in args.methods:
        parser.error("--methods must include bce: the student alone is what every method is compared with")
    ensure_fashion_mnist(Path(args.fashion_root))

    import torch

    from l2d.engine import evaluate, make_loader
    from l2d.run import build_run, build_splits, fit, get_teacher
    from l2d.teachers import TeacherStore

    torch.set_num_threads(os.cpu_count() or 1)
    began = time.time()
    base = (
        tuning_spec(args, "bce")
        .base_run()
        .replace(teacher=args.teacher, student=args.student, device="cpu", epochs=args.epochs)
    )
    splits = build_splits(base)
    print(
        f"mosaic-fashion scale {args.scale}: {', '.join(str(len(s)) for s in splits.values())} train/val/test "
        f"canvases; {args.student} for {args.epochs} epochs",
        flush=True,
    )
    teacher, card, _ = get_teacher(base, TeacherStore(Path(args.storage) / "teachers"), splits)
    teacher.eval()
    teacher_test = evaluate(teacher, make_loader(splits["test"], args.batch_size, train=False), torch.device("cpu"))
    print(f"teacher {args.teacher}: test mAP {teacher_test['mAP']:.2f}", flush=True)
    cache = RunCache(Path(args.storage) / "quality-runs.jsonl")

    chosen, runs = {}, []
    for method in args.methods:
        print(f"{method}: tuning ({args.trials} trials x up to {args.epochs} epochs)", flush=True)
        chosen[method] = tune(args, method)
        pick = chosen[method]
        print(
            f"  chose trial {pick['trial']}: val mAP {pick['val_mAP']:.2f}, lr {pick['lr']:.3g}"
            + "".join(f", {k} {v:.3g}" for k, v in pick["hparams"].items()),
            flush=True,
        )
        for seed in args.seeds:
            key = cache.key(
                scale=args.scale,
                teacher=args.teacher,
                student=args.student,
                epochs=args.epochs,
                method=method,
                lr=pick["lr"],
                hparams=pick["hparams"],
                seed=seed,
            )
            result = cache.get(key)
            if result is None:
                start = time.time()
                run = build_run(
                    base.replace(method=method, hparams=pick["hparams"], lr=pick["lr"], seed=seed),
                    splits=splits,
                    teacher=teacher,
                )
                last = fit(run, test="last")[-1]
                result = {k: last[k] for k in ("test_mAP", "test_CF1", "test_OF1", "val_mAP")}
                result["seconds"] = time.time() - start
                cache.put(key, result)
            runs.append({"method": method, "seed": seed, **result})
            print(f"  seed {seed}: test mAP {result['test_mAP']:.2f} ({result['seconds']:.0f} s)", flush=True)
        if method == "bce":
            spread = statistics.stdev(r["test_mAP"] for r in runs if r["method"] == "bce")
            if spread > args.max_student_std:
                sys.exit(
                    f"error: the student alone's test mAP varies by {spread:.2f} (std over seeds {args.seeds}), "
                    f"more than {args.max_student_std}: a bigger budget (--epochs, --scale) is needed for the "
                    f"differences to mean anything"
                )

    report = build_report(runs, chosen, teacher_test, args, (time.time() - began) / 60)
    print(summarize(report, False))
    write_report(args.out, "quality", report["rows"], **{k: v for k, v in report.items() if k != "rows"})


def build_report(runs, chosen, teacher_test, args, minutes) -> dict:
    by_method = {m: {r["seed"]: r["test_mAP"] for r in runs if r["method"] == m} for m in chosen}
    means = {m: statistics.fmean(v.values()) for m, v in by_method.items()}
    student = means["bce"]
    rows = []
    for method in chosen:
        group = [r for r in runs if r["method"] == method]
        row = {"method": method, "seeds": len(group), "lr": chosen[method]["lr"], "hparams": chosen[method]["hparams"]}
        for metric in ("test_mAP", "test_CF1", "test_OF1"):
            values = [r[metric] for r in group]
            row[metric] = statistics.fmean(values)
            row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        row["gap_closed"] = (row["test_mAP"] - student) / (teacher_test["mAP"] - student)
        row["vs_bce"] = paired(by_method[method], by_method["bce"]) if method != "bce" else None
        others = [m for m in chosen if m != method]
        if others:
            best_other = max(others, key=lambda m: means[m])
            row["best_other"] = best_other
            row["vs_best_other"] = paired(by_method[method], by_method[best_other])
        rows.append(row)
    return {
        "rows": rows,
        "runs": runs,
        "tuning": chosen,
        "teacher": args.teacher,
        "student": args.student,
        "teacher_test": {k: teacher_test[k] for k in ("mAP", "CF1", "OF1")},
        "scale": args.scale,
        "epochs": args.epochs,
        "trials": args.trials,
        "seeds": args.seeds,
        "minutes": minutes,
        "command": command_line("quality.py", args.argv),
        "student_std": statistics.stdev(by_method["bce"].values()) if len(by_method["bce"]) > 1 else 0.0,
    }


def restated(rows: list[dict]) -> list[dict]:
    """The rows with their paired differences as t-intervals at the Bonferroni level of their column (vs bce: one
    comparison per method; vs best other: one per row)."""
    against_bce = sum(1 for r in rows if r["vs_bce"])
    return [
        {**r, "vs_bce": restate(r["vs_bce"], against_bce), "vs_best_other": restate(r.get("vs_best_other"), len(rows))}
        for r in rows
    ]


def summarize(report: dict, write: bool) -> str:
    teacher = report["teacher_test"]
    rows = restated(report["rows"])
    command = report.get("command") or command_line("quality.py", [])
    lines = [
        f"$ {command}   # {report['minutes']:.0f} min on this 2-core CPU",
        f"mosaic-fashion scale {report['scale']}: {report['teacher']} (test mAP {teacher['mAP']:.2f}) -> "
        f"{report['student']}, {report['epochs']} epochs; every method tuned by {report['trials']} trials "
        f"(TPE + ASHA, val split), then seeds {report['seeds']} on test",
        f"{'method':<10}{'test mAP':>16}{'CF1':>8}{'OF1':>8}{'gap':>7}  {'vs bce [t, FW 95%]':<25}"
        f"{'vs best other [t, FW 95%]':<36}",
        "-" * 112,
    ]
    for row in sorted(rows, key=lambda r: -r["test_mAP"]):
        diff = row["vs_bce"]
        versus_bce = f"{diff['mean']:+.2f} [{diff['low']:+.2f}, {diff['high']:+.2f}]" if diff else "-"
        other = row.get("vs_best_other")
        versus_other = (
            f"{other['mean']:+.2f} [{other['low']:+.2f}, {other['high']:+.2f}] vs {row['best_other']}" if other else "-"
        )
        lines.append(
            f"{row['method']:<10}{row['test_mAP']:>8.2f} +- {row['test_mAP_std']:<4.2f}"
            f"{row['test_CF1']:>8.2f}{row['test_OF1']:>8.2f}{row['gap_closed']:>7.0%}  {versus_bce:<25}"
            f"{versus_other:<36}"
        )
    lines.append(
        f"teacher {report['teacher']}: test mAP {teacher['mAP']:.2f}, CF1 {teacher['CF1']:.2f}, OF1 "
        f"{teacher['OF1']:.2f}; student alone (bce) seed-to-seed std {report['student_std']:.2f} mAP"
    )
    lines.append(
        levels_line(
            {
                "vs bce": next((r["vs_bce"] for r in rows if r["vs_bce"]), None),
                "vs best other": next((r["vs_best_other"] for r in rows if r.get("vs_best_other")), None),
            }
        )
    )
    by_method = {m: {r["seed"]: r["test_mAP"] for r in report["runs"] if r["method"] == m} for m in ("l2d", "mld")}
    if all(by_method.values()):  # the paper's claim: the embedding terms add to MLD
        diff = paired(by_method["l2d"], by_method["mld"])
        lines.append(
            f"l2d vs mld (CD + ID on top of MLD; one planned comparison): {diff['mean']:+.2f} "
            f"[{diff['low']:+.2f}, {diff['high']:+.2f}]"
        )
    settled = [verdict(r["vs_bce"], r["method"], "bce") for r in rows if r["vs_bce"]]
    lines.append("vs bce: " + "; ".join(settled))
    return readme_block("quality", lines, write)


if __name__ == "__main__":
    main()
