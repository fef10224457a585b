"""A user's own data on disk, for the tests: real PNG images and real tables (CSV, Parquet, COCO instances files).

Each writer returns the ``dataset`` section of a spec that declares the data (``format: ...``), with no code.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

CLASSES = ["car", "cat", "dog"]


def png(seed: int, size: tuple[int, int] = (20, 24)) -> bytes:
    """A PNG of random pixels (distinct for each seed)."""
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def labels(count: int) -> list[list[str]]:
    """Each image's labels: a fixed pattern that gives every class positives in every split."""
    return [[CLASSES[i % 3]] + ([CLASSES[(i + 1) % 3]] if i % 2 else []) for i in range(count)]


def write_csv(path: Path, header: list[str], rows: list[list]) -> str:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def csv_dataset(folder: Path, train: int = 24, test: int = 8) -> dict:
    """``train.csv`` and ``test.csv`` (image paths relative to the tables, labels delimited by ``|``) beside
    ``images/``."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, row_labels in enumerate(labels(train + test)):
        (folder / "images" / f"{i:03d}.png").write_bytes(png(i))
        rows.append([f"images/{i:03d}.png", "|".join(row_labels)])
    return {
        "format": "manifest",
        "train": write_csv(folder / "train.csv", ["image", "labels"], rows[:train]),
        "test": write_csv(folder / "test.csv", ["image", "labels"], rows[train:]),
    }


def parquet_dataset(folder: Path, train: int = 24, test: int = 8) -> dict:
    """One Parquet table with a split column, the images embedded as Hugging Face ``datasets`` writes them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    count = train + test
    table = pa.table(
        {
            "image": pa.array(
                [{"bytes": png(i), "path": f"photo_{i}.png"} for i in range(count)],
                type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
            ),
            "labels": pa.array(labels(count), type=pa.list_(pa.string())),
            "split": ["train"] * train + ["test"] * test,
        }
    )
    pq.write_table(table, folder / "data.parquet")
    return {"format": "manifest", "path": str(folder / "data.parquet")}


def coco_dataset(folder: Path, train: int = 24, test: int = 8) -> dict:
    """COCO instances files under names of their own (not ``instances_*2014.json``), each with its image folder."""
    categories = [{"id": 7, "name": "dog"}, {"id": 3, "name": "car"}, {"id": 5, "name": "cat"}]
    ids = {"car": 3, "cat": 5, "dog": 7}
    section = {"format": "coco"}
    start = 0
    for split, count in (("train", train), ("test", test)):
        images_folder = folder / f"{split}-pictures"
        images_folder.mkdir(parents=True, exist_ok=True)
        images, objects = [], []
        for k, row_labels in enumerate(labels(start + count)[start:]):
            name = f"{split}_{k:03d}.png"
            (images_folder / name).write_bytes(png(start + k))
            images.append({"id": 500 + k, "file_name": name})
            objects += [{"id": len(objects) + 1, "image_id": 500 + k, "category_id": ids[n]} for n in row_labels]
        path = folder / f"{split}-annotations.json"
        path.write_text(json.dumps({"images": images, "annotations": objects, "categories": categories}))
        section[split], section[f"{split}_images"] = str(path), str(images_folder)
        start += count
    return section


def fine_tune_elsewhere(folder: Path, files: dict, num_classes: int = 3, steps: int = 6, size: int = 32) -> str:
    """What a user did before coming here: timm's model with a linear head over their classes, a few steps of
    ordinary training on their images, normalised as timm's data config says, saved as safetensors."""
    import timm
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = timm.create_model("test_resnet", num_classes=num_classes)
    config = timm.data.resolve_data_config(model=net)
    mean, std = torch.tensor(config["mean"]).view(3, 1, 1), torch.tensor(config["std"]).view(3, 1, 1)
    images, targets = [], []
    with open(files["train"]) as handle:
        for row in csv.DictReader(handle):
            image = Image.open(folder / row["image"]).convert("RGB").resize((size, size))
            images.append((torch.from_numpy(np.array(image)).permute(2, 0, 1) / 255.0 - mean) / std)
            targets.append([float(c in row["labels"].split("|")) for c in CLASSES][:num_classes])
    images, targets = torch.stack(images), torch.tensor(targets)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path = folder / "fine-tuned.safetensors"
    save_file({k: v.contiguous() for k, v in net.eval().state_dict().items()}, str(path))
    return str(path)
