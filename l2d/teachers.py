"""The teacher store: every teacher is trained once per key and loaded afterwards.

A key is everything that determines a teacher: the dataset and its options, the backbone, image size,
embedding size, the recipe and the seed. Its SHA-256 digest names a folder of the store::

    <store>/<digest>/model.pt     the model's state dict (loaded with weights_only=True)
    <store>/<digest>/card.json    key, val/test mAP, epochs, wall time, parameter count

The model is written first and the card last, each to a temporary name that is then moved into place, so a
reader never sees a torn file and a teacher counts as stored only once its card exists. Two processes that
train the same teacher at once both finish; the last move wins, with an identical result. Paths go through
pyarrow filesystems, so a store can be a local folder or an ``s3://`` / ``gs://`` URI.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Callable

import pyarrow.fs as pafs
import torch

from l2d.models import MultiLabelModel, build_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeacherKey:
    """What determines a teacher (and so its place in the store).

    Attributes:
        dataset: dataset name.
        backbone: timm model name.
        image_size: network input side.
        embed_dim: label-wise embedding size D (students distilled with CD/ID must use the same).
        recipe: the training recipe as a dict (epochs, batch size, lr, weight decay, pct_start).
        seed: training seed.
        dataset_options: options given to ``build_dataset``.
        backbone_options: extra ``timm.create_model`` arguments.
    """

    dataset: str
    backbone: str
    image_size: int
    embed_dim: int
    recipe: dict
    seed: int = 0
    dataset_options: dict = field(default_factory=dict)
    backbone_options: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    def digest(self) -> str:
        # The recipe's num_workers and amp do not change what is learned (up to float noise): keep them out.
        key = self.as_dict()
        key["recipe"] = {k: v for k, v in key["recipe"].items() if k not in ("num_workers", "amp")}
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def open_store(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and base path for a local folder or a URI (``s3://bucket/prefix``...)."""
    if "://" not in uri:
        uri = os.path.abspath(os.path.expanduser(uri))
        os.makedirs(uri, exist_ok=True)
        return pafs.LocalFileSystem(), uri
    return pafs.FileSystem.from_uri(uri)


def _write_atomic(filesystem: pafs.FileSystem, path: str, data: bytes) -> None:
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with filesystem.open_output_stream(tmp) as stream:
        stream.write(data)
    filesystem.move(tmp, path)


class TeacherStore:
    """Teachers by key under ``uri`` (a local folder or a pyarrow filesystem URI)."""

    def __init__(self, uri: str):
        self.uri = uri
        self.filesystem, self.base = open_store(uri)

    def _path(self, key: TeacherKey, name: str) -> str:
        return f"{self.base.rstrip('/')}/{key.digest()}/{name}"

    def card(self, key: TeacherKey) -> dict | None:
        """The card of a stored teacher, or None when it is not stored."""
        path = self._path(key, "card.json")
        if self.filesystem.get_file_info(path).type != pafs.FileType.File:
            return None
        with self.filesystem.open_input_stream(path) as stream:
            return json.loads(stream.read().decode())

    def load(self, key: TeacherKey, num_classes: int) -> tuple[MultiLabelModel, dict]:
        """Build the model of ``key`` and load its stored weights (``weights_only=True``).

        Raises:
            KeyError: the teacher is not in the store.
        """
        card = self.card(key)
        if card is None:
            raise KeyError(f"teacher {key.backbone} ({key.digest()}) is not in {self.uri}")
        with self.filesystem.open_input_stream(self._path(key, "model.pt")) as stream:
            state = torch.load(io.BytesIO(stream.read()), map_location="cpu", weights_only=True)
        model = build_model(key.backbone, num_classes, key.embed_dim, **key.backbone_options)
        model.load_state_dict(state)
        return model.eval(), card

    def save(self, key: TeacherKey, model: torch.nn.Module, card: dict) -> dict:
        """Store ``model`` and its card (model first, card last; each written atomically)."""
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        self.filesystem.create_dir(f"{self.base.rstrip('/')}/{key.digest()}", recursive=True)
        _write_atomic(self.filesystem, self._path(key, "model.pt"), buffer.getvalue())
        card = {"key": key.as_dict(), "digest": key.digest(), **card}
        _write_atomic(self.filesystem, self._path(key, "card.json"), json.dumps(card, indent=2).encode())
        return card

    def get_or_train(self, key: TeacherKey, num_classes: int,
                     train: Callable[[], tuple[torch.nn.Module, dict]]) -> tuple[MultiLabelModel, dict, bool]:
        """Load the teacher of ``key``, training and storing it first when it is missing.

        Args:
            train: returns ``(model, card fields)``; called only when the store has no such teacher.

        Returns:
            ``(model, card, trained)`` where ``trained`` says whether this call trained it.
        """
        if self.card(key) is not None:
            model, card = self.load(key, num_classes)
            logger.info("teacher %s loaded from %s (%s)", key.backbone, self.uri, key.digest())
            return model, card, False
        start = time.time()
        model, fields = train()
        fields.setdefault("wall_time_s", time.time() - start)
        card = self.save(key, model, fields)
        return model.eval(), card, True


def train_teacher(key: TeacherKey, data_root: str | None = None, device: str | torch.device = "cpu",
                  progress: Callable[[int, dict], None] | None = None,
                  batch_progress=None) -> tuple[MultiLabelModel, dict]:
    """Train the teacher of ``key`` with BCE alone (the official recipe for teachers).

    Args:
        data_root: the dataset's folder (not part of the key: the same data anywhere gives the same teacher).
        progress: called after each epoch with ``(epoch, metrics)``.
        batch_progress: passed to the engine (``(batch, batches, values)`` after each batch).

    Returns:
        ``(model, card fields)``: val/test mAP of the last epoch, epochs, parameter count, history.
    """
    from l2d.data import build_dataset
    from l2d.engine import Distiller, Recipe
    from l2d.models import count_parameters

    splits = {split: build_dataset(key.dataset, data_root, split, key.image_size, **key.dataset_options)
              for split in ("train", "val", "test")}
    torch.manual_seed(key.seed)
    model = build_model(key.backbone, len(splits["train"].class_names), key.embed_dim, **key.backbone_options)
    distiller = Distiller(model, None, splits["train"], splits["val"], splits["test"], method="bce",
                          recipe=Recipe(**key.recipe), device=device, seed=key.seed)
    history = []
    for epoch in range(1, distiller.recipe.epochs + 1):
        metrics = distiller.run_epoch(batch_progress, evaluate_test=epoch == distiller.recipe.epochs)
        history.append(metrics)
        if progress is not None:
            progress(int(metrics["epoch"]), metrics)
    last = history[-1]
    fields = {
        "backbone": key.backbone,
        "val_mAP": last["val_mAP"],
        "test_mAP": last["test_mAP"],
        "epochs": len(history),
        "parameters": count_parameters(model),
        "class_names": list(splits["train"].class_names),
        "history": [{k: float(v) for k, v in m.items()} for m in history],
    }
    return model.cpu().eval(), fields
