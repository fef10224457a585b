"""Datasets: one entry point, :func:`build_dataset`, for the embedded mosaics and the paper's datasets.

Every dataset has ``class_names``, ``targets`` (an ``[N, C]`` 0/1 array) and yields ``(image, target)`` with
``image`` a float ``[3, S, S]`` tensor in [0, 1] and ``target`` a float ``[C]`` tensor. The registry
(:mod:`l2d.data.registry`: names, options, defaults) imports no torch; building a split does.
"""

from __future__ import annotations

import hashlib
import importlib
from typing import TYPE_CHECKING

import numpy as np

from l2d.data.registry import (
    DATASETS,
    FORMATS,
    MAX_SEED,
    DatasetError,
    DatasetInfo,
    Option,
    check_dataset_options,
    dataset_options,
)

# Loaded late, inside the functions that use them: l2d.data.manifest (not needed when the command line starts).

if TYPE_CHECKING:
    import torch

__all__ = [
    "DATASETS",
    "FORMATS",
    "DatasetError",
    "DatasetInfo",
    "MAX_SEED",
    "Option",
    "build_dataset",
    "check_declared",
    "check_dataset_options",
    "data_fingerprint",
    "dataset_options",
    "dataset_stats",
]


def build_dataset(
    name: str, root: str | None = None, split: str = "train", image_size: int | None = None, **options
) -> "torch.utils.data.Dataset":
    """Build one split of a dataset.

    Args:
        name: one of :data:`DATASETS` (``mosaic-digits``, ``mosaic-fashion``, ``voc2007``, ``coco2014``, ``nuswide``,
            and the declared formats ``manifest`` and ``coco``: :mod:`l2d.data.manifest`).
        root: the dataset's folder (required for the real formats; for ``mosaic-fashion`` the folder of the
            Fashion-MNIST IDX files, default ``/usr/share/datasets/fashion-mnist``).
        split: ``train``, ``val`` or ``test``.
        image_size: network input side (default: the dataset's).
        **options: dataset options (see each builder), e.g. ``difficult_as_positive=True`` for VOC,
            ``size=5000`` for a mosaic, ``skip_corrupt=True``, ``train_transform=False`` to evaluate the train split.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r} (allowed: train, val, test)")
    info = DATASETS[name]
    if info.needs_root and not root:
        raise ValueError(f"dataset {name!r} needs root= (the folder of its files)")
    options = {**info.option_defaults, **check_dataset_options(name, options)}
    image_size = image_size or info.image_size
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    module, _, function = info.builder.partition(":")

    dataset = getattr(importlib.import_module(module), function)(root, split, image_size, **options)
    if len(dataset) == 0:
        raise DatasetError(f"{name}/{split}: the split is empty")
    return dataset


def check_declared(name: str, root: str | None, options: dict):
    """Load and check a declared dataset (``manifest`` or ``coco``: every split, every image's presence, the labels)
    before anything starts, and return its :class:`l2d.data.manifest.Manifest`; None for a shipped dataset (its
    files are checked when its splits are built). Torch-free; reads, never writes.

    Raises:
        DatasetError: one line naming the file, the row and the value.
    """
    if name not in FORMATS:
        return None
    from l2d.data import manifest

    options = {k: v for k, v in options.items() if k not in manifest.SPLIT_ONLY}
    return manifest.load(name, root, options, log=False)  # the caller prints its warnings


def data_fingerprint(splits: dict) -> str:
    """A short hash of the data of every split (its images' identities and its labels): part of a teacher's key, so
    that the same settings over other data never load the same teacher."""
    digest = hashlib.sha256()
    for split in sorted(splits):
        digest.update(f"{split}:{splits[split].fingerprint()}\n".encode())
    return digest.hexdigest()[:16]


def dataset_stats(dataset) -> dict:
    """Label statistics: size, cardinality (labels per image), label frequency, most co-occurring pairs."""
    targets = np.asarray(dataset.targets, dtype=np.float64)
    names = dataset.class_names
    cardinality = targets.sum(1)
    co_occurrence = targets.T @ targets
    frequency = targets.mean(0)
    # Lift: P(a, b) / (P(a) P(b)); 1 when labels are independent.
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = (co_occurrence / len(targets)) / np.outer(frequency, frequency)
    pairs = [
        (names[a], names[b], int(co_occurrence[a, b]), float(lift[a, b]))
        for a in range(len(names))
        for b in range(a + 1, len(names))
        if co_occurrence[a, b] > 0
    ]
    pairs.sort(key=lambda p: -p[2])
    return {
        "images": len(targets),
        "classes": len(names),
        "labels_per_image_mean": float(cardinality.mean()),
        "labels_per_image_histogram": {int(k): int((cardinality == k).sum()) for k in np.unique(cardinality)},
        "label_frequency": {n: float(f) for n, f in zip(names, frequency)},
        "mean_label_frequency": float(frequency.mean()),
        "top_pairs": pairs[:8],
        "pairs_never_seen": int(
            sum(1 for a in range(len(names)) for b in range(a + 1, len(names)) if co_occurrence[a, b] == 0)
        ),
    }
