"""Distillation quality on mosaic-fashion: every method, 3 seeds, identical budgets; then L2D tuned by a sweep.

Setting (chosen to fit the whole run in well under 90 minutes on a 2-core CPU; see the README):

- data: ``mosaic-fashion`` (real Fashion-MNIST items on 2 x 2 canvases, 10 classes) at 32 px, ``scale`` 0.75
  (1,500 train / 375 val / 750 test canvases);
- teacher: ``resnet14t`` (BCE, 10 epochs), trained once through the teacher store;
- student: timm's ``test_resnet`` (a 4-stage ResNet with 8-32 channels: ~1M parameters, most of them in the
  label-wise head), small enough that the teacher is clearly better and one epoch takes seconds;
- every method with its default weights (L2D, MLD and LED with the official ones), the same recipe (5 epochs,
  Adam, one-cycle lr 2e-3, batch 64, D = 128) and seeds 0, 1, 2; the metrics of the last epoch on the test split;
- then an l2d-sweep (Optuna TPE + ASHA, on the val split) over lambda_mld, lambda_cd and lambda_id; its best
  trial's weights are retrained with the same 3 seeds and reported like the rest.

Reported per method: test mAP, CF1 and OF1 (mean +- sample std over seeds) and the share of the teacher-student
gap closed, (method - student) / (teacher - student), where ``student`` is the BCE-only student (mean mAP).
For the L2D family it also reports the share of each loss term in the last epoch's training loss.

Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist``; this script installs it when run as root
and it is missing, else it says how.

Usage:
    python benchmarks/quality.py [--scale 0.75] [--epochs 5] [--seeds 0 1 2] [--tune-trials 12]
        [--storage runs/benchmarks] [--out benchmarks/results/quality.json]
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

from benchmarks._report import write_report  # noqa: E402

FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz")
METHODS = ("bce", "kd", "mse", "ps", "rkd", "pkt", "mld", "led", "l2d")
TUNED = ("lambda_mld", "lambda_cd", "lambda_id")


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
    sys.exit(f"error: Fashion-MNIST not found in {root}; install it with "
             f"`sudo apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu), or pass --fashion-root a folder "
             f"holding {', '.join(FASHION_FILES)}")


def tuning_spec(args, storage: str):
    """The sweep that tunes L2D's weights; its base run (``spec.base_run()``) is every student run of the table."""
    from sweeps.spec import parse_spec

    return parse_spec({
        "name": "quality-l2d-tuning",
        "dataset": {"name": "mosaic-fashion", "root": args.fashion_root,
                    "options": {"scale": args.scale}},
        "pairings": [{"teacher": args.teacher, "students": [args.student]}],
        "methods": ["l2d"],
        "search_space": {"lambda_mld": {"low": 0.5, "high": 50}, "lambda_cd": {"low": 1, "high": 300},
                         "lambda_id": {"low": 10, "high": 3000}, "lr": args.lr},
        "budget": {"num_samples": args.tune_trials, "max_epochs": args.epochs, "grace_period": min(2, args.epochs),
                   "reduction_factor": 2, "teacher_epochs": args.teacher_epochs},
        "resources": {"workers_per_trial": 1, "cpus_per_worker": os.cpu_count() or 1, "max_concurrent_trials": 1},
        "recipe": {"batch_size": args.batch_size, "embed_dim": args.embed_dim},
        "storage": storage,
        "seed": 0,
    }, "benchmarks/quality.py")


def train_student(base, splits, teacher, method: str, hparams: dict, seed: int) -> dict:
    """One student run (the run builder of every entry point); the metrics of its last epoch."""
    from l2d.run import build_run, fit

    run = build_run(base.replace(method=method, hparams=hparams, seed=seed), splits=splits, teacher=teacher)
    return fit(run, test="last")[-1]


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def weighted_parts(run: dict) -> dict[str, float]:
    """A run's last-epoch training loss terms, each times its weight (BCE's is 1): what the optimizer saw."""
    from l2d.losses import part_weights

    weights = part_weights(run["loss"], run["hparams"])
    return {name: value * weights[name] for name, value in run["train_parts"].items()}


def summarize(runs: list[dict], teacher_test: dict, teacher: str) -> list[dict]:
    """One row per method: mean and std over seeds, the share of the gap closed, the loss terms' shares."""
    student_mean = mean_std([r["test_mAP"] for r in runs if r["method"] == "bce"])[0]
    teacher_mAP = teacher_test["mAP"]
    rows = [{"method": f"teacher {teacher}", "seeds": 1, "test_mAP": teacher_mAP, "test_mAP_std": 0.0,
             "test_CF1": teacher_test["CF1"], "test_CF1_std": 0.0, "test_OF1": teacher_test["OF1"],
             "test_OF1_std": 0.0, "gap_closed": 1.0}]
    for label in dict.fromkeys(r["method"] for r in runs):
        group = [r for r in runs if r["method"] == label]
        row = {"method": label, "seeds": len(group), "hparams": group[0]["hparams"]}
        for metric in ("test_mAP", "test_CF1", "test_OF1", "val_mAP"):
            row[metric], row[f"{metric}_std"] = mean_std([r[metric] for r in group])
        row["gap_closed"] = (row["test_mAP"] - student_mean) / (teacher_mAP - student_mean)
        parts = [weighted_parts(r) for r in group]
        means = {name: statistics.fmean(p[name] for p in parts) for name in parts[0]}
        total = sum(means.values())
        row["loss_shares"] = {name: value / total for name, value in means.items()} if total else {}
        rows.append(row)
    return rows


def print_table(rows: list[dict], teacher: str, student: str, seeds: list[int]) -> None:
    gap = rows[0]["test_mAP"] - next(r["test_mAP"] for r in rows if r["method"] == "bce")
    print(f"\nteacher {teacher} vs student {student} on mosaic-fashion (test split, mean +- std over seeds "
          f"{seeds}); gap = teacher - bce student = {gap:.2f} mAP points")
    header = (f"{'method':<20}{'test mAP':>15}{'CF1':>15}{'OF1':>15}{'gap closed':>12}  "
              f"weighted loss terms (last epoch)")
    print(header)
    print("-" * len(header))
    for row in rows:
        shares = ", ".join(f"{k} {v:.0%}" for k, v in row.get("loss_shares", {}).items())
        print(f"{row['method']:<20}{row['test_mAP']:>8.2f} +- {row['test_mAP_std']:<4.2f}"
              f"{row['test_CF1']:>8.2f} +- {row['test_CF1_std']:<4.2f}{row['test_OF1']:>8.2f} +- "
              f"{row['test_OF1_std']:<4.2f}{row['gap_closed']:>12.0%}  {shares}")


def resummarize(path: str) -> None:
    """Rebuild a saved report's rows from its runs (same teacher, same runs) and print its table."""
    import json

    report = json.loads(Path(path).read_text())
    teacher = report["rows"][0]
    rows = summarize(report["runs"], {"mAP": teacher["test_mAP"], "CF1": teacher["test_CF1"],
                                      "OF1": teacher["test_OF1"]}, report["teacher"])
    print_table(rows, report["teacher"], report["student"], report["seeds"])
    settings = {k: v for k, v in report.items()
                if k not in ("benchmark", "rows", "torch", "threads", "cpu_count", "machine")}
    write_report(path, "quality", rows, **settings)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=0.75, help="mosaic size factor (1.0: 2000/500/1000)")
    parser.add_argument("--epochs", type=int, default=5, help="student epochs (every method, every seed)")
    parser.add_argument("--teacher", default="resnet14t")
    parser.add_argument("--teacher-epochs", type=int, default=10)
    parser.add_argument("--student", default="test_resnet")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--embed-dim", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--tune-trials", type=int, default=12, help="trials of the L2D weight sweep (0: skip it)")
    parser.add_argument("--fashion-root", default=str(FASHION_ROOT))
    parser.add_argument("--storage", default=str(ROOT / "runs" / "benchmarks"),
                        help="teacher store and tuning sweep folder (a teacher found there is reused)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quality.json"))
    parser.add_argument("--summarize", metavar="JSON", help="recompute the table (and the rows of that file) from the "
                                                             "runs a previous report holds, training nothing")
    args = parser.parse_args(argv)
    if args.summarize:
        return resummarize(args.summarize)
    if "bce" not in args.methods:
        parser.error("--methods must include bce: the student baseline of the gap")
    ensure_fashion_mnist(Path(args.fashion_root))

    import torch

    from l2d.engine import evaluate, make_loader
    from l2d.losses import loss_parts
    from l2d.run import build_splits, get_teacher
    from l2d.teachers import TeacherStore

    torch.set_num_threads(os.cpu_count() or 1)
    began = time.time()
    spec = tuning_spec(args, args.storage)
    # Every student run of the table: the sweep's base run with the benchmark's pairing, budget and lr.
    base = spec.base_run().replace(teacher=args.teacher, student=args.student, lr=args.lr, device="cpu")
    splits = build_splits(base)
    print(f"mosaic-fashion scale {args.scale}: {', '.join(str(len(s)) for s in splits.values())} train/val/test "
          f"canvases", flush=True)
    teacher, card, trained = get_teacher(
        base, TeacherStore(spec.teacher_store), splits,
        on_epoch=lambda m: print(f"  teacher epoch {int(m['epoch'])}: val mAP {m['val_mAP']:.2f}", flush=True))
    teacher.eval()
    teacher_test = evaluate(teacher, make_loader(splits["test"], args.batch_size, train=False), torch.device("cpu"))
    print(f"teacher {args.teacher} ({'trained' if trained else 'loaded'}): test mAP {teacher_test['mAP']:.2f}",
          flush=True)

    runs: list[dict] = []

    def run_method(label: str, method: str, hparams: dict) -> None:
        for seed in args.seeds:
            start = time.time()
            metrics = train_student(base, splits, teacher, method, hparams, seed)
            parts = {name: metrics[f"train_{name}"] for name in loss_parts(method) if f"train_{name}" in metrics}
            runs.append({"method": label, "loss": method, "seed": seed, "hparams": hparams,
                         "test_mAP": metrics["test_mAP"], "test_CF1": metrics["test_CF1"],
                         "test_OF1": metrics["test_OF1"], "val_mAP": metrics["val_mAP"],
                         "train_parts": parts, "seconds": time.time() - start})
            print(f"  {label:<10} seed {seed}: test mAP {metrics['test_mAP']:.2f}, val mAP {metrics['val_mAP']:.2f} "
                  f"({time.time() - start:.0f} s)", flush=True)

    for method in args.methods:
        print(f"{method}: {args.student}, {args.epochs} epochs, seeds {args.seeds}", flush=True)
        run_method(method, method, {})

    tuning = None
    if args.tune_trials and "l2d" in args.methods:
        from sweeps.runner import run_sweep

        print(f"tuning L2D's weights: a {args.tune_trials}-trial sweep on the val split", flush=True)
        results = run_sweep(spec, new=True, quiet=True).results
        full = results.sql(f"SELECT * FROM trials WHERE status = 'completed' AND epochs_run = {args.epochs} "
                           f"ORDER BY last_val_mAP DESC").to_pylist()
        if not full:
            sys.exit(f"error: no trial of the tuning sweep {spec.sweep_dir} ran all {args.epochs} epochs; see "
                     f"`l2d-sweep status {spec.sweep_dir}`")
        best = full[0]
        weights = {name: best[name] for name in TUNED}
        tuning = {"sweep": str(spec.sweep_dir), "trials": results.trials.num_rows, "full_budget_trials": len(full),
                  "best_trial": best["trial_id"], "best_last_val_mAP": best["last_val_mAP"], "weights": weights}
        print(f"  best of {len(full)} full-budget trials: {best['trial_id']} val mAP {best['last_val_mAP']:.2f} "
              f"with " + ", ".join(f"{k}={v:.3g}" for k, v in weights.items()), flush=True)
        run_method("l2d-tuned", "l2d", weights)

    minutes = (time.time() - began) / 60
    rows = summarize(runs, teacher_test, args.teacher)
    print_table(rows, args.teacher, args.student, args.seeds)
    print(f"whole run: {minutes:.1f} min")
    write_report(args.out, "quality", rows, runs=runs, tuning=tuning, teacher=args.teacher, student=args.student,
                 teacher_card={k: card.get(k) for k in ("val_mAP", "test_mAP", "epochs", "parameters")},
                 scale=args.scale, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                 embed_dim=args.embed_dim, seeds=args.seeds, minutes=minutes)


if __name__ == "__main__":
    main()
