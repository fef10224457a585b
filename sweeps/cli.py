"""The ``l2d-sweep`` command line.

The parser needs the method and dataset registries (so torch); Ray, timm's models and the data are imported
only by the commands that use them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

logger = logging.getLogger(__name__)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``l2d-sweep train: error: ...``), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# --- shared options -------------------------------------------------------------------------------------------

def _key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE parsed as YAML (numbers, booleans, strings)."""
    import yaml

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: bad value ({error})") from error


def _bounded(kind: type, minimum: float, exclusive: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite ``kind`` (int or float) >= ``minimum`` (> when ``exclusive``)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") \
                from None
        if value != value or value in (float("inf"), float("-inf")) or value < minimum or (exclusive and value == minimum):
            bound = f"{'>' if exclusive else '>='} {minimum:g}"
            raise argparse.ArgumentTypeError(f"must be {'a finite number ' if kind is float else ''}{bound}, got {value}")
        return value

    return parse


_positive_int = _bounded(int, 1)
_positive_float = _bounded(float, 0.0, exclusive=True)
_non_negative_float = _bounded(float, 0.0)


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    from l2d.data import DATASETS

    group = parser.add_argument_group("data")
    group.add_argument("--dataset", default="mosaic-digits", choices=list(DATASETS),
                       help="dataset name (default: mosaic-digits, embedded: nothing to download)")
    group.add_argument("--data-root", help="the dataset's folder (required for voc2007, coco2014, nuswide)")
    group.add_argument("--dataset-option", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                       help="a dataset option, repeatable (e.g. size=5000 for a mosaic, difficult_as_positive=true "
                            "for VOC)")
    group.add_argument("--image-size", type=_positive_int, help="network input side (default: the dataset's)")


def _add_recipe_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("recipe (defaults: the official L2D recipe, with the dataset's lr)")
    group.add_argument("--embed-dim", type=_positive_int, help="label-wise embedding size D (default: the dataset's)")
    group.add_argument("--batch-size", type=_positive_int, default=64, help="global batch size (default: 64)")
    group.add_argument("--lr", type=_positive_float, help="OneCycle max learning rate (default: the dataset's)")
    group.add_argument("--weight-decay", type=_non_negative_float, default=1e-4,
                       help="Adam L2 decay on weights (default: 1e-4)")
    group.add_argument("--workers", type=int, default=0, help="DataLoader workers (default: 0)")
    group.add_argument("--seed", type=int, default=0, help="seed of models and data order (default: 0)")
    group.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    group.add_argument("--store", default=None,
                       help="teacher store: a folder or s3:// / gs:// URI (default: $L2D_SWEEP_CACHE/teachers, "
                            "$L2D_SWEEP_CACHE defaulting to ~/.cache/l2d-sweep)")


def _dataset_options(args: argparse.Namespace) -> dict:
    return dict(args.dataset_option)


def _resolve_device(name: str | None):
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("l2d-sweep: error: --device cuda given but no CUDA device is available")
    return device


def _teacher_key(args: argparse.Namespace, backbone: str, epochs: int):
    from l2d.data import DATASETS
    from l2d.teachers import TeacherKey

    info = DATASETS[args.dataset]
    recipe = {"epochs": epochs, "batch_size": args.batch_size, "lr": args.lr or info.lr,
              "weight_decay": args.weight_decay, "pct_start": 0.2}
    return TeacherKey(dataset=args.dataset, backbone=backbone, image_size=args.image_size or info.image_size,
                      embed_dim=args.embed_dim or info.embed_dim, recipe=recipe, seed=args.seed,
                      dataset_options=_dataset_options(args))


def _store(args: argparse.Namespace):
    from l2d.data.mosaic import default_cache_dir
    from l2d.teachers import TeacherStore

    return TeacherStore(args.store or str(default_cache_dir() / "teachers"))


class _Progress:
    """A one-line progress bar on stderr (redrawn in place on a terminal; one line per epoch otherwise)."""

    def __init__(self, label: str, epochs: int):
        self.label = label
        self.epochs = epochs
        self.epoch = 1
        self.tty = sys.stderr.isatty()
        self.start = time.time()

    def batch(self, done: int, total: int, values) -> None:
        if not self.tty:
            return
        width = 24
        filled = int(width * done / max(total, 1))
        elapsed = time.time() - self.start
        sys.stderr.write(f"\r{self.label} epoch {self.epoch}/{self.epochs} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{done}/{total} loss {values['loss']:.3g} {elapsed:.0f}s ")
        sys.stderr.flush()

    def end_epoch(self, epoch: int, metrics) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K")
        test = f"  test mAP {metrics['test_mAP']:.2f}" if "test_mAP" in metrics else ""
        sys.stderr.write(f"{self.label} epoch {epoch}/{self.epochs}: loss {metrics['train_total']:.4g}  "
                         f"val mAP {metrics['val_mAP']:.2f}{test}  {metrics['images_per_s']:.0f} img/s  "
                         f"{time.time() - self.start:.0f}s\n")
        sys.stderr.flush()
        self.epoch = epoch + 1


def _get_teacher(args: argparse.Namespace, backbone: str, epochs: int, device):
    """Load the teacher from the store, or train and store it; returns (model, card, trained)."""
    from l2d.teachers import train_teacher

    key = _teacher_key(args, backbone, epochs)
    store = _store(args)
    card = store.card(key)
    if card is None:
        print(f"training teacher {backbone} on {args.dataset} for {epochs} epochs (stored in {store.uri})",
              file=sys.stderr)
    progress = _Progress(f"teacher {backbone}", epochs)

    def train():
        return train_teacher(key, args.data_root, device, progress.end_epoch, progress.batch)

    return store.get_or_train(key, len(card["class_names"]) if card else 0, train)


def _print_card(card: dict) -> None:
    rows = [("teacher", card["backbone"]), ("digest", card["digest"]), ("dataset", card["key"]["dataset"]),
            ("image size", card["key"]["image_size"]), ("embed dim", card["key"]["embed_dim"]),
            ("epochs", card["epochs"]), ("parameters", f"{card['parameters']:,}"),
            ("val mAP", f"{card['val_mAP']:.2f}"), ("test mAP", f"{card['test_mAP']:.2f}"),
            ("wall time", f"{card['wall_time_s']:.1f} s")]
    for name, value in rows:
        print(f"{name:<11} {value}")


def _cmd_teacher(args: argparse.Namespace) -> int:
    from l2d.data import DATASETS

    device = _resolve_device(args.device)
    epochs = args.epochs or DATASETS[args.dataset].teacher_epochs
    _, card, trained = _get_teacher(args, args.backbone or DATASETS[args.dataset].teacher, epochs, device)
    print(("trained and stored" if trained else "loaded from the store") + f" ({_store(args).uri})")
    _print_card(card)
    if args.json:
        print(json.dumps({k: v for k, v in card.items() if k != "history"}, indent=2))
    return 0


def _hparam_overrides(args: argparse.Namespace) -> dict[str, float]:
    from l2d.losses import METHODS

    names = {name for method in METHODS.values() for name in method.defaults}
    return {name: getattr(args, name) for name in sorted(names) if getattr(args, name, None) is not None}


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float) + "\n")
    os.replace(tmp, path)


def _cmd_train(args: argparse.Namespace) -> int:
    import torch
    import yaml
    from torch.utils.tensorboard import SummaryWriter

    from l2d.data import DATASETS, build_dataset
    from l2d.engine import Distiller, Recipe
    from l2d.losses import METHODS, method_hparams
    from l2d.models import build_model, check_backbone_name, count_parameters

    info = DATASETS[args.dataset]
    teacher_name, student_name = args.teacher or info.teacher, args.student or info.student
    for name in (teacher_name, student_name):
        check_backbone_name(name)
    hparams = method_hparams(args.method, _hparam_overrides(args))  # fails fast on a weight the method lacks
    device = _resolve_device(args.device)
    epochs, teacher_epochs = args.epochs or info.epochs, args.teacher_epochs or info.teacher_epochs
    image_size, embed_dim = args.image_size or info.image_size, args.embed_dim or info.embed_dim
    out = Path(args.out or f"runs/{args.dataset}-{teacher_name}-to-{student_name}-{args.method}")

    options = _dataset_options(args)
    # The data first: a bad dataset fails before any teacher is trained.
    splits = {split: build_dataset(args.dataset, args.data_root, split, image_size, **options)
              for split in ("train", "val", "test")}
    teacher, teacher_card = None, None
    if METHODS[args.method].needs_teacher:
        teacher, teacher_card, _ = _get_teacher(args, teacher_name, teacher_epochs, device)
    torch.manual_seed(args.seed)
    student = build_model(student_name, len(splits["train"].class_names), embed_dim, pretrained=args.student_pretrained)
    recipe = Recipe(epochs=epochs, batch_size=args.batch_size, lr=args.lr or info.lr, weight_decay=args.weight_decay,
                    num_workers=args.workers)
    config = {"dataset": args.dataset, "data_root": args.data_root, "dataset_options": options,
              "image_size": image_size, "embed_dim": embed_dim, "teacher": teacher_name, "student": student_name,
              "method": args.method, "hparams": hparams, "recipe": vars(recipe), "seed": args.seed,
              "device": str(device), "teacher_digest": teacher_card["digest"] if teacher_card else None}
    out.mkdir(parents=True, exist_ok=True)
    (out / "args.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    distiller = Distiller(student, teacher, splits["train"], splits["val"], splits["test"], args.method, hparams,
                          recipe, device, args.seed)
    progress = _Progress(f"student {student_name} ({args.method})", epochs)
    history = []
    start = time.time()
    with SummaryWriter(str(out / "tensorboard")) as writer:
        for epoch in range(1, epochs + 1):
            # Selection happens on val; test is reported once, at the end.
            metrics = distiller.run_epoch(progress.batch, evaluate_test=epoch == epochs)
            history.append({k: float(v) for k, v in metrics.items()})
            for name, value in metrics.items():
                if name != "epoch":
                    writer.add_scalar(name.replace("_", "/", 1), float(value), int(metrics["epoch"]))
            progress.end_epoch(int(metrics["epoch"]), metrics)
    final = history[-1]
    tmp = out / ".student.pt.tmp"
    torch.save(student.state_dict(), tmp)
    os.replace(tmp, out / "student.pt")
    result = {"config": config, "final": final, "history": history, "wall_time_s": time.time() - start,
              "student_parameters": count_parameters(student),
              "teacher": {k: v for k, v in teacher_card.items() if k != "history"} if teacher_card else None}
    _write_json_atomic(out / "metrics.json", result)

    rows = [("student", student_name, count_parameters(student), final)]
    if teacher_card:
        rows.insert(0, ("teacher", teacher_name, teacher_card["parameters"],
                        {"val_mAP": teacher_card["val_mAP"], "test_mAP": teacher_card["test_mAP"]}))
    print(f"\n{'model':<8} {'backbone':<24} {'params':>11} {'val mAP':>8} {'test mAP':>9} {'test CF1':>9} "
          f"{'test OF1':>9}")
    for role, name, params, m in rows:
        cf1 = f"{m['test_CF1']:.2f}" if "test_CF1" in m else "-"
        of1 = f"{m['test_OF1']:.2f}" if "test_OF1" in m else "-"
        print(f"{role:<8} {name:<24} {params:>11,} {m['val_mAP']:>8.2f} {m['test_mAP']:>9.2f} {cf1:>9} {of1:>9}")
    chance = float(splits["test"].targets.mean() * 100)
    print(f"\nmethod {args.method} ({', '.join(f'{k}={v:g}' for k, v in hparams.items()) or 'no weights'}); "
          f"chance level (mean label frequency): {chance:.2f} mAP; {time.time() - start:.0f} s")
    print(f"wrote {out}/metrics.json, {out}/student.pt, TensorBoard logs in {out}/tensorboard")
    return 0


def _cmd_dataset(args: argparse.Namespace) -> int:
    from l2d.data import build_dataset, dataset_stats

    dataset = build_dataset(args.dataset, args.data_root, args.split, args.image_size, **_dataset_options(args))
    stats = dataset_stats(dataset)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(f"{args.dataset}/{args.split}: {stats['images']} images, {stats['classes']} classes, "
          f"{stats['labels_per_image_mean']:.2f} labels per image")
    histogram = ", ".join(f"{k}: {v}" for k, v in stats["labels_per_image_histogram"].items())
    print(f"labels per image: {histogram}")
    print(f"mean label frequency (the mAP of a random ranking): {100 * stats['mean_label_frequency']:.2f}%")
    print("label frequency: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in stats["label_frequency"].items()))
    print("most frequent pairs (count, lift = P(a,b) / P(a)P(b), 1 if independent):")
    for a, b, count, lift in stats["top_pairs"]:
        print(f"  {a} + {b}: {count} ({lift:.2f})")
    return 0


def _apply_overrides(args: argparse.Namespace):
    from sweeps.spec import load_spec, parse_spec

    spec = load_spec(args.spec)
    overrides = {}
    if args.num_samples is not None:
        overrides["budget"] = {**spec.to_dict()["budget"], "num_samples": args.num_samples}
    if args.max_epochs is not None:
        budget = overrides.get("budget", spec.to_dict()["budget"])
        overrides["budget"] = {**budget, "max_epochs": args.max_epochs,
                               "grace_period": min(budget["grace_period"], args.max_epochs)}
    if args.storage is not None:
        overrides["storage"] = args.storage
    if args.name is not None:
        overrides["name"] = args.name
    if not overrides:
        return spec
    data = spec.to_dict()
    data.update(overrides)
    return parse_spec(data, f"{args.spec} (with command-line overrides)")


def _cmd_run(args: argparse.Namespace) -> int:
    from sweeps.runner import print_leaderboard, resume_sweep, run_sweep, sweep_exists

    spec = _apply_overrides(args)
    if args.or_resume and args.new:
        raise ValueError("--or-resume and --new contradict each other; pass one")
    if args.or_resume and sweep_exists(spec.sweep_dir):
        print(f"{spec.sweep_dir} exists: resuming it (--or-resume)")
        results = resume_sweep(spec.sweep_dir)
    else:
        results = run_sweep(spec, new=args.new)
    print(f"\nleaderboard of {spec.sweep_dir} (best val mAP per trial; test mAP at that epoch):")
    print_leaderboard(results)
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    from sweeps.runner import print_leaderboard, resume_sweep

    results = resume_sweep(args.path)
    print(f"\nleaderboard of {results.sweep_dir}:")
    print_leaderboard(results)
    return 0


def _cmd_results(args: argparse.Namespace) -> int:
    from sweeps.results import SweepResults, format_table

    results = SweepResults(args.path)
    if args.sql:
        try:
            table = results.sql(args.sql)
        except Exception as error:  # duckdb raises its own exception types for bad SQL
            raise ValueError(f"SQL error: {str(error).splitlines()[0]}") from None
        print(format_table(table, args.format))
        return 0
    if args.pareto:
        table = results.pareto()
        print(format_table(table, args.format))
        plot = _pareto_plot(results, args.path)
        if plot:
            print(f"plot: {plot}")
        return 0
    print(format_table(results.leaderboard(args.limit), args.format))
    return 0


def _pareto_plot(results, sweep_dir: str) -> str | None:
    """Write pareto.png beside the results (val mAP vs student parameters, the front highlighted)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return None
    from sweeps.results import filesystem_for

    everything = results.sql("SELECT student_params, best_val_mAP FROM trials WHERE best_val_mAP IS NOT NULL")
    front = results.pareto()
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.scatter(everything["student_params"].to_pylist(), everything["best_val_mAP"].to_pylist(), c="0.6",
                 label="trials")
    axes.plot(front["student_params"].to_pylist(), front["val_mAP"].to_pylist(), "o-", c="C1", label="Pareto front")
    axes.set_xscale("log")
    axes.set_xlabel("student parameters")
    axes.set_ylabel("best val mAP")
    axes.legend()
    figure.tight_layout()
    import io as _io

    buffer = _io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    filesystem, path = filesystem_for(sweep_dir.rstrip("/"))
    target = f"{path}/results/pareto.png"
    with filesystem.open_output_stream(target) as stream:
        stream.write(buffer.getvalue())
    return target


def _cmd_status(args: argparse.Namespace) -> int:
    from sweeps.results import SweepResults, format_table

    results = SweepResults(args.path)
    counts = results.sql("SELECT status, count(*) AS trials FROM trials GROUP BY status ORDER BY status")
    print("trials by state: " + ", ".join(f"{r['status']} {r['trials']}" for r in counts.to_pylist()))
    best = results.leaderboard(1).to_pylist()
    if best:
        b = best[0]
        print(f"best so far: {b['trial_id']} {b['teacher']} -> {b['student']} {b['method']}: val mAP {b['val_mAP']}, "
              f"test mAP {b['test_mAP']} (epoch {b['best_epoch']})")
    running = results.sql("SELECT t.trial_id, t.student, t.method, t.epochs_run AS epoch, "
                          "round(t.last_val_mAP, 2) AS last_val_mAP FROM trials t WHERE status = 'running' "
                          "ORDER BY trial_id")
    if running.num_rows:
        print("running:")
        print(format_table(running))
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from l2d.losses import METHODS, loss_parts

    print(f"{'method':<7} {'losses':<16} {'default hyperparameters':<40} description")
    for name, method in METHODS.items():
        defaults = ", ".join(f"{k}={v:g}" for k, v in method.defaults.items()) or "-"
        print(f"{name:<7} {'+'.join(loss_parts(name)):<16} {defaults:<40} {method.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from l2d.losses import METHODS

    parser = _Parser(
        prog="l2d-sweep",
        description="Find the best multi-label knowledge-distillation recipe (L2D and baselines) for a dataset.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    methods = commands.add_parser("methods", help="list the distillation methods and their default weights",
                                  description="List the distillation methods, their loss parts and defaults.")
    methods.set_defaults(func=_cmd_methods)

    run = commands.add_parser(
        "run", help="run a sweep from a YAML spec",
        description="Run a sweep: the teacher phase, then student trials (Tune + Optuna TPE + ASHA), with live "
                    "progress and the leaderboard at the end. Refuses a sweep that already exists (resume it, "
                    "or pass --new).")
    run.add_argument("spec", help="the sweep's YAML file (see search_spaces/)")
    run.add_argument("--new", action="store_true", help="delete an existing sweep of the same name and start over")
    run.add_argument("--or-resume", action="store_true",
                     help="resume the sweep when it already exists (an idempotent entry point for job submission)")
    run.add_argument("--num-samples", type=_positive_int, help="override budget.num_samples")
    run.add_argument("--max-epochs", type=_positive_int, help="override budget.max_epochs")
    run.add_argument("--storage", help="override storage (a folder or s3:// / gs:// URI)")
    run.add_argument("--name", help="override the sweep's name")
    run.set_defaults(func=_cmd_run)

    resume = commands.add_parser(
        "resume", help="continue a sweep that was stopped or killed",
        description="Continue a sweep: finished trials are not re-run, interrupted ones continue from their last "
                    "epoch checkpoint, the Optuna study and ASHA's rungs carry on.")
    resume.add_argument("path", help="the sweep folder (<storage>/<name>)")
    resume.set_defaults(func=_cmd_resume)

    results = commands.add_parser(
        "results", help="the leaderboard, SQL over the results, the Pareto front",
        description="Query a sweep's results: by default the leaderboard (top trials by val mAP, test mAP "
                    "beside it); --sql runs DuckDB SQL over the views `trials` and `epochs`.")
    results.add_argument("path", help="the sweep folder")
    results.add_argument("--sql", help='DuckDB SQL over the views trials and epochs, e.g. "SELECT method, '
                                       'max(best_val_mAP) FROM trials GROUP BY method"')
    results.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output format")
    results.add_argument("--limit", type=_positive_int, default=10, help="leaderboard rows (default: 10)")
    results.add_argument("--pareto", action="store_true",
                         help="the val mAP vs student size Pareto front; also writes results/pareto.png")
    results.set_defaults(func=_cmd_results)

    status = commands.add_parser("status", help="trials by state, the best so far, running trials",
                                 description="A sweep's trials by state, the best trial so far and the running "
                                             "trials with their epochs (from the results tables, refreshed "
                                             "while the sweep runs).")
    status.add_argument("path", help="the sweep folder")
    status.set_defaults(func=_cmd_status)

    dataset = commands.add_parser("dataset", help="print a dataset split's label statistics",
                                  description="Print a split's size, label cardinality, label frequencies and the "
                                              "most co-occurring label pairs.")
    dataset.add_argument("--split", default="train", choices=["train", "val", "test"], help="split (default: train)")
    dataset.add_argument("--json", action="store_true", help="print JSON")
    _add_data_options(dataset)
    dataset.set_defaults(func=_cmd_dataset)

    teacher = commands.add_parser(
        "teacher", help="train a teacher (or load it from the teacher store) and print its card",
        description="Train a teacher with BCE, or load it when the store already holds one with the same key "
                    "(dataset and options, backbone, image size, embed dim, recipe, seed), and print its card.")
    teacher.add_argument("--backbone", help="timm model name (default: the dataset's default teacher)")
    teacher.add_argument("--epochs", type=_positive_int, help="epochs (default: the dataset's teacher epochs)")
    teacher.add_argument("--json", action="store_true", help="also print the card as JSON")
    _add_data_options(teacher)
    _add_recipe_options(teacher)
    teacher.set_defaults(func=_cmd_teacher)

    train = commands.add_parser(
        "train", help="distill one student from one teacher",
        description="Distill one student from one teacher (trained into, or loaded from, the teacher store) with one "
                    "method; print a metrics table; write TensorBoard scalars, metrics.json, args.yaml and the "
                    "student's weights into --out.")
    train.add_argument("--teacher", help="teacher timm model name (default: the dataset's)")
    train.add_argument("--student", help="student timm model name (default: the dataset's)")
    train.add_argument("--method", default="l2d", choices=list(METHODS), help="distillation method (default: l2d)")
    train.add_argument("--epochs", type=_positive_int, help="student epochs (default: the dataset's)")
    train.add_argument("--teacher-epochs", type=_positive_int, help="teacher epochs when it must be trained")
    train.add_argument("--student-pretrained", help="local weights file for the student's backbone")
    train.add_argument("--out", help="output folder (default: runs/<dataset>-<teacher>-to-<student>-<method>)")
    weights = train.add_argument_group("loss weights (defaults: the method's; see `l2d-sweep methods`)")
    for name in sorted({n for m in METHODS.values() for n in m.defaults}):
        weights.add_argument(f"--{name.replace('_', '-')}", dest=name, type=_non_negative_float, metavar="X",
                             help=f"{name} (methods: {', '.join(k for k, m in METHODS.items() if name in m.defaults)})")
    _add_data_options(train)
    _add_recipe_options(train)
    train.set_defaults(func=_cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ValueError, FileNotFoundError) as error:
        # Bad input (a dataset file, an option value, a model name): one line, no traceback.
        print(f"l2d-sweep {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
