"""The commands about one run: ``train``, ``teacher``, ``dataset`` and ``methods``. Each builds its run with
:mod:`l2d.run`, the same builder a sweep trial uses."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import textwrap

import pyarrow as pa

from l2d.data import DATASETS, build_dataset, check_declared, dataset_stats
from l2d.losses import METHODS, loss_parts
from l2d.run import (
    build_splits,
    check_weights,
    default_out,
    get_teacher,
    resolve,
    splits_key,
    teacher_side,
    train_to_folder,
)
from sweeps.cli._common import (
    Progress,
    add_data_options,
    add_format_argument,
    add_recipe_options,
    non_negative_float,
    render,
    run_config,
    teacher_store,
)
from sweeps.specs import load_spec

# Loaded late, inside the functions that use them: l2d.models (not needed when the command line starts).


def _print_card(card: dict) -> None:
    rows = [
        ("teacher", card["backbone"]),
        ("digest", card["digest"]),
        ("dataset", card["key"]["dataset"]),
        ("image size", card["key"]["image_size"]),
        ("embed dim", card["key"]["embed_dim"]),
        ("epochs", card["epochs"] if not card.get("adopted") else "0 (its checkpoint, used as it is)"),
        ("parameters", f"{card['parameters']:,}"),
        ("val mAP", f"{card['val_mAP']:.2f}"),
        ("test mAP", f"{card['test_mAP']:.2f}"),
        ("wall time", f"{card['wall_time_s']:.1f} s"),
    ]
    if card.get("adopted"):
        rows.insert(
            -1, ("logits", "its own classifier's" if card["logits"] == "classifier" else "its label-wise head's")
        )
        if card.get("head_val_mAP") is not None:
            rows.insert(
                -1, ("head", f"label-wise head fitted {card['head_epochs']} epochs, val mAP {card['head_val_mAP']:.2f}")
            )
    for name, value in rows:
        print(f"{name:<11} {value}")


def _get_teacher(config, store, splits=None):
    """Load ``config``'s teacher from the store, or train and store it with progress lines: (model, card, trained)."""
    config = resolve(config)
    splits = splits if splits is not None else build_splits(config)
    adopted = config.teacher_epochs == 0
    if not store.has(splits_key(*teacher_side(config, splits))):
        what = (
            f"adopting teacher {config.teacher} from {config.teacher_weights} as it is (a label-wise head fitted "
            f"for {config.teacher_head_epochs} epochs when it has none)"
            if adopted
            else f"training teacher {config.teacher} on {config.dataset} for {config.teacher_epochs} epochs"
        )
        print(f"{what} (stored in {store.uri})", file=sys.stderr)
    progress = Progress(f"teacher {config.teacher}", config.teacher_head_epochs if adopted else config.teacher_epochs)
    try:
        return get_teacher(config, store, splits, progress.end_epoch, progress.batch)
    finally:
        progress.close()


def teacher_command_config(args: argparse.Namespace):
    """The run configuration ``l2d-sweep teacher`` trains (or finds) the teacher of."""
    return run_config(args, teacher=args.backbone, method="bce", teacher_weights=args.weights)


def train_command_config(args: argparse.Namespace):
    """The run configuration of ``l2d-sweep train``."""
    return run_config(
        args,
        teacher=args.teacher,
        student=args.student,
        method=args.method,
        hparams=_hparam_overrides(args),
        teacher_weights=args.teacher_weights,
        student_weights=args.student_weights,
    )


def _cmd_teacher(args: argparse.Namespace) -> int:
    store = teacher_store(args)
    config = teacher_command_config(args)
    check_weights(config)
    _, card, trained = _get_teacher(config, store)
    done = "adopted and stored" if card.get("adopted") else "trained and stored"
    print((done if trained else "loaded from the store") + f" ({store.uri})")
    _print_card(card)
    if args.json:
        print(json.dumps({k: v for k, v in card.items() if k != "history"}, indent=2))
    return 0


def _hparam_overrides(args: argparse.Namespace) -> dict[str, float]:
    names = {name for method in METHODS.values() for name in method.defaults}
    return {name: getattr(args, name) for name in sorted(names) if getattr(args, name, None) is not None}


def _cmd_train(args: argparse.Namespace) -> int:
    config = resolve(train_command_config(args))
    out = args.out or default_out(config)
    progress = Progress(f"student {config.student} ({config.method})", config.epochs)
    teacher = Progress(f"teacher {config.teacher}", config.teacher_epochs)
    try:
        result = train_to_folder(
            config, out, teacher_store(args), progress.end_epoch, progress.batch, (teacher.end_epoch, teacher.batch)
        )
    finally:
        teacher.close()
        progress.close()
    final, teacher_card = result["final"], result["teacher"]
    rows = [("student", config.student, result["student_parameters"], final)]
    if teacher_card:
        rows.insert(
            0,
            (
                "teacher",
                config.teacher,
                teacher_card["parameters"],
                {"val_mAP": teacher_card["val_mAP"], "test_mAP": teacher_card["test_mAP"]},
            ),
        )
    print(
        f"\n{'model':<8} {'backbone':<24} {'params':>11} {'val mAP':>8} {'test mAP':>9} {'test CF1':>9} {'test OF1':>9}"
    )
    for role, name, params, m in rows:
        cf1 = f"{m['test_CF1']:.2f}" if "test_CF1" in m else "-"
        of1 = f"{m['test_OF1']:.2f}" if "test_OF1" in m else "-"
        print(f"{role:<8} {name:<24} {params:>11,} {m['val_mAP']:>8.2f} {m['test_mAP']:>9.2f} {cf1:>9} {of1:>9}")
    weights = ", ".join(f"{k}={v:g}" for k, v in config.hparams.items()) or "no weights"
    print(
        f"\nmethod {config.method} ({weights}); chance level (mean label frequency): {result['chance_mAP']:.2f} mAP; "
        f"{result['wall_time_s']:.0f} s"
    )
    if result.get("teacher_outputs"):
        print(result["teacher_outputs"])
    print(f"wrote {out}/metrics.json, {out}/student.pt, TensorBoard logs in {out}/tensorboard")
    return 0


def _cmd_dataset(args: argparse.Namespace) -> int:
    backbones: list[str] = []
    name, root, options, image_size = args.dataset, args.data_root, dict(args.dataset_option), args.image_size
    if args.spec:
        if args.data_root or args.dataset_option or args.image_size or args.dataset != "mosaic-digits":
            raise ValueError("give either a spec (--spec) or --dataset and its options, not both")
        spec = load_spec(args.spec)
        name, root, options = spec.dataset.name, spec.dataset.root, dict(spec.dataset.options)
        image_size = spec.dataset.image_size
        backbones = list(dict.fromkeys(b for p in spec.pairings for b in (p.teacher, *p.students)))
    image_size = image_size or DATASETS[name].image_size
    sides = {backbone: image_size for backbone in backbones}  # the side each backbone sees its images at
    if args.spec and spec.dataset.teacher_image_size:
        sides.update({p.teacher: spec.dataset.teacher_image_size for p in spec.pairings})
    declared = check_declared(name, root, options)
    dataset = build_dataset(name, root, args.split, image_size, **options)
    stats = dataset_stats(dataset)
    grids = {}
    if backbones:
        from l2d.models import token_grid

        for backbone, side in sides.items():
            try:
                grids[backbone] = token_grid(backbone, side)
            except Exception as error:  # noqa: BLE001 - a backbone that cannot run at this size: said, not fatal
                grids[backbone] = f"cannot run at {side} px ({str(error).splitlines()[0][:160]})"
    if args.json:
        if declared is not None:
            stats = {
                **stats,
                "classes_from": declared.classes_from,
                "class_names": declared.class_names,
                "sources": declared.description,
                "warnings": declared.warnings,
                "split_sizes": {split: len(images) for split, (images, _) in declared.splits.items()},
            }
        if grids:
            stats["token_grid"] = {b: list(g) if isinstance(g, tuple) else g for b, g in grids.items()}
        print(json.dumps(stats, indent=2))
        return 0
    if declared is not None:
        for line in declared.description:
            print(line)
        sizes = ", ".join(f"{split} {len(images)}" for split, (images, _) in declared.splits.items())
        print(f"images: {sizes}")
        print(
            f"classes ({len(declared.class_names)}, from the {declared.classes_from}): "
            f"{', '.join(declared.class_names)}"
        )
        for warning in declared.warnings:
            print(f"warning: {warning}")
    print(
        f"{name}/{args.split}: {stats['images']} images, {stats['classes']} classes, "
        f"{stats['labels_per_image_mean']:.2f} labels per image"
    )
    histogram = ", ".join(f"{k}: {v}" for k, v in stats["labels_per_image_histogram"].items())
    print(f"labels per image: {histogram}")
    print(f"mean label frequency (the mAP of a random ranking): {100 * stats['mean_label_frequency']:.2f}%")
    print("label frequency: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in stats["label_frequency"].items()))
    print("most frequent pairs (count, lift = P(a,b) / P(a)P(b), 1 if independent):")
    for a, b, count, lift in stats["top_pairs"]:
        print(f"  {a} + {b}: {count} ({lift:.2f})")
    if grids:
        print(f"tokens the label-wise head sees at {image_size} px (its last feature map):")
        for backbone, grid in grids.items():
            if isinstance(grid, str):
                print(f"  {backbone}: {grid}")
                continue
            at = f" at {sides[backbone]} px (teacher_image_size)" if sides[backbone] != image_size else ""
            shape = " x ".join(str(n) for n in grid)
            tokens = 1
            for n in grid:
                tokens *= n
            note = (
                " (one token: the head sees no spatial layout; a larger image_size gives it more)"
                if tokens == 1
                else ""
            )
            print(f"  {backbone}{at}: {shape} = {tokens} token{'s' if tokens != 1 else ''}{note}")
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    rows = [
        {
            "method": name,
            "losses": "+".join(loss_parts(name)),
            "default weights": ", ".join(f"{k}={v:g}" for k, v in method.defaults.items()) or "-",
            "description": method.description,
        }
        for name, method in METHODS.items()
    ]
    if args.format != "table":  # every column, the descriptions included
        print(render(pa.Table.from_pylist(rows), args.format))
        return 0
    print(
        render(pa.Table.from_pylist([{k: v for k, v in r.items() if k != "description"} for r in rows])).split("\n(")[0]
    )  # the descriptions follow, so no "column not shown" note
    width = shutil.get_terminal_size((100, 24)).columns
    print()
    for row in rows:
        print(
            textwrap.fill(
                row["description"], width=width, initial_indent=f"{row['method']:<10}", subsequent_indent=" " * 10
            )
        )
    for dataset, info in DATASETS.items():
        for name, weights in info.method_weights.items():
            print(
                textwrap.fill(
                    f"on {dataset}, {name} defaults to "
                    + ", ".join(f"{k}={v:g}" for k, v in weights.items())
                    + " (tuned by benchmarks/defaults.py)",
                    width=width,
                )
            )
    return 0


WEIGHTS_HELP = (
    "a local file (.safetensors/.pth), or timm (the backbone's default pretrained weights), timm:<tag> or "
    "hf-hub:<org>/<repo>, from the local Hugging Face cache; nothing is downloaded (default: random init)"
)


def add_commands(commands) -> None:
    """Add ``methods``, ``dataset``, ``teacher`` and ``train`` to the subparsers ``commands``."""
    methods = commands.add_parser(
        "methods",
        help="list the distillation methods and their default weights",
        description="List the distillation methods, their loss parts, default weights "
        "and what each is; then the datasets whose own defaults differ.",
    )

    add_format_argument(
        methods, "output format (default: table, then the descriptions; csv, json or jsonl: every column)"
    )
    methods.set_defaults(func=_cmd_methods)

    dataset = commands.add_parser(
        "dataset",
        help="check a dataset and print a split's label statistics",
        description="Load and check a dataset (for your own data, declared with --dataset manifest / coco and "
        "--dataset-option, or by a spec: every split, every image's presence, the labels) and print a split's size, "
        "label cardinality, label frequencies and the most co-occurring label pairs. With --spec, also the token "
        "grid each backbone of the spec's pairings gives the label-wise head at the spec's image size.",
    )
    dataset.add_argument("--spec", help="take the dataset (and the backbones) from this sweep spec")
    dataset.add_argument("--split", default="train", choices=["train", "val", "test"], help="split (default: train)")
    dataset.add_argument("--json", action="store_true", help="print JSON")
    add_data_options(dataset, "dataset")
    dataset.set_defaults(func=_cmd_dataset)

    teacher = commands.add_parser(
        "teacher",
        help="train a teacher (or load it from the teacher store) and print its card",
        description="Train a teacher with BCE, or load it when the store already holds one with the same key "
        "(dataset and options, backbone, image size, embed dim, recipe, seed), and print its card. "
        "`train --teacher B --teacher-epochs N --teacher-lr X` and a sweep with the same settings use "
        "the same teacher.",
    )
    teacher.add_argument("--backbone", help="timm model name (default: the dataset's default teacher)")
    teacher.add_argument("--json", action="store_true", help="also print the card as JSON")
    teacher.add_argument("--weights", help=WEIGHTS_HELP + " (with --epochs 0: its checkpoint, used as it is)")
    add_data_options(teacher, "teacher")
    add_recipe_options(teacher, "teacher")
    teacher.set_defaults(func=_cmd_teacher)

    train = commands.add_parser(
        "train",
        help="distill one student from one teacher",
        description="Distill one student from one teacher (trained into, or loaded from, the teacher store) with one "
        "method; print a metrics table; write TensorBoard scalars, metrics.json, args.yaml and the "
        "student's weights into --out.",
    )
    train.add_argument("--teacher", help="teacher timm model name (default: the dataset's)")
    train.add_argument("--student", help="student timm model name (default: the dataset's)")
    train.add_argument("--method", default="l2d", choices=list(METHODS), help="distillation method (default: l2d)")
    train.add_argument(
        "--teacher-weights",
        help=f"the teacher's initial weights: {WEIGHTS_HELP} (with --teacher-epochs 0: its checkpoint, used as it is)",
    )
    train.add_argument(
        "--student-weights",
        "--student-pretrained",
        dest="student_weights",
        help="the student's initial weights: " + WEIGHTS_HELP,
    )
    train.add_argument("--out", help="output folder (default: runs/<dataset>-<teacher>-to-<student>-<method>)")
    weights = train.add_argument_group("loss weights (defaults: the method's; see `l2d-sweep methods`)")
    for name in sorted({n for m in METHODS.values() for n in m.defaults}):
        weights.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=non_negative_float,
            metavar="X",
            help=f"{name} (methods: {', '.join(k for k, m in METHODS.items() if name in m.defaults)})",
        )
    add_data_options(train, "train")
    add_recipe_options(train, "train")
    train.set_defaults(func=_cmd_train)
