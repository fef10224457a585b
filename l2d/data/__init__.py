"""Datasets: one entry point, :func:`build_dataset`, for the embedded mosaics and the paper's datasets.

Every dataset has ``class_names``, ``targets`` (an ``[N, C]`` 0/1 array) and yields ``(image, target)`` with
``image`` a float ``[3, S, S]`` tensor in [0, 1] and ``target`` a float ``[C]`` tensor.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from l2d.data.formats import DatasetError, build_coco2014, build_nuswide, build_voc2007
from l2d.data.mosaic import build_mosaic

__all__ = ["DATASETS", "DatasetError", "DatasetInfo", "build_dataset", "dataset_stats"]


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset's builder and the defaults of its recipe.

    Attributes:
        builder: ``builder(root, split, image_size, **options)``.
        needs_root: whether ``root`` must be given.
        image_size: default network input side.
        lr: default max learning rate (from-scratch mosaics need more than the official 1e-4, which assumes
            ImageNet-pretrained backbones).
        embed_dim: default label-wise embedding size D (768 in the paper; smaller for the CPU-sized mosaics).
        epochs: default student epochs (80 in the paper).
        teacher_epochs: default teacher epochs.
        teacher / student: the default pairing of ``l2d-sweep train``.
    """

    builder: Callable[..., torch.utils.data.Dataset]
    needs_root: bool
    image_size: int = 224
    lr: float = 1e-4
    embed_dim: int = 768
    epochs: int = 80
    teacher_epochs: int = 80
    teacher: str = "resnet101"
    student: str = "resnet34"


def _mosaic(source: str) -> Callable[..., torch.utils.data.Dataset]:
    return lambda root, split, image_size, **options: build_mosaic(source, split, image_size, root, **options)


# The mosaics are sized for a 2-core laptop CPU: 32 px canvases (2 x 2 cells of 16 px, their native size), a
# small head, a higher learning rate for training from scratch, and models that learn in a few epochs.
_MOSAIC_DEFAULTS = dict(image_size=32, lr=2e-3, embed_dim=128, epochs=4, teacher_epochs=3, teacher="resnet14t",
                        student="resnet10t")
DATASETS: dict[str, DatasetInfo] = {
    "mosaic-digits": DatasetInfo(_mosaic("digits"), False, **_MOSAIC_DEFAULTS),
    "mosaic-fashion": DatasetInfo(_mosaic("fashion"), False, **_MOSAIC_DEFAULTS),
    "voc2007": DatasetInfo(build_voc2007, True),
    "coco2014": DatasetInfo(build_coco2014, True),
    "nuswide": DatasetInfo(build_nuswide, True),
}


def build_dataset(name: str, root: str | None = None, split: str = "train", image_size: int | None = None,
                  **options) -> torch.utils.data.Dataset:
    """Build one split of a dataset.

    Args:
        name: one of :data:`DATASETS` (``mosaic-digits``, ``mosaic-fashion``, ``voc2007``, ``coco2014``, ``nuswide``).
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
    image_size = image_size or info.image_size
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    dataset = info.builder(root, split, image_size, **options)
    if len(dataset) == 0:
        raise DatasetError(f"{name}/{split}: the split is empty")
    return dataset


def dataset_options(name: str) -> list[str]:
    """Names of the options ``build_dataset(name, ...)`` accepts."""
    info = DATASETS[name]
    if name.startswith("mosaic-"):
        from l2d.data.mosaic import MosaicConfig

        return sorted(set(MosaicConfig.__dataclass_fields__) - {"source", "split", "root"}
                      | {"train_transform", "cache_dir", "scale"})
    return [p for p in inspect.signature(info.builder).parameters if p not in ("root", "split", "image_size")]


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
    pairs = [(names[a], names[b], int(co_occurrence[a, b]), float(lift[a, b]))
             for a in range(len(names)) for b in range(a + 1, len(names)) if co_occurrence[a, b] > 0]
    pairs.sort(key=lambda p: -p[2])
    return {
        "images": len(targets),
        "classes": len(names),
        "labels_per_image_mean": float(cardinality.mean()),
        "labels_per_image_histogram": {int(k): int((cardinality == k).sum()) for k in np.unique(cardinality)},
        "label_frequency": {n: float(f) for n, f in zip(names, frequency)},
        "mean_label_frequency": float(frequency.mean()),
        "top_pairs": pairs[:8],
        "pairs_never_seen": int(sum(1 for a in range(len(names)) for b in range(a + 1, len(names))
                                    if co_occurrence[a, b] == 0)),
    }
