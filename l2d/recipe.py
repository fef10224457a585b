"""The optimization settings of one run (:class:`Recipe`, the official L2D recipe by default). Torch-free: a spec and
a command line check a recipe without importing torch; :mod:`l2d.engine` trains with it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping


@dataclass
class Recipe:
    """Optimization settings of one run (the official L2D recipe by default).

    Attributes:
        epochs: number of epochs (OneCycle spans all of them).
        batch_size: global batch size, split evenly across DDP ranks.
        lr: OneCycle's max learning rate.
        weight_decay: Adam's L2 penalty on weights (not biases or other 1-D parameters).
        pct_start: share of the schedule spent warming up.
        num_workers: DataLoader worker processes per rank.
        amp: mixed precision on CUDA (ignored on CPU, which always runs float32).
        schedule_epochs: the length of the OneCycle schedule when it differs from ``epochs`` (the official L2D
            teachers follow an 80-epoch schedule and stop after 30); None: ``epochs``.
        channels_last: images and models in the channels-last memory layout (faster convolutions under AMP on CUDA,
            and for depthwise convolutions, EfficientNet's, on CPU too); None: on CUDA only. Changes no result
            beyond float rounding.
    """

    epochs: int = 80
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 1e-4
    pct_start: float = 0.2
    num_workers: int = 0
    amp: bool = True
    schedule_epochs: int | None = None
    channels_last: bool | None = None
    views_per_image: int = 0

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"recipe.{name} must be >= 1, got {getattr(self, name)}")
        if self.schedule_epochs is not None and self.schedule_epochs < self.epochs:
            raise ValueError(
                f"recipe.schedule_epochs ({self.schedule_epochs}) must be >= epochs ({self.epochs}): a run "
                f"may stop before its schedule ends, not run past it"
            )
        if (
            not self.lr > 0
            or self.weight_decay < 0
            or not 0 < self.pct_start < 1
            or self.num_workers < 0
            or self.views_per_image < 0
        ):
            raise ValueError(
                f"invalid recipe {asdict(self)}: need lr > 0, weight_decay >= 0, 0 < pct_start < 1, num_workers >= 0, "
                f"views_per_image >= 0"
            )

    @property
    def view_epochs(self) -> int:
        """How many epochs of distinct views a run of :attr:`epochs` sees (what a teacher-output cache holds)."""
        return min(self.epochs, self.views_per_image) if self.views_per_image else self.epochs


def view_epoch(epoch: int, views_per_image: int) -> int:
    """The epoch whose views epoch ``epoch`` (1-based) shows: itself, or with ``views_per_image`` K the first K
    epochs' in turn (:attr:`Recipe.views_per_image`)."""
    return epoch if not views_per_image or epoch < 1 else (epoch - 1) % views_per_image + 1


def recipe_matches(saved: Mapping, recipe: Recipe) -> bool:
    """Whether a checkpoint's recipe (a dict) is ``recipe``: fields it lacks (added since) count as their defaults,
    and the DataLoader's worker count, which changes nothing that is learned, is ignored."""
    defaults = asdict(Recipe())
    mine = asdict(recipe)
    return all(
        saved.get(name, defaults[name]) == value
        for name, value in mine.items()
        if name not in ("num_workers", "channels_last")
    )
