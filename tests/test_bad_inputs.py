"""Every bad input a user can give: one line on stderr, the right exit status, nothing written.

The cases double as the table "What a bad input gets" in docs/reliability.md: ``test_readme_table_is_current`` renders
the table from the messages the code prints and compares it with the page's (set ``L2D_UPDATE_README=1`` to rewrite
it), so the
table cannot drift from the code. No case starts Ray: everything is checked before.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path

import pytest
import yaml

from sweeps.cli import main
from tests.sweeps.conftest import TINY_SPEC

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "docs" / "reliability.md"
START, END = "<!-- bad-inputs:start -->", "<!-- bad-inputs:end -->"


def _spec(tmp: Path, **changes) -> str:
    data = {**TINY_SPEC, "storage": str(tmp / "storage"), **changes}
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _nested(section: str, **values) -> dict:
    return {section: {**TINY_SPEC[section], **values}}


def _sweep(tmp: Path, name: str = "tiny") -> Path:
    """A finished-looking sweep folder (marker, spec, a trials table) without running one."""
    from sweeps.folder.marker import write_marker
    from sweeps.results import ResultsWriter
    from sweeps.specs import parse_spec

    spec = parse_spec({**TINY_SPEC, "storage": str(tmp / "storage"), "name": name})
    write_marker(spec.sweep_dir)
    (spec.sweep_dir / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict()))
    writer = ResultsWriter(spec.sweep_dir, 3)
    writer.record_epoch(
        "t1", {"teacher": "test_resnet", "student": "test_convnext", "method": "l2d"}, {"epoch": 1, "val_mAP": 10.0}
    )
    writer.write()
    return tmp / "storage" / name


def _live_lease(tmp: Path) -> Path:
    sweep = _sweep(tmp)
    now = time.time()
    (sweep / "lease.json").write_text(
        json.dumps(
            {
                "owner": "other",
                "user": "alice",
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "command": "l2d-sweep run spec.yaml",
                "acquired": now - 60,
                "heartbeat": now,
            }
        )
    )
    return sweep


def _damaged_segment(tmp: Path) -> Path:
    """A sweep whose newest trials segment (named by the manifest) is damaged."""
    sweep = _sweep(tmp)
    manifest = json.loads((sweep / "results" / "manifest.json").read_text())
    (sweep / "results" / manifest["segments"][-1]["trials"]).write_text("PAR1 not really")
    return sweep


def _damaged(tmp: Path, relative: str, content: str) -> Path:
    sweep = _sweep(tmp)
    (sweep / relative).write_text(content)
    return sweep


TRAIN = ["train", "--teacher", "test_resnet", "--student", "test_convnext", "--image-size", "16", "--embed-dim", "16"]

# (shown input, argv builder, exit status, what the message must contain)
CASES = [
    ("`run /etc` (a folder)", lambda t: ["run", "/etc"], 2, "/etc: is a folder; expected a sweep spec"),
    ("`run nope.yaml` (missing)", lambda t: ["run", str(t / "nope.yaml")], 2, "nope.yaml: spec file not found"),
    ("spec: invalid YAML", lambda t: ["run", _write(t, "name: [unclosed")], 2, "not valid YAML"),
    (
        "spec: a Python object tag",
        lambda t: ["run", _write(t, "!!python/object/apply:os.system ['echo']")],
        2,
        "not valid YAML",
    ),
    ("spec: an unknown key", lambda t: ["run", _spec(t, colour="red")], 2, "colour: unknown key"),
    (
        "spec: `dataset.options.scale: -1`",
        lambda t: ["run", _spec(t, dataset={**TINY_SPEC["dataset"], "options": {"scale": -1}})],
        2,
        "dataset.options.scale: -1 (int) is not allowed; allowed: a number > 0 and <= 100",
    ),
    (
        "spec: a mosaic option of the wrong type",
        lambda t: ["run", _spec(t, dataset={**TINY_SPEC["dataset"], "options": {"size": "many"}})],
        2,
        "dataset.options.size: 'many' (str) is not allowed; allowed: an integer >= 1",
    ),
    (
        "spec: a VOC option `difficult_as_positive: maybe`",
        lambda t: [
            "run",
            _spec(t, dataset={"name": "voc2007", "root": str(t), "options": {"difficult_as_positive": "maybe"}}),
        ],
        2,
        "dataset.options.difficult_as_positive: 'maybe' (str) is not allowed; allowed: true or false",
    ),
    ("spec: `seed: 4294967296`", lambda t: ["run", _spec(t, seed=2**32)], 2, "seed: 4,294,967,296 is too large"),
    (
        "spec: `image_size: 100000`",
        lambda t: ["run", _spec(t, dataset={**TINY_SPEC["dataset"], "image_size": 100000})],
        2,
        "dataset.image_size: 100,000 is too large",
    ),
    (
        "your data: `format: tfrecord`",
        lambda t: ["run", _spec(t, dataset={"format": "tfrecord", "train": "a.tfrecord"})],
        2,
        "dataset.format: 'tfrecord' (str) is not allowed; allowed: manifest, coco",
    ),
    (
        "your data: two images the manifest names are missing",
        lambda t: ["run", _own_data(t, "missing")],
        2,
        "2 image file(s) missing (<tmp>/data/train.csv row 4: <tmp>/data/images/003.png;",
    ),
    (
        "your data: a label outside the classes file",
        lambda t: ["run", _own_data(t, "label")],
        2,
        "train.csv: row 2: label 'dog' is not in the class list (2 classes: car, cat)",
    ),
    (
        "your data: the same image in train and test",
        lambda t: ["run", _own_data(t, "overlap")],
        2,
        "the same image is in train and test: 1 image(s), first <tmp>/data/images/005.png",
    ),
    ("your data: an empty test table", lambda t: ["run", _own_data(t, "empty")], 2, "the test split is empty"),
    (
        "your data: labels with two delimiters",
        lambda t: ["run", _own_data(t, "delimiters")],
        2,
        "test.csv: ambiguous label column 'labels': both '|' (row 1: 'cat|dog;car') and ';'",
    ),
    (
        "your data: an image URI with a password",
        lambda t: ["run", _own_data(t, "credentials")],
        2,
        "test.csv: row 1: image: 's3://***@bucket/x.png' carries credentials in the URI",
    ),
    (
        "your teacher: `teacher_epochs: 0` without its checkpoint",
        lambda t: ["run", _spec(t, **_nested("budget", teacher_epochs=0))],
        2,
        "budget.teacher_epochs: 0 uses each teacher as it is: weights.test_resnet must name its checkpoint file",
    ),
    (
        "your teacher: a checkpoint URI with a password",
        lambda t: ["validate", _spec(t, weights={"test_resnet": "s3://alice:s3cr3t@bucket/teacher.safetensors"})],
        2,
        "weights.test_resnet: the URI carries a password; give the object store's credentials through its environment",
    ),
    (
        "your teacher: a checkpoint that names other classes",
        lambda t: ["run", _adopted_over(t, ["bird", "car", "cat"])],
        2,
        "(metadata class_names): the checkpoint's classes are not the dataset's: it lacks 1 of the dataset's 3 "
        "classes (first: 'dog') and has 1 the dataset does not (first: 'bird')",
    ),
    (
        "your teacher: a checkpoint that names other classes (`validate`)",
        lambda t: ["validate", _adopted_over(t, ["bird", "car", "cat"])],
        2,
        "(metadata class_names): the checkpoint's classes are not the dataset's: it lacks 1 of the dataset's 3 "
        "classes (first: 'dog') and has 1 the dataset does not (first: 'bird')",
    ),
    (
        "spec: `embed_dim: 12`",
        lambda t: ["run", _spec(t, **_nested("recipe", embed_dim=12))],
        2,
        "recipe.embed_dim: 12 is not allowed; allowed: a multiple of 8",
    ),
    (
        "spec: `cpus_per_worker: 4096`",
        lambda t: ["run", _spec(t, **_nested("resources", cpus_per_worker=4096))],
        2,
        "resources.cpus_per_worker: 4096 is out of range",
    ),
    (
        "spec: more CPUs than this machine, no cluster",
        lambda t: ["run", _spec(t, **_nested("resources", cpus_per_worker=os.cpu_count() + 1))],
        2,
        "but this machine has",
    ),
    (
        "spec: a GPU on a machine without one",
        lambda t: ["run", _spec(t, **_nested("resources", gpus_per_worker=1))],
        2,
        "GPUs (workers_per_trial x",
    ),
    (
        "spec: an unknown method",
        lambda t: ["run", _spec(t, methods=["l2d", "fitnet"])],
        2,
        "methods[1]: unknown method 'fitnet'",
    ),
    (
        "spec: an unknown backbone",
        lambda t: ["run", _spec(t, pairings=[{"teacher": "resnet_50", "students": ["resnet18"]}])],
        2,
        "pairings[0].teacher: unknown backbone 'resnet_50'",
    ),
    (
        "spec: an empty range",
        lambda t: ["run", _spec(t, search_space={"lr": {"low": 0.01, "high": 0.001}})],
        2,
        "search_space.lr: empty range",
    ),
    (
        "spec: a negative weight",
        lambda t: ["run", _spec(t, search_space={"lambda_mld": -5})],
        2,
        "search_space.lambda_mld: -5 is out of range",
    ),
    (
        "spec: `grace_period` beyond `max_epochs`",
        lambda t: ["run", _spec(t, **_nested("budget", grace_period=9))],
        2,
        "budget.grace_period: 9 exceeds budget.max_epochs",
    ),
    (
        "spec: `searcher: grid`",
        lambda t: ["run", _spec(t, **_nested("budget", searcher="grid"))],
        2,
        "budget.searcher: 'grid' (str) is not allowed",
    ),
    ("spec: `name: teachers`", lambda t: ["run", _spec(t, name="teachers")], 2, "name: 'teachers' is reserved"),
    (
        "spec: credentials in the storage URI",
        lambda t: ["run", _spec(t, storage="s3://AKIDEXAMPLE:s3cr3t@bucket/runs")],
        2,
        "carries credentials in the URI",
    ),
    (
        "spec: storage `ftp://host/x`",
        lambda t: ["run", _spec(t, storage="ftp://host/x")],
        2,
        "unsupported scheme 'ftp'",
    ),
    ("`run --name teachers`", lambda t: ["run", _spec(t), "--name", "teachers"], 2, "'teachers' is reserved"),
    (
        "`run --storage ~ --name Documents --new` (a folder of yours)",
        lambda t: ["run", _spec(t), "--storage", str(_documents(t).parent), "--name", "Documents", "--new"],
        2,
        "is not a sweep folder (no .l2d-sweep marker): refusing to write into it or delete it",
    ),
    ("`run` on an existing sweep", lambda t: (_sweep(t), ["run", _spec(t)])[1], 2, "a sweep already exists at"),
    (
        "`run --or-resume --num-samples 50` on a sweep started with 5",
        lambda t: (_sweep(t), ["run", _spec(t), "--or-resume", "--num-samples", "50"])[1],
        2,
        "--or-resume: <tmp>/storage/tiny was started with another spec (budget.num_samples: stored 5, given 50)",
    ),
    ("`run --or-resume --new`", lambda t: ["run", _spec(t), "--or-resume", "--new"], 2, "contradict each other"),
    (
        "`run --new` while another driver runs it",
        lambda t: (_live_lease(t), ["run", _spec(t), "--new"])[1],
        1,
        "refusing to delete it (--new) while it runs",
    ),
    (
        "`resume` while another driver runs it",
        lambda t: ["resume", str(_live_lease(t))],
        1,
        "is being driven by alice@",
    ),
    ("`resume` of a folder that is not a sweep", lambda t: ["resume", str(_documents(t))], 2, "no sweep here"),
    (
        "`resume` with a damaged `spec.yaml`",
        lambda t: ["resume", str(_damaged(t, "spec.yaml", "name: [x"))],
        1,
        "spec.yaml: not valid YAML",
    ),
    (
        "`results --sql \"COPY trials TO '...'\"`",
        lambda t: ["results", str(_sweep(t)), "--sql", f"COPY trials TO '{t}/storage/tiny/results/trials.parquet'"],
        2,
        "SQL error: Permission Error",
    ),
    (
        "`results --sql \"SELECT * FROM read_csv('/etc/passwd')\"`",
        lambda t: ["results", str(_sweep(t)), "--sql", "SELECT * FROM read_csv('/etc/passwd')"],
        2,
        "file system operations are disabled",
    ),
    (
        "`results` with a damaged results segment",
        lambda t: ["results", str(_damaged_segment(t))],
        1,
        "-trials.parquet: unreadable Parquet file",
    ),
    ("`status` of a missing folder", lambda t: ["status", str(t / "nowhere")], 2, "no such sweep folder"),
    ("`train --device bogus`", lambda t: [*TRAIN, "--device", "bogus"], 2, "unknown device 'bogus'"),
    (
        "`train --out` a file",
        lambda t: [*TRAIN, "--out", str(_write(t, "x", "f.txt"))],
        2,
        "exists and is not a folder",
    ),
    (
        "`train --epochs 0`",
        lambda t: [*TRAIN, "--epochs", "0"],
        2,
        "--epochs: 0 is out of range; allowed: an integer >= 1",
    ),
    ("`train --lambda-cd -1`", lambda t: [*TRAIN, "--lambda-cd", "-1"], 2, "--lambda-cd: must be a finite number"),
    (
        "`train --method kd --lambda-cd 5`",
        lambda t: [*TRAIN, "--method", "kd", "--lambda-cd", "5"],
        2,
        "method 'kd' has no hyperparameter 'lambda_cd'",
    ),
    (
        "`train --seed 4294967296`",
        lambda t: [*TRAIN, "--seed", str(2**32)],
        2,
        "--seed: 4,294,967,296 is out of range; allowed: an integer >= 0 and <= 4,294,967,295",
    ),
    ("`train --dataset coco2014` (no root)", lambda t: [*TRAIN, "--dataset", "coco2014"], 2, "needs a root folder"),
    (
        "`train --dataset voc2007 --data-root` an empty folder",
        lambda t: [*TRAIN, "--dataset", "voc2007", "--data-root", str(t), "--method", "bce"],
        2,
        "ImageSets/Main/trainval.txt: file not found",
    ),
    (
        "`train --dataset-option sizes=3`",
        lambda t: [*TRAIN, "--dataset-option", "sizes=3"],
        2,
        "unknown mosaic-digits option 'sizes'",
    ),
    (
        "`train --dataset-option scale=-1`",
        lambda t: [*TRAIN, "--dataset-option", "scale=-1"],
        2,
        "scale: -1 (int) is not allowed; allowed: a number > 0",
    ),
    (
        "`train` on 21 images with batch 4 (a one-step OneCycle warm-up)",
        lambda t: [
            *TRAIN,
            "--method",
            "bce",
            "--dataset-option",
            "size=21",
            "--batch-size",
            "4",
            "--epochs",
            "1",
            "--out",
            str(t / "out"),
        ],
        2,
        "a warm-up of exactly one step",
    ),
    (
        "`train --student-pretrained missing.pth`",
        lambda t: [
            *TRAIN,
            "--method",
            "bce",
            "--dataset-option",
            "size=40",
            "--student-pretrained",
            str(t / "missing.pth"),
        ],
        2,
        "weights '<tmp>/missing.pth' for test_convnext: file not found",
    ),
    (
        "spec: weights of a missing file",
        lambda t: ["run", _spec(t, weights={"test_resnet": str(t / "r.safetensors")})],
        2,
        "weights '<tmp>/r.safetensors' for test_resnet: file not found",
    ),
    (
        "spec: weights of another backbone",
        lambda t: ["run", _spec(t, weights={"test_resnet": _weights_file(t, "test_efficientnet")})],
        2,
        "test_efficientnet.pth: weights do not fit test_resnet",
    ),
    (
        "spec: weights for a backbone no pairing names",
        lambda t: ["run", _spec(t, weights={"resnet18": "timm"})],
        2,
        "weights.resnet18: unknown key",
    ),
    (
        "spec: `teacher_schedule_epochs` shorter than `teacher_epochs`",
        lambda t: ["run", _spec(t, **_nested("budget", teacher_schedule_epochs=0))],
        2,
        "budget.teacher_schedule_epochs: 0 is too small",
    ),
    (
        "`train --teacher-weights timm` not in the Hugging Face cache",
        lambda t: [*TRAIN, "--teacher-weights", "timm", "--out", str(t / "o")],
        2,
        "is not in the local Hugging Face cache",
    ),
    (
        "spec: a password in `study_storage`",
        lambda t: ["run", _spec(t, study_storage="postgresql://alice:s3cr3t@db.example/l2d")],
        2,
        "study_storage: the URL carries a password",
    ),
    (
        "spec: `study_storage: redis://...`",
        lambda t: ["run", _spec(t, study_storage="redis://host/0")],
        2,
        "study_storage: 'redis://host/0': unsupported database",
    ),
    (
        "spec: `objectives` starting with `latency_ms`",
        lambda t: ["run", _spec(t, objectives=[{"metric": "latency_ms"}, {"metric": "val_mAP"}])],
        2,
        "objectives[0].metric: 'latency_ms' is not allowed first",
    ),
    (
        "spec: `objectives` beside `metric`",
        lambda t: ["run", _spec(t, metric="val_mAP", objectives=[{"metric": "val_mAP"}])],
        2,
        "give either objectives or metric/mode, not both",
    ),
    (
        "spec: `warm_start` from a folder without results",
        lambda t: ["run", _spec(t, warm_start=str(t / "elsewhere"))],
        2,
        "elsewhere: no such sweep folder",
    ),
    (
        "`extend` of a sweep that has not finished",
        lambda t: ["extend", str(_sweep(t)), "--num-samples", "3"],
        2,
        "has not finished its 5 trials (1 running); `l2d-sweep resume",
    ),
    (
        "spec: `keep: newest`",
        lambda t: ["run", _spec(t, keep="newest")],
        2,
        "keep: 'newest' (str) is not allowed; allowed: best+last, best, all",
    ),
    (
        "spec: a password in the MLflow URI",
        lambda t: ["run", _spec(t, tracking={"mlflow": {"tracking_uri": "https://me:s3cr3t@mlflow.example"}})],
        2,
        "tracking.mlflow.tracking_uri: the URI carries a password",
    ),
    (
        "spec: `tracking: {wandb: ...}`",
        lambda t: ["run", _spec(t, tracking={"wandb": {"project": "x"}})],
        2,
        "tracking.wandb: unknown key",
    ),
    (
        "`export` of a folder that is not a sweep",
        lambda t: ["export", str(_documents(t)), "--out", str(t / "out")],
        2,
        "no sweep here",
    ),
    (
        "`export --trial` of a trial that does not exist",
        lambda t: ["export", str(_sweep(t)), "--trial", "nope", "--out", str(t / "out")],
        2,
        "--trial nope: no such trial",
    ),
    (
        "`export` of a trial without a best checkpoint",
        lambda t: ["export", str(_sweep(t)), "--trial", "t1", "--out", str(t / "out")],
        2,
        "trial t1 (running) has no best checkpoint",
    ),
    (
        "`export --format tflite`",
        lambda t: ["export", str(_sweep(t)), "--out", str(t / "out"), "--format", "tflite"],
        2,
        "unknown export format 'tflite'; allowed: safetensors, torchscript, onnx",
    ),
    ("`dashboard` of a folder that is not a sweep", lambda t: ["dashboard", str(_documents(t))], 2, "no sweep here"),
    (
        "`teacher --dataset-option nonsense`",
        lambda t: ["teacher", "--dataset-option", "nonsense"],
        2,
        "expected KEY=VALUE",
    ),
    (
        "`run --name proj --new` over a folder of yours with a `spec.yaml` and a `results/` (no marker)",
        lambda t: ["run", _spec(t), "--name", "proj", "--new", "--storage", str(_project(t).parent)],
        2,
        "is not a sweep folder (no .l2d-sweep marker): refusing to write into it or delete it",
    ),
    (
        "`spec --schema --out` a sweep's own `spec.yaml`",
        lambda t: ["spec", "--schema", "--out", str(_sweep(t) / "spec.yaml")],
        2,
        "is not a spec schema this tool wrote; refusing to replace it",
    ),
    (
        "`plot --out` a text file that mentions l2d-sweep",
        lambda t: ["plot", str(_sweep(t)), "--kind", "history", "--out", _write(t, "notes on l2d-sweep", "notes.png")],
        2,
        "exists and was not written by l2d-sweep; refusing to replace it",
    ),
    (
        "spec: a password inside a storage URI's query value",
        lambda t: ["validate", _spec(t, storage="s3://b/p?endpoint_override=alice:s3cr3t@host&scheme=http")],
        2,
        "carries a credential parameter (endpoint_override (a user:password@ in its value))",
    ),
    (
        "spec: a YAML alias bomb",
        lambda t: ["run", _write(t, _bomb())],
        2,
        "once its aliases (*name) are expanded: refused",
    ),
    (
        "spec: a file of 10 MB",
        lambda t: ["validate", _spec(t, methods=["m" * 10_000_000])],
        2,
        "not valid YAML (larger than 1,000,000 bytes; a spec is a short YAML file)",
    ),
    (
        "spec: a method name of 500,000 characters",
        lambda t: ["validate", _spec(t, methods=["m" * 500_000])],
        2,
        "... (500,002 characters); allowed: ",
    ),
    (
        "spec: a sweep name of 500,000 characters",
        lambda t: ["validate", _spec(t, name="n" * 500_000)],
        2,
        "name: 500,000 characters is too long; at most 100",
    ),
    (
        "`run --name` of 300 characters",
        lambda t: ["run", _spec(t), "--name", "n" * 300],
        2,
        "name: 300 characters is too long; at most 100",
    ),
    ("spec: a sweep name with a slash", lambda t: ["validate", _spec(t, name="a/b")], 2, "name: 'a/b' is not allowed"),
    (
        "spec: `lr: {low: .nan}`",
        lambda t: ["validate", _write(t, _yaml_with(t, "search_space:\n  lr: {low: .nan, high: 1}\n"))],
        2,
        "search_space.lr.low: expected a finite number, got nan",
    ),
    (
        "spec: `lambda_mld: .inf`",
        lambda t: ["validate", _write(t, _yaml_with(t, "search_space:\n  lambda_mld: .inf\n"))],
        2,
        "search_space.lambda_mld: expected a finite number, got inf",
    ),
    (
        "`status` of a sweep whose `spec.yaml` is a folder",
        lambda t: ["status", str(_spec_folder(t))],
        1,
        "spec.yaml: is not a file (a folder?); the sweep's stored spec is damaged",
    ),
    (
        "`results` of a sweep whose `spec.yaml` is a folder",
        lambda t: ["results", str(_spec_folder(t))],
        1,
        "spec.yaml: is not a file (a folder?)",
    ),
    (
        "`export` of a sweep whose `spec.yaml` is a folder",
        lambda t: ["export", str(_spec_folder(t)), "--out", str(t / "out")],
        1,
        "spec.yaml: is not a file (a folder?)",
    ),
    (
        "`resume` of a sweep whose `spec.yaml` is a folder",
        lambda t: ["resume", str(_spec_folder(t))],
        1,
        "spec.yaml: is not a file (a folder?)",
    ),
    ("`l2d-sweep bogus`", lambda t: ["bogus"], 2, "invalid choice: 'bogus'"),
]


def _project(tmp: Path) -> Path:
    """A user's folder that looks a little like an old sweep (a spec.yaml and a results/ folder) but is not one."""
    project = tmp / "work" / "proj"
    (project / "results").mkdir(parents=True)
    (project / "spec.yaml").write_text("# my notes for the project\ntitle: proj\n")
    (project / "results" / "figures.csv").write_text("a,b\n1,2\n")
    return project


def _bomb() -> str:
    lines = ["name: bomb", 'a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    return "\n".join(lines + [f"methods: [{','.join(['*a8'] * 10)}]"]) + "\n"


def _yaml_with(tmp: Path, extra: str) -> str:
    base = {k: v for k, v in {**TINY_SPEC, "storage": str(tmp / "storage")}.items() if k != "search_space"}
    return yaml.safe_dump(base) + extra


def _spec_folder(tmp: Path) -> Path:
    sweep = _sweep(tmp)
    (sweep / "spec.yaml").unlink()
    (sweep / "spec.yaml").mkdir()
    return sweep


def _weights_file(tmp: Path, backbone: str) -> str:
    import timm
    import torch

    path = tmp / f"{backbone}.pth"
    torch.save(timm.create_model(backbone, pretrained=False).state_dict(), path)
    return str(path)


def _own_data(tmp: Path, defect: str) -> str:
    """A spec declaring a CSV dataset of real images (tests/userdata.py) with one ``defect``."""
    from tests.userdata import csv_dataset, write_csv

    dataset = csv_dataset(tmp / "data", train=12, test=4)
    data = tmp / "data"
    rows = [line.split(",") for line in (data / "train.csv").read_text().splitlines()[1:]]
    if defect == "missing":
        for name in ("003.png", "007.png"):
            (data / "images" / name).unlink()
    elif defect == "label":
        (data / "classes.txt").write_text("car\ncat\n")
        dataset["classes"] = str(data / "classes.txt")
    elif defect == "overlap":
        write_csv(data / "test.csv", ["image", "labels"], [rows[5], ["images/013.png", "cat"]])
    elif defect == "empty":
        write_csv(data / "test.csv", ["image", "labels"], [])
    elif defect == "delimiters":
        write_csv(data / "test.csv", ["image", "labels"], [["images/013.png", "cat|dog;car"]])
    elif defect == "credentials":
        write_csv(data / "test.csv", ["image", "labels"], [["s3://alice:s3cr3t@bucket/x.png", "cat"]])
    return _spec(tmp, dataset=dataset)


def _adopted_over(tmp: Path, names: list[str]) -> str:
    """A spec adopting a plain timm classifier (``teacher_epochs`` 0) whose safetensors metadata names ``names``,
    over a CSV dataset of the classes car, cat, dog."""
    import json as json_module

    import timm
    from safetensors.torch import save_file

    from tests.userdata import csv_dataset

    dataset = csv_dataset(tmp / "data", train=12, test=4)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=len(names))
    path = tmp / "data" / "teacher.safetensors"
    tensors = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(tensors, str(path), metadata={"class_names": json_module.dumps(names)})
    return _spec(tmp, dataset=dataset, weights={"test_resnet": str(path)}, **_nested("budget", teacher_epochs=0))


def _write(tmp: Path, text: str, name: str = "bad.yaml") -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


def _documents(tmp: Path) -> Path:
    documents = tmp / "Documents"
    documents.mkdir(exist_ok=True)
    (documents / "thesis.tex").write_text("precious")
    return documents


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True)
def _empty_hub_cache(monkeypatch):
    """No Hugging Face cache, whatever this machine holds: the table must not depend on it."""
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent/hf-hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _run_case(case, tmp: Path, capsys) -> tuple[int, str]:
    shown, build, _, _ = case
    argv = build(tmp)
    before = _snapshot(tmp)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse's own errors
        code = exit_info.code
    after = _snapshot(tmp)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, (shown, lines)
    assert after == before, (shown, "wrote or changed files", set(after) ^ set(before))
    return code, lines[0].replace(str(tmp), "<tmp>")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line_and_its_exit_status(case, tmp_path, capsys):
    shown, _, status, expected = case
    code, message = _run_case(case, tmp_path, capsys)
    assert code == status, (shown, message)
    assert expected in message, (shown, message)
    assert "s3cr3t" not in message
    assert len(message) < 1200, (shown, len(message))  # a value is never echoed whole


def _table(rows: list[tuple[str, int, str]]) -> str:
    lines = ["| input | exit | what the user sees (stderr, one line) |", "|---|---|---|"]
    for shown, code, message in rows:
        escaped = message.replace("|", "\\|").replace("`", "'")
        lines.append(f"| {shown} | {code} | `{escaped}` |")
    return "\n".join(lines)


def test_readme_table_is_current(tmp_path_factory, capsys):
    rows = []
    for index, case in enumerate(CASES):
        tmp = tmp_path_factory.mktemp(f"case{index}")
        code, message = _run_case(case, tmp, capsys)
        # Machine-specific numbers (this machine's cores, a process id, a host) would make the table drift.
        message = re.sub(r"this machine has \d+", "this machine has N", message)
        message = re.sub(r"alice@\S+ pid \d+", "alice@HOST pid PID", message)
        message = re.sub(r"g\d{9}-[0-9a-f]{6}-", "gGENERATION-TAG-", message)  # a segment's name: a random tag
        message = re.sub(
            r"since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d, last heartbeat \d+ s ago",
            "since TIME, last heartbeat 0 s ago",
            message,
        )
        message = re.sub(
            r"needs \d+ CPUs \(workers_per_trial 1 x cpus_per_worker \d+\)",
            "needs N+1 CPUs (workers_per_trial 1 x cpus_per_worker N+1)",
            message,
        )
        rows.append((case[0], code, message))
    table = _table(rows)
    text = README.read_text()
    assert START in text and END in text, f"{README} lacks the bad-input table markers"
    current = text.split(START, 1)[1].split(END, 1)[0].strip()
    if os.environ.get("L2D_UPDATE_README") == "1":
        README.write_text(
            text.replace(current, table) if current else text.replace(START + END, f"{START}\n{table}\n{END}")
        )
        return
    assert current == table, (
        "docs/reliability.md's bad-input table is out of date: run L2D_UPDATE_README=1 pytest "
        "tests/test_bad_inputs.py::test_readme_table_is_current"
    )
