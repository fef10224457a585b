"""The teacher store: every teacher is trained once per key and loaded afterwards.

A key is everything that determines a teacher: the dataset, its options and a fingerprint of its data (so the same
settings over other images or labels never load this teacher), the backbone, image size, embedding size, the
recipe and the seed (:func:`l2d.run.teacher_key` derives it from a run's configuration, so ``l2d-sweep train``,
``l2d-sweep teacher`` and a sweep with the same settings share a teacher). Its SHA-256 digest names a folder of
the store::

    <store>/<digest>/model.pt     the model's state dict (loaded with weights_only=True)
    <store>/<digest>/card.json    key, val/test mAP, epochs, wall time, parameter count

The model is written first and the card last, each atomically (:meth:`l2d.storage.Location.write_bytes`), so a
reader never sees a torn file and a teacher counts as stored only once its card exists. Two processes that
train the same teacher at once both finish; the last move wins, with an identical result. An entry that cannot be
read (a truncated model or card) is moved aside to ``<digest>.corrupt-<time>`` and trained again, with a warning
naming the file. The store is a local folder or an ``s3://`` / ``gs://`` URI.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from l2d.models import MultiLabelModel, build_model
from l2d.storage import Location

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
        data_fingerprint: :func:`l2d.data.data_fingerprint` of the splits it was trained and scored on.
        weights: the SHA-256 (16 hex digits) of its initial weights' file (:func:`l2d.weights.identity`); empty for
            a random initialisation.
    """

    dataset: str
    backbone: str
    image_size: int
    embed_dim: int
    recipe: dict
    seed: int = 0
    dataset_options: dict = field(default_factory=dict)
    backbone_options: dict = field(default_factory=dict)
    data_fingerprint: str = ""
    weights: str = ""

    def as_dict(self) -> dict:
        return asdict(self)

    def digest(self) -> str:
        # The recipe's num_workers and amp do not change what is learned (up to float noise): keep them out. Fields
        # added since the first keys count only when set, so a key without them keeps its digest.
        key = self.as_dict()
        key["recipe"] = {
            k: v
            for k, v in key["recipe"].items()
            if k not in ("num_workers", "amp") and not (k == "schedule_epochs" and v is None)
        }
        if not key["weights"]:
            del key["weights"]
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


class CorruptTeacherError(RuntimeError):
    """A stored teacher's file cannot be read; the message names the file."""


class TeacherStore:
    """Teachers by key under ``uri`` (a local folder or an ``s3://`` / ``gs://`` URI)."""

    def __init__(self, uri: str | Location):
        self.location = Location.parse(uri, "teacher store")
        self.uri = str(self.location)

    def _file(self, key: TeacherKey, name: str) -> Location:
        return self.location / key.digest() / name

    def card(self, key: TeacherKey) -> dict | None:
        """The card of a stored teacher, or None when it is not stored.

        Raises:
            CorruptTeacherError: the card exists but is not a readable JSON card.
        """
        path = self._file(key, "card.json")
        if not path.is_file():
            return None
        try:
            card = json.loads(path.read_text())
            if not isinstance(card, dict) or "class_names" not in card:
                raise ValueError("not a teacher card")
            return card
        except (ValueError, UnicodeDecodeError) as error:
            raise CorruptTeacherError(f"{path}: unreadable teacher card ({error})") from None

    def has(self, key: TeacherKey) -> bool:
        """Whether a readable card of ``key`` is stored."""
        try:
            return self.card(key) is not None
        except CorruptTeacherError:
            return False

    def load(self, key: TeacherKey, num_classes: int) -> tuple[MultiLabelModel, dict]:
        """Build the model of ``key`` and load its stored weights (``weights_only=True``).

        Raises:
            KeyError: the teacher is not in the store.
            CorruptTeacherError: its card or model file cannot be read, or the weights do not fit the model.
        """
        card = self.card(key)
        if card is None:
            raise KeyError(f"teacher {key.backbone} ({key.digest()}) is not in {self.uri}")
        path = self._file(key, "model.pt")
        try:
            state = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
            model = build_model(
                key.backbone,
                num_classes or len(card["class_names"]),
                key.embed_dim,
                own_classifier=card.get("logits") == "classifier",  # adopted from a plain timm classifier
                **key.backbone_options,
            )
            model.load_state_dict(state)
        except FileNotFoundError:
            raise CorruptTeacherError(f"{path}: the card exists but the model file is missing") from None
        except (RuntimeError, EOFError, ValueError, OSError, TypeError, AttributeError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise CorruptTeacherError(f"{path}: unreadable teacher weights ({reason[:200]})") from None
        return model.eval(), card

    def save(self, key: TeacherKey, model: torch.nn.Module, card: dict) -> dict:
        """Store ``model`` and its card (model first, card last; each written atomically)."""
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        self._file(key, "model.pt").write_bytes(buffer.getvalue())
        card = {"key": key.as_dict(), "digest": key.digest(), **card}
        self._file(key, "card.json").write_text(json.dumps(card, indent=2))
        return card

    def set_aside(self, key: TeacherKey) -> Location:
        """Move ``key``'s folder to ``<digest>.corrupt-<time>`` (kept for inspection); returns where it went."""
        folder = self.location / key.digest()
        aside = self.location / f"{key.digest()}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
        for entry in folder.list():
            entry.move(aside / entry.name) if entry.is_file() else entry.delete()
        folder.delete()
        return aside

    def get_or_train(
        self, key: TeacherKey, num_classes: int, train: Callable[[], tuple[torch.nn.Module, dict]]
    ) -> tuple[MultiLabelModel, dict, bool]:
        """Load the teacher of ``key``, training and storing it first when it is missing or unreadable.

        Args:
            num_classes: the label count (0: read it from the card).
            train: returns ``(model, card fields)``; called only when the store has no readable such teacher.

        Returns:
            ``(model, card, trained)`` where ``trained`` says whether this call trained it.
        """
        try:
            if self.card(key) is not None:
                model, card = self.load(key, num_classes)
                logger.info("teacher %s loaded from %s (%s)", key.backbone, self.uri, key.digest())
                return model, card, False
        except CorruptTeacherError as error:
            aside = self.set_aside(key)
            logger.warning("%s; moved it to %s and training the teacher again", error, aside)
        start = time.time()
        model, fields = train()
        fields.setdefault("wall_time_s", time.time() - start)
        card = self.save(key, model, fields)
        return model.eval(), card, True
