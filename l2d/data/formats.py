"""Readers for the paper's datasets, each from its standard on-disk layout.

- ``voc2007``: ``<root>/VOCdevkit/VOC2007/{ImageSets/Main/{trainval,test}.txt, Annotations/*.xml, JPEGImages/}``.
  ``difficult`` objects are ignored by default (the standard protocol); ``difficult_as_positive=True`` counts
  them, as the official L2D code does.
- ``coco2014``: ``<root>/annotations/instances_{train,val}2014.json`` with images in ``<root>/{train,val}2014/``.
  Class index = rank of the category id; images without labels are dropped unless ``keep_empty=True`` (every split)
  or ``keep_empty_test=True`` (the test split only).
  ``test`` is COCO's val2014 (the multi-label convention). A preset of the declared ``coco`` format, built in
  :mod:`l2d.data.manifest` (:func:`~l2d.data.manifest.build_coco2014`): the same splits and fingerprints as before.
- ``nuswide``: ``<root>/ImageList/{Train,Test}Imagelist.txt``, ``<root>/Concepts81.txt``,
  ``<root>/TrainTestLabels/Labels_<concept>_{Train,Test}.txt``, images under ``<root>/Flickr/``. Images without
  labels are dropped unless ``keep_empty=True`` (every split) or ``keep_empty_test=True`` (the test split only, as
  the official L2D code evaluates).

For all three, ``val`` is a seeded hold-out of ``val_fraction`` (default 10%) of the training images
(``val_seed``, default 0), and ``train`` is the rest; ``test`` is the official test split.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF

from l2d.data.images import DecodedStore, Images
from l2d.data.registry import DatasetError
from l2d.data.transforms import build_transform

logger = logging.getLogger(__name__)

VOC_CLASSES = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]


class ImageListDataset(torch.utils.data.Dataset):
    """Images with a multi-label target matrix.

    Args:
        images: one image per row of ``targets``: local file paths, or the :class:`l2d.data.manifest.Images` of a
            declared dataset (paths, remote URIs fetched into the node's cache, or embedded bytes; already checked).
        targets: ``[N, C]`` 0/1.
        class_names: C names.
        image_size: side of the square network input.
        train: use the train-time augmentation.
        skip_corrupt: decode every image now and drop the ones that fail (logged); else a bad image raises
            :class:`DatasetError` when it is loaded.
    """

    def __init__(
        self,
        images: list[str] | Images,
        targets: np.ndarray,
        class_names: list[str],
        image_size: int,
        train: bool,
        skip_corrupt: bool = False,
        name: str = "dataset",
    ):
        if len(images) == 0:
            raise DatasetError(f"{name}: the split is empty")
        if not isinstance(images, Images):
            paths = list(images)
            missing = [p for p in paths if not os.path.isfile(p)]
            if missing:
                raise DatasetError(f"{name}: {len(missing)} image file(s) missing, first: {missing[0]}")
            images = Images.local(paths)
        if skip_corrupt:
            good = np.array([i for i in range(len(images)) if _image_error(images.read(i)) is None], dtype=np.int64)
            skipped = len(images) - len(good)
            if skipped:
                logger.warning("%s: skipped %d corrupt or unreadable image(s) of %d", name, skipped, len(images))
            if not len(good):
                raise DatasetError(f"{name}: every image is corrupt")
            images, targets = images.take(good), np.asarray(targets)[good]
        self.images = images
        self.targets = np.asarray(targets, dtype=np.uint8)
        self.class_names = list(class_names)
        self.transform = build_transform(image_size, train)
        self.image_size = image_size
        self.name = name
        self._fingerprint: str | None = None
        self.store: DecodedStore | None = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def paths(self) -> list[str]:
        """Each image's path or URI (``<embedded bytes of row N>`` for embedded ones)."""
        return [self.images.name(i) for i in range(len(self.images))]

    def fingerprint(self) -> str:
        """SHA-256 of what identifies this split's data: each image's file name and size (not its folder, so a copy
        of the dataset elsewhere has the same fingerprint) and the label matrix. Computed once."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            self.images.update(digest)
            digest.update(np.ascontiguousarray(self.targets).tobytes())
            digest.update(json.dumps(self.class_names).encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def decode_once(self) -> DecodedStore:
        """From now on, read each image decoded and resized from the node's :class:`DecodedStore` (decoded there by
        whichever loader needs it first). Exact: the transform resizes before anything else, and a resized image
        passes its resize unchanged."""
        if self.store is None:
            self.store = DecodedStore(self.images, self.image_size)
        return self.store

    def _decode(self, index: int) -> torch.Tensor:
        source = self.images.read(index)
        try:
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
                return TF.pil_to_tensor(image.convert("RGB"))
        except (OSError, UnidentifiedImageError, SyntaxError) as error:
            raise DatasetError(
                f"{self.images.name(index)}: unreadable or truncated image ({error}); pass skip_corrupt=True to drop "
                f"such images"
            ) from error

    def _resized(self, index: int) -> np.ndarray:
        return self.transform.transforms[0](self._decode(index)).numpy()  # the transform's own resize

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.store is not None:
            image = torch.from_numpy(self.store.get(index, self._resized))
        else:
            image = self._decode(index)
        return self.transform(image), torch.from_numpy(self.targets[index].astype(np.float32))


def _image_error(source: "str | bytes") -> str | None:
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            image.load()
        return None
    except (OSError, UnidentifiedImageError, SyntaxError) as error:
        return str(error)


def _hold_out(count: int, split: str, val_fraction: float, val_seed: int) -> np.ndarray:
    """Indices of the ``train`` or ``val`` part of ``count`` training images (a seeded permutation)."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    order = np.random.default_rng(val_seed).permutation(count)
    cut = int(round(count * val_fraction))
    return np.sort(order[:cut] if split == "val" else order[cut:])


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _select(split: str, paths: list[str], targets: np.ndarray, val_fraction: float, val_seed: int):
    if split in ("train", "val"):
        keep = _hold_out(len(paths), split, val_fraction, val_seed)
        return [paths[i] for i in keep], targets[keep]
    return paths, targets


def _check_split(split: str) -> None:
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r} (allowed: train, val, test)")


def build_voc2007(
    root: str,
    split: str,
    image_size: int,
    difficult_as_positive: bool = False,
    val_fraction: float = 0.1,
    val_seed: int = 0,
    skip_corrupt: bool = False,
    train_transform: bool | None = None,
) -> ImageListDataset:
    _check_split(split)
    base = Path(root) / "VOCdevkit" / "VOC2007"
    ids = _read_lines(base / "ImageSets" / "Main" / ("test.txt" if split == "test" else "trainval.txt"))
    index = {name: k for k, name in enumerate(VOC_CLASSES)}
    targets = np.zeros((len(ids), len(VOC_CLASSES)), dtype=np.uint8)
    for row, image_id in enumerate(ids):
        xml_path = base / "Annotations" / f"{image_id}.xml"
        if not xml_path.is_file():
            raise DatasetError(f"{xml_path}: annotation not found")
        try:
            tree = ElementTree.parse(xml_path)
        except ElementTree.ParseError as error:
            raise DatasetError(f"{xml_path}: not valid XML ({error})") from error
        for obj in tree.getroot().iter("object"):
            name = (obj.findtext("name") or "").strip()
            if name not in index:
                raise DatasetError(f"{xml_path}: class {name!r} is not one of the 20 VOC classes")
            if (obj.findtext("difficult") or "0").strip() == "1" and not difficult_as_positive:
                continue
            targets[row, index[name]] = 1
    paths = [str(base / "JPEGImages" / f"{image_id}.jpg") for image_id in ids]
    paths, targets = _select(split, paths, targets, val_fraction, val_seed)
    train = split == "train" if train_transform is None else train_transform
    return ImageListDataset(paths, targets, VOC_CLASSES, image_size, train, skip_corrupt, f"voc2007/{split}")


def build_nuswide(
    root: str,
    split: str,
    image_size: int,
    keep_empty: bool = False,
    keep_empty_test: bool = False,
    val_fraction: float = 0.1,
    val_seed: int = 0,
    skip_corrupt: bool = False,
    train_transform: bool | None = None,
) -> ImageListDataset:
    _check_split(split)
    base = Path(root)
    part = "Test" if split == "test" else "Train"
    concepts = _read_lines(base / "Concepts81.txt")
    if not concepts:
        raise DatasetError(f"{base / 'Concepts81.txt'}: no concept names")
    image_list = [line.replace("\\", "/") for line in _read_lines(base / "ImageList" / f"{part}Imagelist.txt")]
    targets = np.zeros((len(image_list), len(concepts)), dtype=np.uint8)
    for k, concept in enumerate(concepts):
        label_path = base / "TrainTestLabels" / f"Labels_{concept}_{part}.txt"
        values = _read_lines(label_path)
        if len(values) != len(image_list):
            raise DatasetError(
                f"{label_path}: {len(values)} labels for {len(image_list)} images in ImageList/{part}Imagelist.txt"
            )
        try:
            column = np.array([int(v) for v in values])
        except ValueError as error:
            raise DatasetError(f"{label_path}: labels must be 0 or 1 ({error})") from error
        if not np.isin(column, (0, 1)).all():
            raise DatasetError(f"{label_path}: labels must be 0 or 1, found {sorted(set(column.tolist()) - {0, 1})}")
        targets[:, k] = column
    paths = [str(base / "Flickr" / name) for name in image_list]
    if not (keep_empty or (keep_empty_test and split == "test")):
        labelled = np.flatnonzero(targets.any(1))
        paths, targets = [paths[i] for i in labelled], targets[labelled]
    paths, targets = _select(split, paths, targets, val_fraction, val_seed)
    train = split == "train" if train_transform is None else train_transform
    return ImageListDataset(paths, targets, concepts, image_size, train, skip_corrupt, f"nuswide/{split}")
