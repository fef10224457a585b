"""Write the worked example of docs/your-data.md: a folder of PNG images, two CSV manifests and a sweep spec, as a user
with a multi-label dataset of their own would have them.

The images are the embedded digit mosaics (real 8x8 handwritten digits from scikit-learn on 2 x 2 boards, the
labels the digits present), saved as ordinary PNG files, so the example needs nothing downloaded::

    python docs/your_data_example.py my-data        # my-data/{images/, train.csv, test.csv, spec.yaml}
    l2d-sweep validate my-data/spec.yaml
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

SPEC = """\
name: my-digits
storage: {storage}
dataset:
  format: manifest            # your own data: CSV / TSV / JSON Lines / Parquet tables
  train: {folder}/train.csv    # image,labels  (images/00017.png,3|7)
  test: {folder}/test.csv
  image_size: 32
pairings:
  - teacher: resnet14t
    students: [resnet10t]
methods: [mld, l2d]
search_space:
  lr: {{low: 1.0e-3, high: 5.0e-3}}
budget: {{num_samples: 4, max_epochs: 3, grace_period: 1, teacher_epochs: 3}}
recipe: {{embed_dim: 128}}
"""


def write_example(folder: Path, train: int = 600, test: int = 200) -> Path:
    """The example's files under ``folder`` (created; refused when it holds files); returns the spec's path."""
    import numpy as np
    from PIL import Image

    from l2d.data import build_dataset

    folder = folder.resolve()
    if folder.exists() and any(folder.iterdir()):
        raise SystemExit(f"{folder}: not empty; give a new folder")
    (folder / "images").mkdir(parents=True)
    number = 0
    for split, count in (("train", train), ("test", test)):
        mosaic = build_dataset("mosaic-digits", split=split, size=count)
        images, targets = mosaic.images, mosaic.targets
        with open(folder / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "labels"])
            for image, target in zip(images, targets):
                name = f"images/{number:05d}.png"
                Image.fromarray(np.asarray(image, dtype=np.uint8)).save(folder / name)
                writer.writerow([name, "|".join(str(k) for k in np.flatnonzero(target))])
                number += 1
    spec = folder / "spec.yaml"
    spec.write_text(SPEC.format(folder=folder, storage=folder / "sweeps"))
    return spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a new folder for the images, the manifests and the spec")
    parser.add_argument("--train", type=int, default=600, help="train images (default: 600)")
    parser.add_argument("--test", type=int, default=200, help="test images (default: 200)")
    args = parser.parse_args(argv)
    spec = write_example(args.folder, args.train, args.test)
    print(f"wrote {args.train + args.test} images, train.csv, test.csv and {spec}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
