"""Images per second of the train loader (decode + Cutout + RandAugment + batching), by number of workers.

Two datasets: the embedded mosaic-digits (in-memory canvases), and a JPEG dataset in the VOC 2007 layout that
this script writes into a temporary folder (random-content 500 x 375 JPEGs, VOC's typical size), read at 224 px.

Usage:
    python benchmarks/data_speed.py [--images 512] [--batches 8] [--out benchmarks/results/data_speed.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import write_report  # noqa: E402 - run as a script: the repository on sys.path first
from l2d.data import build_dataset  # noqa: E402 - run as a script: the repository on sys.path first
from l2d.engine import make_loader  # noqa: E402 - run as a script: the repository on sys.path first


def write_voc(root: Path, count: int) -> None:
    base = root / "VOCdevkit" / "VOC2007"
    for folder in ("ImageSets/Main", "Annotations", "JPEGImages"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    classes = ["dog", "person", "car", "cat", "chair"]
    ids = [f"{n:06d}" for n in range(count)]
    for n, image_id in enumerate(ids):
        # Smooth random content compresses like a photo, unlike white noise.
        small = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        Image.fromarray(small).resize((500, 375), Image.BILINEAR).save(
            base / "JPEGImages" / f"{image_id}.jpg", quality=90
        )
        objects = "".join(
            f"<object><name>{classes[(n + k) % 5]}</name><difficult>0</difficult></object>" for k in range(1 + n % 3)
        )
        (base / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{objects}</annotation>")
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids) + "\n")


def measure(dataset, workers: int, batches: int, batch_size: int) -> float:
    loader = make_loader(dataset, batch_size, train=True, num_workers=workers)
    iterator = iter(loader)
    next(iterator)  # worker start-up and the first batch are not timed
    start = time.perf_counter()
    seen = 0
    for _ in range(batches):
        images, *_ = next(iterator)
        seen += images.shape[0]
    elapsed = time.perf_counter() - start
    del iterator
    return seen / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=640, help="JPEGs to write for the VOC-layout dataset")
    parser.add_argument("--batches", type=int, default=8, help="timed batches per measurement")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_voc(Path(tmp), args.images)
        datasets = {
            "mosaic-digits @32": build_dataset("mosaic-digits", split="train"),
            "voc2007 JPEG @224": build_dataset("voc2007", tmp, "train", 224, val_fraction=0.01),
        }
        for name, dataset in datasets.items():
            for workers in (0, 1, 2):
                rate = measure(dataset, workers, args.batches, args.batch_size)
                rows.append({"dataset": name, "workers": workers, "images_per_s": rate})
                print(f"{name:<20} workers={workers}  {rate:8.1f} img/s", flush=True)

    print(f"\ntrain loader, batch {args.batch_size}, {args.batches} timed batches, {os.cpu_count()} CPUs")
    print(f"{'dataset':<20} {'0 workers':>10} {'1 worker':>10} {'2 workers':>10}   (images/s)")
    for name in dict.fromkeys(r["dataset"] for r in rows):
        rates = [r["images_per_s"] for r in rows if r["dataset"] == name]
        print(f"{name:<20} " + " ".join(f"{rate:>10.1f}" for rate in rates))
    write_report(args.out, "data_speed", rows, batch_size=args.batch_size, batches=args.batches)


if __name__ == "__main__":
    main()
