"""A user's own data from the spec alone: a CSV of image paths, a Parquet table with embedded bytes, COCO files under
names of their own, and the CSV's images on an S3 server (moto). For each: ``validate``, ``dataset`` and a 2-trial
sweep through the command line, in a fresh process as a user runs them, with no code."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from tests.commands import l2d_sweep
from tests.userdata import (
    CLASSES,
    coco_dataset,
    csv_dataset,
    fine_tune_elsewhere,
    labels,
    parquet_dataset,
    png,
    write_csv,
)

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]


def _spec(tmp_path, dataset: dict, storage: str | None = None, **changes) -> str:
    data = {
        "name": "mine",
        "storage": storage or str(tmp_path / "sweeps"),
        "dataset": {**dataset, "image_size": 16},
        "pairings": [{"teacher": "test_resnet", "students": ["test_efficientnet"]}],
        "methods": ["mld", "l2d"],
        "search_space": {"lr": {"low": 1e-3, "high": 5e-3}},
        "budget": {"num_samples": 2, "max_epochs": 1, "grace_period": 1, "teacher_epochs": 1},
        "resources": {"workers_per_trial": 1, "cpus_per_worker": 1, "max_concurrent_trials": 1},
        "recipe": {"batch_size": 8, "embed_dim": 16},
        **changes,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _validate_dataset_and_run(spec: str, cwd, sizes: dict) -> None:
    validate = l2d_sweep("validate", spec, cwd=cwd)
    assert validate.returncode == 0, validate.stderr
    shown = ", ".join(f"{split} {count}" for split, count in sizes.items())
    assert "dataset: 3 classes (from the " in validate.stdout and f"images: {shown}" in validate.stdout
    described = l2d_sweep("dataset", "--spec", spec, "--split", "test", "--json", cwd=cwd)
    assert described.returncode == 0, described.stderr
    stats = json.loads(described.stdout)
    assert stats["class_names"] == CLASSES and stats["split_sizes"] == sizes
    assert stats["images"] == sizes["test"]
    assert set(stats["token_grid"]) == {"test_resnet", "test_efficientnet"}
    run = l2d_sweep("run", spec, cwd=cwd)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "dataset manifest: 3 classes" in run.stdout or "dataset coco: 3 classes" in run.stdout
    assert "sweep finished: 2 completed" in run.stdout


def test_a_csv_of_image_paths(tmp_path):
    dataset = csv_dataset(tmp_path / "data")
    # Paths relative to the folder the user runs from: the spec makes them absolute, so Ray's trial folders and a
    # later resume from elsewhere find the files.
    dataset = {k: os.path.relpath(v, tmp_path) if k != "format" else v for k, v in dataset.items()}
    spec = _spec(tmp_path, dataset)
    _validate_dataset_and_run(spec, tmp_path, {"train": 22, "val": 2, "test": 8})
    results = l2d_sweep(
        "results", str(tmp_path / "sweeps" / "mine"), "--sql", "SELECT count(*) AS n FROM trials", "--format", "csv"
    )
    assert results.stdout.splitlines() == ["n", "2"], results.stderr


def test_a_parquet_table_with_embedded_images(tmp_path):
    spec = _spec(tmp_path, parquet_dataset(tmp_path / "data"))
    _validate_dataset_and_run(spec, tmp_path, {"train": 22, "val": 2, "test": 8})


def test_coco_files_under_names_of_their_own(tmp_path):
    spec = _spec(tmp_path, coco_dataset(tmp_path / "data"))
    _validate_dataset_and_run(spec, tmp_path, {"train": 22, "val": 2, "test": 8})


def test_a_csv_whose_images_are_on_s3(s3_server, tmp_path, monkeypatch):
    import boto3

    client = boto3.client("s3", endpoint_url=f"http://{s3_server}")
    query = f"?endpoint_override={s3_server}&scheme=http"
    rows = []
    for i, row_labels in enumerate(labels(32)):
        client.put_object(Bucket="sweeps", Key=f"photos/{i:03d}.png", Body=png(i))
        rows.append([f"s3://sweeps/photos/{i:03d}.png{query}", "|".join(row_labels)])
    dataset = {
        "format": "manifest",
        "train": write_csv(tmp_path / "train.csv", ["image", "labels"], rows[:24]),
        "test": write_csv(tmp_path / "test.csv", ["image", "labels"], rows[24:]),
    }
    monkeypatch.setenv("L2D_SWEEP_CACHE", str(tmp_path / "cache"))
    spec = _spec(tmp_path, dataset, storage=f"s3://sweeps/runs{query}")
    _validate_dataset_and_run(spec, tmp_path, {"train": 22, "val": 2, "test": 8})
    # The images read were fetched into the node's cache, each once (one file per image, whatever the number of
    # trials and epochs that read it; the val and test images at least, every train batch's too).
    cached = sorted(path.read_bytes() for path in (tmp_path / "cache" / "images").rglob("*.png"))
    assert 10 <= len(cached) <= 32 and len(set(cached)) == len(cached)
    assert set(cached) <= {png(i) for i in range(32)}


def test_a_teacher_fine_tuned_elsewhere_used_as_it_is(tmp_path):
    """A plain timm classifier trained outside the package (safetensors) is the teacher with teacher_epochs 0: MLD
    distills its own logits, L2D a head fitted on its frozen backbone; its scores are said and on its card."""
    dataset = csv_dataset(tmp_path / "data")
    checkpoint = fine_tune_elsewhere(tmp_path / "data", dataset, size=16)
    budget = {"num_samples": 2, "max_epochs": 1, "grace_period": 1, "teacher_epochs": 0, "teacher_head_epochs": 2}
    spec = _spec(tmp_path, dataset, weights={"test_resnet": checkpoint}, budget=budget)
    run = l2d_sweep("run", spec, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "teacher test_resnet: adopted as it is (label-wise head fitted: val mAP " in run.stdout
    assert "sweep finished: 2 completed" in run.stdout
    # the teacher phase's record, beside the student alone in the results (mld and l2d only: that is unknown)
    recorded = json.loads((tmp_path / "sweeps" / "mine" / "teachers.json").read_text())["teachers"]
    assert recorded["test_resnet"]["how"] == "adopted" and recorded["test_resnet"]["epochs"] == 0
    assert "teachers of " in run.stdout and "note: the sweep trained no test_efficientnet alone" in run.stdout
    cards = list((tmp_path / "sweeps" / "teachers").glob("*/card.json"))
    assert len(cards) == 1
    card = json.loads(cards[0].read_text())
    assert card["adopted"] and card["logits"] == "classifier" and card["epochs"] == 0 and card["head_epochs"] == 2
    assert card["key"]["recipe"]["epochs"] == 0 and card["key"]["recipe"]["head_epochs"] == 2
