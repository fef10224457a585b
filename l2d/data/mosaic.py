"""Mosaic datasets: multi-label canvases made of real single-label items (digits, Fashion-MNIST).

A canvas is a ``grid x grid`` board of cells; each cell holds 0 or 1 item, 1 to ``grid**2`` items per canvas,
and the labels are the set of classes present. Labels co-occur the way objects in real scenes do: every
canvas is drawn from one of a fixed, seeded set of *scene templates* (each a few classes that tend to
appear together, with a popularity weight), each class of the scene kept with probability ``keep``, and
with probability ``noise`` one class from outside the scene is added.

Item pools are disjoint across splits: train and val items come from the source's training images (a seeded
split), test items from its test images (scikit-learn's digits have no official split: a seeded 75/25 split
plays that role). Canvases are deterministic for a configuration and cached on disk as ``.npz``, keyed by a
hash of the configuration, so a trial loads them in milliseconds.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from l2d.data.transforms import build_transform
from l2d.storage import Location
from l2d.storage import cache_dir as project_cache_dir

logger = logging.getLogger(__name__)

_CACHE_VERSION = 1
#: MosaicConfig fields added after the first cache keys, with their defaults (left out of a key when at them).
_LATER_FIELDS = {"min_scene": 2, "max_scene": 3, "min_labels": 1}
FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
DIGIT_CLASSES = [str(d) for d in range(10)]
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
DEFAULT_FASHION_ROOT = "/usr/share/datasets/fashion-mnist"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class MosaicConfig:
    """Everything that determines a mosaic split (and so its cache key).

    Attributes:
        source: ``digits`` (scikit-learn's 8x8 digits) or ``fashion`` (Fashion-MNIST 28x28).
        split: ``train``, ``val`` or ``test``.
        size: number of canvases in this split.
        grid: cells per side.
        cell_size: pixels per cell side (items are resized to it).
        num_scenes: number of scene templates.
        keep: probability that each class of the drawn scene appears.
        noise: probability of one extra class from outside the scene.
        val_fraction: share of the source's training items reserved for val canvases.
        seed: seeds the templates, the item split and the canvases.
        root: folder of the Fashion-MNIST IDX files (ignored for digits).
        min_scene / max_scene: classes per scene template (drawn uniformly in this range).
        min_labels: labels every canvas has at least (classes of its scene first, then others, added until it has).
    """

    source: str
    split: str
    size: int
    grid: int = 2
    cell_size: int = 16
    num_scenes: int = 8
    keep: float = 0.85
    noise: float = 0.15
    val_fraction: float = 0.2
    seed: int = 0
    root: str | None = None
    min_scene: int = 2
    max_scene: int = 3
    min_labels: int = 1

    def cache_key(self) -> str:
        fields = asdict(self)
        fields.pop("root")  # the same files anywhere give the same canvases
        for name, default in _LATER_FIELDS.items():  # fields added since: at their default, the key of before
            if fields[name] == default:
                del fields[name]
        fields["version"] = _CACHE_VERSION
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def _read_idx(path: Path) -> np.ndarray:
    """Read one gzipped IDX file (the MNIST/Fashion-MNIST format), checking its header."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: Fashion-MNIST file not found (install the Debian package "
            f"dataset-fashion-mnist, or pass root= a folder with the four IDX .gz files)"
        )
    try:
        with gzip.open(path, "rb") as stream:
            data = stream.read()
    except (OSError, EOFError) as error:
        raise ValueError(f"{path}: not a readable gzip file ({error})") from error
    if len(data) < 4:
        raise ValueError(f"{path}: too short to be an IDX file")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} ({int(np.prod(shape))} bytes) but holds {body.size} bytes")
    return body.reshape(shape)


def load_source(config: MosaicConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Item images (uint8 ``[N, h, w]``) and labels, per source split ``train``/``test``."""
    if config.source == "digits":
        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
        order = np.random.default_rng(1797).permutation(len(images))  # fixed: the split must not move with seed
        cut = int(0.75 * len(images))
        return {
            "train": (images[order[:cut]], digits.target[order[:cut]]),
            "test": (images[order[cut:]], digits.target[order[cut:]]),
        }
    if config.source == "fashion":
        root = Path(config.root or DEFAULT_FASHION_ROOT)
        result = {}
        for split, (image_file, label_file) in FASHION_FILES.items():
            images, labels = _read_idx(root / image_file), _read_idx(root / label_file)
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise ValueError(f"{root}: {image_file} {images.shape} and {label_file} {labels.shape} do not match")
            if labels.max(initial=0) >= len(FASHION_CLASSES):
                raise ValueError(f"{root / label_file}: label {labels.max()} outside 0-9")
            result[split] = (images, labels.astype(np.int64))
        return result
    raise ValueError(f"unknown mosaic source {config.source!r} (allowed: digits, fashion)")


def scene_templates(
    num_classes: int, num_scenes: int, seed: int, min_scene: int = 2, max_scene: int = 3
) -> tuple[list[np.ndarray], np.ndarray]:
    """The scene templates: ``num_scenes`` sets of ``min_scene``-``max_scene`` classes, and their (unequal)
    popularity weights."""
    rng = np.random.default_rng([seed, 7])
    scenes = [
        np.sort(rng.choice(num_classes, size=int(rng.integers(min_scene, max_scene + 1)), replace=False))
        for _ in range(num_scenes)
    ]
    weights = rng.dirichlet(np.full(num_scenes, 2.0))
    return scenes, weights


def item_pool(config: MosaicConfig, source_size: int) -> tuple[str, np.ndarray]:
    """The items this split may use, as ``(source split, indices)``.

    Disjoint between train and val (a seeded split of the source's training items) and test (the source's
    test items).
    """
    if config.split == "test":
        return "test", np.arange(source_size)
    order = np.random.default_rng([config.seed, 11]).permutation(source_size)
    cut = int(round(source_size * (1 - config.val_fraction)))
    return "train", np.sort(order[:cut] if config.split == "train" else order[cut:])


def generate_mosaic(config: MosaicConfig) -> tuple[np.ndarray, np.ndarray]:
    """Render the canvases of one split: uint8 ``[N, H, W]`` images and a 0/1 ``[N, 10]`` target matrix."""
    if config.split not in SPLITS:
        raise ValueError(f"unknown split {config.split!r} (allowed: {', '.join(SPLITS)})")
    if config.size < 1 or config.grid < 1 or config.cell_size < 4:
        raise ValueError(
            f"mosaic size, grid and cell_size must be positive (got {config.size}, {config.grid}, {config.cell_size})"
        )
    if not 1 <= config.min_scene <= config.max_scene <= 10:
        raise ValueError(
            f"mosaic scenes need 1 <= min_scene <= max_scene <= 10 classes (got {config.min_scene}, {config.max_scene})"
        )
    if config.min_labels > min(10, config.grid * config.grid):
        raise ValueError(
            f"min_labels {config.min_labels} exceeds what a {config.grid}x{config.grid} canvas of 10 "
            f"classes holds ({min(10, config.grid * config.grid)})"
        )
    source = load_source(config)
    source_split = "test" if config.split == "test" else "train"
    _, chosen = item_pool(config, len(source[source_split][0]))
    item_images, item_labels = source[source_split][0][chosen], source[source_split][1][chosen]
    num_classes = 10
    items = torch.tensor(item_images, dtype=torch.float32).unsqueeze(1)
    items = (
        F.interpolate(
            items, size=(config.cell_size, config.cell_size), mode="bilinear", antialias=True, align_corners=False
        )
        .round()
        .clamp(0, 255)
        .to(torch.uint8)
        .squeeze(1)
        .numpy()
    )
    by_class = [np.flatnonzero(item_labels == k) for k in range(num_classes)]
    missing = [k for k, members in enumerate(by_class) if members.size == 0]
    if missing:
        raise ValueError(f"{config.source} {config.split} items have no example of classes {missing}")

    scenes, weights = scene_templates(num_classes, config.num_scenes, config.seed, config.min_scene, config.max_scene)
    rng = np.random.default_rng([config.seed, SPLITS.index(config.split), 13])
    cells = config.grid * config.grid
    side = config.grid * config.cell_size
    canvases = np.zeros((config.size, side, side), dtype=np.uint8)
    targets = np.zeros((config.size, num_classes), dtype=np.uint8)
    for n in range(config.size):
        scene = scenes[rng.choice(len(scenes), p=weights)]
        labels = [int(k) for k in scene if rng.random() < config.keep]
        if rng.random() < config.noise:
            outside = np.setdiff1d(np.arange(num_classes), scene)
            labels.append(int(rng.choice(outside)))
        if not labels:
            labels = [int(rng.choice(scene))]
        if len(labels) < config.min_labels:  # the scene's missing classes first, then any other (no draw otherwise)
            missing = [int(k) for k in scene if k not in labels]
            others = [k for k in range(num_classes) if k not in labels and k not in missing]
            extra = list(rng.permutation(missing)) + list(rng.permutation(others))
            labels += [int(k) for k in extra[: config.min_labels - len(labels)]]
        if len(labels) > cells:
            labels = [int(k) for k in rng.choice(labels, size=cells, replace=False)]
        positions = rng.choice(cells, size=len(labels), replace=False)
        for label, position in zip(labels, positions):
            item = items[rng.choice(by_class[label])]
            row, col = divmod(int(position), config.grid)
            canvases[
                n,
                row * config.cell_size : (row + 1) * config.cell_size,
                col * config.cell_size : (col + 1) * config.cell_size,
            ] = item
            targets[n, label] = 1
    return canvases, targets


def load_or_generate(config: MosaicConfig, cache_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The canvases of ``config``, from the on-disk cache when present (written atomically when not)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else project_cache_dir() / "datasets"
    path = cache_dir / f"mosaic-{config.source}-{config.split}-{config.cache_key()}.npz"
    if path.is_file():
        try:
            with np.load(path) as cached:
                return cached["images"], cached["targets"]
        except (OSError, ValueError, KeyError) as error:
            logger.warning("%s: unreadable cache (%s); rebuilding it", path, error)
    images, targets = generate_mosaic(config)
    buffer = io.BytesIO()
    np.savez(buffer, images=images, targets=targets)
    Location.parse(path).write_bytes(buffer.getvalue())
    logger.info("cached %d %s canvases of mosaic-%s at %s", len(images), config.split, config.source, path)
    return images, targets


class MosaicDataset(torch.utils.data.Dataset):
    """A mosaic split as a torch Dataset of ``(image [3, S, S] float, target [10] float)``."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, class_names: list[str], image_size: int, train: bool):
        self.images = images
        self.targets = targets
        self.class_names = class_names
        self.transform = build_transform(image_size, train)

    def __len__(self) -> int:
        return len(self.images)

    def fingerprint(self) -> str:
        """SHA-256 of the canvases and their labels: what a model trained on this split has seen."""
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.images).tobytes())
        digest.update(np.ascontiguousarray(self.targets).tobytes())
        digest.update(json.dumps(self.class_names).encode())
        return digest.hexdigest()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(self.images[index]).unsqueeze(0).expand(3, -1, -1)
        return self.transform(image), torch.from_numpy(self.targets[index].astype(np.float32))


DEFAULT_SIZES = {"train": 2000, "val": 500, "test": 1000}


def build_mosaic(
    source: str,
    split: str,
    image_size: int,
    root: str | None = None,
    train_transform: bool | None = None,
    size: int | None = None,
    scale: float = 1.0,
    cache_dir: str | None = None,
    **options,
) -> MosaicDataset:
    """Build ``mosaic-digits`` / ``mosaic-fashion``; ``options`` are :class:`MosaicConfig` fields.

    ``size`` sets the number of canvases of this split; without it, the split's default (train 2000, val 500,
    test 1000) times ``scale``.
    """
    unknown = set(options) - set(MosaicConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(
            f"unknown mosaic option(s) {sorted(unknown)}; allowed: "
            f"{sorted(set(MosaicConfig.__dataclass_fields__) - {'source', 'split', 'root'})}"
        )
    if not scale > 0:
        raise ValueError(f"mosaic scale must be > 0, got {scale}")
    size = size or max(1, int(round(DEFAULT_SIZES.get(split, 0) * scale)))
    config = MosaicConfig(source=source, split=split, size=size, root=root, **options)
    images, targets = load_or_generate(config, Path(cache_dir) if cache_dir else None)
    class_names = DIGIT_CLASSES if source == "digits" else FASHION_CLASSES
    train = split == "train" if train_transform is None else train_transform
    return MosaicDataset(images, targets, list(class_names), image_size, train)


def build_mosaic_digits(root: str | None, split: str, image_size: int, **options) -> MosaicDataset:
    """``mosaic-digits``: scikit-learn's digits (``root`` is ignored)."""
    return build_mosaic("digits", split, image_size, root, **options)


def build_mosaic_fashion(root: str | None, split: str, image_size: int, **options) -> MosaicDataset:
    """``mosaic-fashion`` and ``mosaic-scenes``: Fashion-MNIST items from the IDX files in ``root``."""
    return build_mosaic("fashion", split, image_size, root, **options)
