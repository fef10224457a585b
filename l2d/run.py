"""One distillation run from one typed configuration: ``l2d-sweep train``, teacher training, every sweep trial and
the benchmarks build and fit their runs here.

(Over 400 lines for one reason: the typed run configuration and everything a run builds from it, data, teacher, student,
loss, belong to the one entry point every caller shares.)

    config = resolve(RunConfig(dataset="mosaic-digits", teacher="resnet14t", student="resnet10t", method="l2d"))
    run = build_run(config, teacher_store=TeacherStore("~/.cache/l2d-sweep/teachers"))
    history = fit(run, on_epoch=lambda metrics: print(metrics["val_mAP"]))

:func:`resolve` fills every field left ``None`` from the dataset's defaults (:data:`l2d.data.DATASETS`) and checks
the rest; a resolved configuration determines the run. :func:`teacher_key` derives the teacher store's key from
it, so the same settings give the same teacher whether they come from ``l2d-sweep train``, ``l2d-sweep teacher``
or a sweep spec. A teacher is itself a run (:func:`teacher_config`: the teacher's backbone trained with BCE alone
for the teacher's epochs and learning rate).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np
import yaml

from l2d import settings
from l2d import weights as weight_sources
from l2d.backbones import check_backbone_name
from l2d.data import DATASETS, build_dataset, check_dataset_options, data_fingerprint
from l2d.losses import METHODS, method_hparams, official_weights
from l2d.settings import MAX_IMAGE_SIZE, MAX_SEED, setting
from l2d.storage import Location, check_output, prepare_output
from l2d.weights import WeightsError, class_order, identity

# Loaded late, inside the functions that use them: l2d.engine, l2d.metrics, l2d.models, l2d.recipe, l2d.teacher_cache,
# l2d.teachers, torch (not needed when the command line starts); l2d.losses.registry (its name is bound otherwise here).

if TYPE_CHECKING:  # torch and the engine are imported by the functions that build and train, not by the config
    import torch

    from l2d.engine import Distiller, ProgressFn
    from l2d.recipe import Recipe
    from l2d.teachers import TeacherKey, TeacherStore

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: Epochs of the label-wise head fitted on an adopted teacher's frozen backbone (``teacher_head_epochs``).
DEFAULT_HEAD_EPOCHS = 3
EpochFn = Callable[[dict], None]


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one distillation run; ``None`` means "the dataset's default".

    Attributes:
        dataset / data_root / dataset_options / image_size: the data (see :func:`l2d.data.build_dataset`).
        teacher_image_size: the side the teacher sees the images at (:func:`teacher_side`); None: ``image_size``.
        teacher / student: timm backbone names.
        embed_dim: label-wise embedding size D of both models.
        method / hparams: the distillation method and overrides of its default weights.
        epochs / lr: the student's epochs and OneCycle max learning rate.
        teacher_epochs / teacher_lr: the same for training the teacher (when the store lacks it).
        teacher_schedule_epochs: the length of the teacher's OneCycle schedule when it stops before its end (the
            official teachers: an 80-epoch schedule stopped at epoch 30); None: ``teacher_epochs``.
            ``teacher_epochs=0`` uses the teacher as it is: ``teacher_weights`` is then its checkpoint
            (:func:`adopt_teacher`).
        teacher_head_epochs: epochs of the label-wise head fitted on the frozen backbone of an adopted plain timm
            classifier (None: 3).
        batch_size / weight_decay / pct_start / num_workers / amp: the rest of the recipe, shared by both.
        seed: seeds the models' initialisation and the data order.
        student_seed: seeds the student's initialisation and its data order instead (None: ``seed``); the teacher
            stays the one of ``seed`` (a confirmation run retrains the student only, :mod:`sweeps.results.confirm`).
        device: ``cpu``, ``cuda`` or ``cuda:N`` (default: cuda when available).
        student_weights / teacher_weights: initial weights of each backbone (:mod:`l2d.weights`: a local file,
            ``timm``, ``timm:<tag>``, ``hf-hub:<org>/<repo>`` from the local Hugging Face cache, ``offline`` from an
            installed weight package, ``random``); None: the dataset's default for that backbone (random for most).
        channels_last: the memory layout (:attr:`l2d.engine.Recipe.channels_last`); None: the dataset's default.
        decoded_images: the image datasets read each image decoded and resized from the node's store
            (:class:`l2d.data.images.DecodedStore`), decoded once; False: decoded at every read.
        views_per_image: 0 (each epoch a new augmented view of each image), or K stored views replayed FKD-style
            (:attr:`l2d.recipe.Recipe.views_per_image`).
        grad_share_every: sampling of the gradient-share diagnostics (:class:`l2d.engine.Distiller`); None: the
            engine's default, 0: off. Changes nothing that is learned.
    """

    dataset: str = "mosaic-digits"
    data_root: str | None = None
    dataset_options: dict = field(default_factory=dict)
    image_size: int | None = setting(
        None,
        int,
        "network input side",
        minimum=8,
        maximum=MAX_IMAGE_SIZE,
        default_text="the dataset's",
        spec="dataset.image_size",
        flags={"train": "--image-size", "teacher": "--image-size", "dataset": "--image-size"},
    )
    teacher_image_size: int | None = setting(
        None,
        int,
        "the side the teacher sees the images at: it is trained (or adopted and scored) at it, and during distillation "
        "each batch is resized for it while the student sees image_size",
        minimum=8,
        maximum=MAX_IMAGE_SIZE,
        default_text="image_size",
        spec="dataset.teacher_image_size",
        flags={"train": "--teacher-image-size", "teacher": "--teacher-image-size"},
    )
    teacher: str | None = None
    student: str | None = None
    embed_dim: int | None = setting(
        None,
        int,
        "label-wise embedding size D, a multiple of 8 (the decoder's attention heads)",
        minimum=8,
        maximum=8192,
        multiple_of=8,
        default_text="the dataset's",
        spec="recipe.embed_dim",
        flags={"train": "--embed-dim", "teacher": "--embed-dim"},
    )
    method: str = "l2d"
    hparams: dict = field(default_factory=dict)
    epochs: int | None = setting(
        None,
        int,
        "the student's epochs",
        minimum=1,
        maximum=100_000,
        default_text="the dataset's",
        flags={"train": "--epochs"},
    )
    lr: float | None = setting(
        None,
        float,
        "the student's OneCycle max learning rate",
        minimum=0.0,
        exclusive=True,
        default_text="the dataset's",
        flags={"train": "--lr"},
    )
    teacher_epochs: int | None = setting(
        None,
        int,
        "epochs of the teacher when it is trained (0: its checkpoint, the teacher's weights, used as it is)",
        minimum=0,
        maximum=100_000,
        default_text="the dataset's",
        spec="budget.teacher_epochs",
        flags={"train": "--teacher-epochs", "teacher": "--epochs"},
    )
    teacher_lr: float | None = setting(
        None,
        float,
        "the teacher's OneCycle max learning rate when it is trained",
        minimum=0.0,
        exclusive=True,
        default_text="the dataset's",
        flags={"train": "--teacher-lr", "teacher": "--lr"},
    )
    teacher_schedule_epochs: int | None = setting(
        None,
        int,
        "the teacher's OneCycle length when it stops before its end (the official teachers: 80, stopped at 30)",
        minimum=1,
        maximum=100_000,
        default_text="the teacher's epochs",
        spec="budget.teacher_schedule_epochs",
        flags={"train": "--teacher-schedule-epochs", "teacher": "--schedule-epochs"},
    )
    teacher_head_epochs: int | None = setting(
        None,
        int,
        "epochs of the label-wise head fitted on an adopted classifier's frozen backbone",
        minimum=1,
        maximum=10_000,
        default_text=str(DEFAULT_HEAD_EPOCHS),
        spec="budget.teacher_head_epochs",
        flags={"train": "--teacher-head-epochs", "teacher": "--head-epochs"},
    )
    batch_size: int = setting(
        64,
        int,
        "global batch size",
        minimum=1,
        maximum=65_536,
        spec="recipe.batch_size",
        flags={"train": "--batch-size", "teacher": "--batch-size"},
    )
    weight_decay: float = setting(
        1e-4,
        float,
        "Adam's L2 decay on weights",
        minimum=0.0,
        spec="recipe.weight_decay",
        flags={"train": "--weight-decay", "teacher": "--weight-decay"},
    )
    pct_start: float = setting(
        0.2,
        float,
        "share of OneCycle spent warming up",
        minimum=0.0,
        exclusive=True,
        maximum=0.999,
        spec="recipe.pct_start",
        flags={"train": "--pct-start", "teacher": "--pct-start"},
    )
    num_workers: int = setting(
        0,
        int,
        "DataLoader workers per rank",
        minimum=0,
        maximum=256,
        spec="recipe.num_workers",
        flags={"train": "--workers", "teacher": "--workers"},
    )
    amp: bool = setting(True, bool, "mixed precision on CUDA (CPU always runs float32)")
    seed: int = setting(
        0,
        int,
        "seed of the models' initialisation and the data order",
        minimum=0,
        maximum=MAX_SEED,
        spec="seed",
        flags={"train": "--seed", "teacher": "--seed"},
    )
    student_seed: int | None = setting(
        None,
        int,
        "seed of the student's initialisation and data order",
        minimum=0,
        maximum=MAX_SEED,
        default_text="seed",
    )
    teacher_cache: str = setting(
        "float32",
        str,
        "the teacher's outputs of each view computed once per node and read by every run with this teacher and data "
        "seed (float32: exactly the online numbers; float16: half the bytes, rounded to about 3 digits, which moves "
        "each trial's trajectory as another seed would; off: computed at every step)",
        choices=("float32", "float16", "off"),
        spec="recipe.teacher_cache",
        flags={"train": "--teacher-cache"},
    )
    teacher_cache_gb: float = setting(
        2.0,
        float,
        "the most a run's teacher-output cache may take on disk (over it: the teacher runs online)",
        minimum=0.0,
        spec="recipe.teacher_cache_gb",
        flags={"train": "--teacher-cache-gb"},
    )
    decoded_images: bool = setting(
        True,
        bool,
        "decode and resize each image once per node into a memory-mapped store under $L2D_SWEEP_CACHE/decoded, read "
        "by every epoch and trial after (exact: the same pixels; the image datasets, not the in-memory mosaics)",
        spec="recipe.decoded_images",
        flags={"train": "--decoded-images", "teacher": "--decoded-images"},
    )
    views_per_image: int = setting(
        0,
        int,
        "0: a new augmented view of each image every epoch; K: the views of the first K epochs replayed in turn "
        "(FKD-style: the teacher-output cache holds K epochs whatever the run's length; fewer distinct views, a "
        "change of the training distribution)",
        minimum=0,
        maximum=10_000,
        spec="recipe.views_per_image",
        flags={"train": "--views-per-image"},
    )
    device: str | None = None
    student_weights: str | None = None
    teacher_weights: str | None = None
    channels_last: bool | None = setting(
        None,
        bool,
        "channels-last memory layout",
        default_text="the dataset's; on CUDA",
        spec="recipe.channels_last",
        flags={"train": "--channels-last", "teacher": "--channels-last"},
    )
    grad_share_every: int | None = setting(
        None,
        int,
        "gradient-share diagnostics every N steps (0: off)",
        minimum=0,
        maximum=1_000_000,
        default_text="50",
        spec="recipe.grad_share_every",
        flags={"train": "--grad-share-every"},
    )

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **changes)

    @property
    def student_recipe(self) -> Recipe:
        from l2d.recipe import Recipe

        return Recipe(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            pct_start=self.pct_start,
            num_workers=self.num_workers,
            amp=self.amp,
            channels_last=self.channels_last,
            views_per_image=self.views_per_image,
        )

    @property
    def teacher_recipe(self) -> Recipe:
        from l2d.recipe import Recipe

        return Recipe(
            epochs=self.teacher_epochs,
            batch_size=self.batch_size,
            lr=self.teacher_lr,
            weight_decay=self.weight_decay,
            pct_start=self.pct_start,
            num_workers=self.num_workers,
            amp=self.amp,
            schedule_epochs=self.teacher_schedule_epochs,
            channels_last=self.channels_last,
        )


def default_hparams(dataset: str, method: str) -> dict[str, float]:
    """``method``'s weights on ``dataset`` when nothing sets them: the method's own (:data:`l2d.losses.METHODS`,
    the official values for L2D) updated with the dataset's ``method_weights`` (the mosaics' tuned L2D weights)."""
    info = DATASETS.get(dataset)
    return method_hparams(method, info.method_weights.get(method, {}) if info else {})


def resolve(config: RunConfig) -> RunConfig:
    """``config`` with every default filled in and every field checked (idempotent).

    Raises:
        ValueError: an unknown dataset, backbone or method, a weight the method does not have, a bad recipe value;
            the message names the field and what is allowed.
    """
    if config.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {config.dataset!r}; allowed: {', '.join(DATASETS)}")
    info = DATASETS[config.dataset]
    if info.needs_root and not config.data_root:
        raise ValueError(f"dataset {config.dataset!r} needs a root folder (the folder of its files)")
    check_dataset_options(config.dataset, config.dataset_options)
    settings.check(config)  # what was given, before the dataset's defaults fill the rest in
    teacher, student = config.teacher or info.teacher, config.student or info.student
    resolved = config.replace(
        image_size=config.image_size or info.image_size,
        embed_dim=config.embed_dim or info.embed_dim,
        teacher=teacher,
        student=student,
        teacher_weights=config.teacher_weights or info.weights.get(teacher),
        student_weights=config.student_weights or info.weights.get(student),
        channels_last=config.channels_last if config.channels_last is not None else info.channels_last,
        epochs=config.epochs or info.epochs,
        lr=config.lr or info.lr,
        teacher_epochs=config.teacher_epochs if config.teacher_epochs is not None else info.teacher_epochs,
        teacher_head_epochs=config.teacher_head_epochs or DEFAULT_HEAD_EPOCHS,
        teacher_lr=config.teacher_lr or info.lr,
        hparams=method_hparams(config.method, {**default_hparams(config.dataset, config.method), **config.hparams}),
        dataset_options=dict(config.dataset_options),
    )
    for name in (resolved.teacher, resolved.student):
        check_backbone_name(name)
    settings.check(resolved)  # the dataset's defaults too (a dataset's default outside a setting's range is a bug)
    resolved.student_recipe  # noqa: B018 - Recipe checks how its fields relate
    if resolved.teacher_epochs:  # 0: its checkpoint file is looked for when the teacher is needed (adopt_teacher)
        resolved.teacher_recipe  # noqa: B018 - Recipe checks how its fields relate
    if resolved.device is not None:  # the default (cuda when available) is decided where the run is built
        resolve_device(resolved.device)
    return resolved


def resolve_device(name: str | None) -> torch.device:
    """``name`` as a torch device (default: cuda when available, else cpu).

    Raises:
        ValueError: a name torch does not know, or a CUDA device on a machine without one.
    """
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {name!r}; allowed: cpu, cuda, cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not supported; allowed: cpu, cuda, cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def check_weights(config: RunConfig, num_classes: int = 2) -> None:
    """Build each backbone that has initial weights, with them, on the CPU: a missing file or cache entry, an
    unreadable file or weights that do not fit fail here, before any data is read or any training starts.

    Raises:
        WeightsError: naming the file or source and what is wrong.
    """
    from l2d.models import build_model

    config = resolve(config)
    for backbone, source in ((config.teacher, config.teacher_weights), (config.student, config.student_weights)):
        if source:
            build_model(backbone, num_classes, config.embed_dim, weights=source)


def teacher_config(config: RunConfig) -> RunConfig:
    """The run that trains ``config``'s teacher: its backbone with BCE alone, the teacher's epochs and lr."""
    config = resolve(config)
    return config.replace(
        student=config.teacher,
        method="bce",
        hparams={},
        epochs=config.teacher_epochs,
        lr=config.teacher_lr,
        student_weights=config.teacher_weights,
    )


def teacher_key(config: RunConfig, data_fingerprint: str) -> TeacherKey:
    """The teacher store's key of ``config``'s teacher over data of ``data_fingerprint``
    (:func:`l2d.data.data_fingerprint` of its splits): the same settings and data give the same key everywhere."""
    from l2d.teachers import TeacherKey

    config = resolve(config)
    recipe = {
        "epochs": config.teacher_epochs,
        "batch_size": config.batch_size,
        "lr": config.teacher_lr,
        "weight_decay": config.weight_decay,
        "pct_start": config.pct_start,
    }
    if config.teacher_schedule_epochs is not None:
        recipe["schedule_epochs"] = config.teacher_schedule_epochs
    if config.teacher_epochs == 0:  # adopted: what is fitted is the head, for this many epochs
        recipe["head_epochs"] = config.teacher_head_epochs
    return TeacherKey(
        dataset=config.dataset,
        backbone=config.teacher,
        image_size=config.image_size,
        embed_dim=config.embed_dim,
        recipe=recipe,
        seed=config.seed,
        dataset_options=_data_options_for_key(config.dataset, config.dataset_options),
        data_fingerprint=data_fingerprint,
        weights=identity(config.teacher_weights, config.teacher) or "",
    )


def _data_options_for_key(dataset: str, options: Mapping) -> dict:
    """A dataset's options without where its files are (the data's fingerprint says what they hold): a copy of the
    data elsewhere finds the same teacher."""
    known = DATASETS[dataset].options if dataset in DATASETS else {}
    return {key: value for key, value in options.items() if not (key in known and known[key].path)}


def splits_key(config: RunConfig, splits: Mapping) -> TeacherKey:
    """:func:`teacher_key` of ``config`` over ``splits`` (their fingerprint computed here)."""
    return teacher_key(config, data_fingerprint(splits))


def build_splits(config: RunConfig) -> dict[str, torch.utils.data.Dataset]:
    """The train, val and test splits of ``config``'s dataset."""
    config = resolve(config)
    splits = {
        split: build_dataset(config.dataset, config.data_root, split, config.image_size, **config.dataset_options)
        for split in SPLITS
    }
    if config.decoded_images:
        for dataset in splits.values():
            if hasattr(dataset, "decode_once"):  # the image datasets (the mosaics are arrays in memory already)
                dataset.decode_once()
    return splits


@dataclass
class Run:
    """A built run: its resolved configuration, data, models and the engine that trains them.

    Attributes:
        history: the metrics of every epoch done so far (filled by :func:`fit`; restored by a resume).
    """

    config: RunConfig
    splits: dict
    teacher: torch.nn.Module | None
    teacher_card: dict | None
    student: torch.nn.Module
    distiller: Distiller
    history: list[dict] = field(default_factory=list)
    teacher_cache_said: str | None = None  # what the teacher-output cache takes and does (None: no teacher)


def get_teacher(
    config: RunConfig,
    store: TeacherStore,
    splits: Mapping | None = None,
    on_epoch: EpochFn | None = None,
    batch_progress: ProgressFn | None = None,
):
    """``config``'s teacher from the store, trained into it first when missing or unreadable:
    ``(model, card, trained)``. At its own resolution (``teacher_image_size``, :func:`teacher_side`): trained or
    adopted and scored on the images at that side, and set to resize the student's batches to it."""
    config, splits = teacher_side(config, splits)
    model, card, trained = store.get_or_train(
        splits_key(config, splits), 0, lambda: train_teacher(config, splits, on_epoch, batch_progress)
    )
    model.input_size = config.image_size
    model.teacher_digest = card.get("digest")  # what its outputs are cached under (l2d.teacher_cache)
    return model, card, trained


def teacher_side(config: RunConfig, splits: Mapping | None = None) -> tuple[RunConfig, Mapping]:
    """The run and the splits a teacher is trained (or adopted and scored) on: ``config`` and ``splits`` (built when
    None), or, when ``teacher_image_size`` is another side than ``image_size``, ``config`` at that side and its splits
    built at it (the teacher store's key is then the one of a teacher trained at that side: any run that trains it
    there shares it)."""
    config = resolve(config)
    side = config.teacher_image_size
    if side and side != config.image_size:
        own = config.replace(image_size=side, teacher_image_size=None)
        return own, build_splits(own)
    return config, dict(splits) if splits is not None else build_splits(config)


def train_teacher(
    config: RunConfig,
    splits: Mapping | None = None,
    on_epoch: EpochFn | None = None,
    batch_progress: ProgressFn | None = None,
) -> tuple[torch.nn.Module, dict]:
    """Train ``config``'s teacher (:func:`teacher_config`), or adopt it when ``teacher_epochs`` is 0
    (:func:`adopt_teacher`); returns ``(model, card fields)``."""
    from l2d.models import count_parameters

    if resolve(config).teacher_epochs == 0:
        return adopt_teacher(config, splits, on_epoch)
    run = build_run(teacher_config(config), splits=splits)
    history = fit(run, on_epoch=on_epoch, batch_progress=batch_progress, test="last")
    last = history[-1]
    fields = {
        "backbone": run.config.student,
        "val_mAP": last["val_mAP"],
        "test_mAP": last["test_mAP"],
        "epochs": len(history),
        "parameters": count_parameters(run.student),
        "class_names": list(run.splits["train"].class_names),
        "history": history,
    }
    return run.student.cpu().eval(), fields


def adopt_teacher(
    config: RunConfig, splits: Mapping | None = None, on_epoch: EpochFn | None = None
) -> tuple[torch.nn.Module, dict]:
    """``config``'s teacher used as it is (``teacher_epochs`` 0): its checkpoint (``teacher_weights``) loaded by
    :func:`l2d.models.adopt_checkpoint`; for a plain timm classifier, a label-wise head fitted on its frozen backbone
    (:func:`fit_head`) so that the label-wise methods have embeddings, while every method distills its own
    classifier's logits. Scored on val and test with the logits it distills; returns ``(model, card fields)``."""
    import torch

    from l2d.engine import evaluate, make_loader
    from l2d.models import adopt_checkpoint, count_parameters

    config = resolve(config)
    source = config.teacher_weights or ""
    local = source and not source.startswith(weight_sources.REMOTE_SCHEMES)
    if not source or (local and not os.path.isfile(os.path.expanduser(source))):
        raise ValueError(
            f"teacher_epochs 0 uses the teacher as it is: give its checkpoint file (or s3:// / gs:// URI) as the "
            f"teacher's weights (got {source or 'none'!r})"
        )
    splits = dict(splits) if splits is not None else build_splits(config)
    classes = list(splits["train"].class_names)
    path = weight_sources.resolve(source, config.teacher)  # a remote checkpoint: fetched once into the cache
    order, order_said = class_order(path, classes)
    torch.manual_seed(config.seed)  # the head's initialisation
    model = adopt_checkpoint(config.teacher, len(classes), config.embed_dim, path)
    if order is not None and order != list(range(len(classes))):
        _reorder_classifier(model, order, path, order_said)
        order_said += "; its classifier's rows put in the dataset's order"
    device = resolve_device(config.device)
    model.to(device)
    history = fit_head(model, splits, config, device, on_epoch) if model.own_classifier else []
    scores = {
        split: evaluate(model, make_loader(splits[split], config.batch_size, train=False), device)["mAP"]
        for split in ("val", "test")
    }
    fields = {
        "backbone": config.teacher,
        "val_mAP": scores["val"],
        "test_mAP": scores["test"],
        "epochs": 0,
        "adopted": True,
        "logits": "classifier" if model.own_classifier else "head",
        "head_epochs": len(history),
        "head_val_mAP": history[-1]["val_mAP"] if history else None,
        "class_order": order_said,
        "parameters": count_parameters(model),
        "class_names": classes,
        "history": history,
    }
    return model.cpu().eval(), fields


def _reorder_classifier(model, order: list[int], path: str, said: str) -> None:
    """Put the rows of an adopted timm classifier in the dataset's class order (``order[i]``: the checkpoint's row of
    the dataset's class ``i``), so that logit ``i`` is class ``i``.

    Raises:
        WeightsError: the model is a whole model of this project (its label-wise head is per class too), or its
            classifier is not one module with a row per class.
    """
    import torch

    fix = "list the dataset's classes in the checkpoint's order (the dataset's classes file)"
    if not model.own_classifier:
        raise WeightsError(f"{path}: its classes are in another order than the dataset's, {said}; {fix}")
    classifier = model.backbone.get_classifier()
    rows = [p for p in getattr(classifier, "parameters", lambda: [])() if p.shape[:1] == (len(order),)]
    if not isinstance(classifier, torch.nn.Module) or not rows:
        raise WeightsError(f"{path}: its classifier's rows cannot be put in the dataset's order, {said}; {fix}")
    index = torch.as_tensor(order)
    with torch.no_grad():
        for parameter in rows:
            parameter.copy_(parameter[index])


def fit_head(model, splits: Mapping, config: RunConfig, device, on_epoch: EpochFn | None = None) -> list[dict]:
    """Fit ``model``'s label-wise head on its frozen backbone (kept in eval mode: its batch-norm statistics do not
    move) with BCE, Adam at the teacher's learning rate, for ``teacher_head_epochs``; returns each epoch's
    ``{epoch, train_total (the BCE), val_mAP (the head's own), images_per_s}``."""
    import torch

    from l2d.engine import make_loader
    from l2d.metrics import mean_average_precision

    config = resolve(config)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for parameter in model.head.parameters():
        parameter.requires_grad_(True)
    optimizer = torch.optim.Adam(model.head.parameters(), lr=config.teacher_lr, weight_decay=config.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    history = []
    for epoch in range(1, config.teacher_head_epochs + 1):
        model.eval()
        model.head.train()
        total, batches, seen, started = 0.0, 0, 0, time.time()
        for images, targets, _ in make_loader(splits["train"], config.batch_size, train=True, seed=config.seed + epoch):
            logits, _ = model.head_output(images.to(device))
            loss = loss_fn(logits, targets.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, batches, seen = total + loss.item(), batches + 1, seen + len(images)
        images_per_s = seen / max(time.time() - started, 1e-9)
        model.eval()
        scores, truth = [], []
        with torch.no_grad():
            for images, targets, _ in make_loader(splits["val"], config.batch_size, train=False):
                scores.append(torch.sigmoid(model.head_output(images.to(device))[0]).cpu().numpy())
                truth.append(targets.numpy())
        metrics = {
            "epoch": epoch,
            "train_total": total / max(batches, 1),
            "val_mAP": mean_average_precision(np.concatenate(scores), np.concatenate(truth)),
            "images_per_s": images_per_s,
        }
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return history


def build_run(
    config: RunConfig,
    *,
    splits: Mapping | None = None,
    teacher: torch.nn.Module | None = None,
    teacher_store: TeacherStore | None = None,
    teacher_card: dict | None = None,
) -> Run:
    """Build ``config``'s run: the splits (unless given), the teacher (given, or from ``teacher_store``), the
    student (seeded by ``config.seed``) and the engine. Nothing is trained yet.

    Raises:
        ValueError: the method needs a teacher and neither ``teacher`` nor ``teacher_store`` was given.
    """
    import torch

    from l2d.engine import Distiller
    from l2d.models import build_model

    config = resolve(config)
    splits = dict(splits) if splits is not None else build_splits(config)
    if METHODS[config.method].needs_teacher and teacher is None:
        if teacher_store is None:
            raise ValueError(f"method {config.method!r} needs a teacher: give one or a teacher store")
        teacher, teacher_card, _ = get_teacher(config, teacher_store, splits)
    if not METHODS[config.method].needs_teacher:
        teacher, teacher_card = None, None
    seed = config.seed if config.student_seed is None else config.student_seed
    torch.manual_seed(seed)
    student = build_model(
        config.student, len(splits["train"].class_names), config.embed_dim, weights=config.student_weights
    )
    diagnostics = {} if config.grad_share_every is None else {"grad_share_every": config.grad_share_every}
    cache, cache_said = teacher_cache(config, teacher, splits, seed)
    distiller = Distiller(
        student,
        teacher,
        splits["train"],
        splits["val"],
        splits["test"],
        config.method,
        config.hparams,
        config.student_recipe,
        resolve_device(config.device),
        seed,
        **diagnostics,
        teacher_cache=cache,
    )
    return Run(config, splits, teacher, teacher_card, student, distiller, teacher_cache_said=cache_said)


def teacher_cache(config: RunConfig, teacher, splits: Mapping, view_seed: int):
    """The run's :class:`l2d.teacher_cache.TeacherCache` and a line saying what it takes, or ``(None, why not)``:
    ``teacher_cache`` off, a method that reads the teacher's intermediate maps, a teacher not from the store (no
    digest to key it by), or a cache over ``teacher_cache_gb``."""
    from l2d.teacher_cache import TeacherCache, parts_of

    if teacher is None:
        return None, None
    if config.teacher_cache == "off":
        return None, "teacher outputs: computed at every step (teacher_cache: off)"
    parts = parts_of(config.method)
    digest = getattr(teacher, "teacher_digest", None)
    if not parts:
        return None, f"teacher outputs: computed at every step ({config.method} reads the teacher's feature maps)"
    if digest is None:
        return None, "teacher outputs: computed at every step (a teacher given by hand: no store digest to key them)"
    train = splits["train"]
    return TeacherCache.plan(
        digest,
        view_seed,
        config.image_size,
        train.fingerprint(),
        len(train),
        _output_shapes(teacher, splits, parts),
        config.teacher_cache,
        config.student_recipe.view_epochs,
        config.teacher_cache_gb,
    )


def _output_shapes(teacher, splits: Mapping, parts) -> dict[str, tuple[int, ...]]:
    """The shape of one image's ``parts`` of ``teacher``'s output."""
    classes = len(splits["train"].class_names)
    dims = {
        "logits": (classes,),
        "label_embeddings": (classes, teacher.embed_dim),
        "features": (teacher.backbone.num_features,),
    }
    return {part: dims[part] for part in parts}


def teacher_cache_plan(config: RunConfig, teacher, splits: Mapping, methods) -> list[str]:
    """What the teacher-output cache of ``config``'s teacher takes and does for each of ``methods`` that distills
    (a sweep's methods, grouped by the parts they read): printed by a sweep's teacher phase before any trial
    starts, so a user sees the disk it will take, per data seed, and which methods run the teacher online."""
    from l2d.losses.registry import METHODS
    from l2d.teacher_cache import TeacherCache, megabytes, parts_of

    config = resolve(config)
    methods = [m for m in methods if METHODS[m].needs_teacher]
    count = len(splits["train"])
    if not methods:
        return []
    if config.teacher_cache == "off":
        return ["teacher outputs: computed at every step by every trial (teacher_cache: off)"]
    _, each = TeacherCache.size(
        count, _output_shapes(teacher, splits, ("logits", "label_embeddings", "features")), config.teacher_cache, 1
    )
    lines = [f"teacher outputs of {config.teacher} ({count:,} training images): {each}"]
    views = config.student_recipe.view_epochs
    of_views = (
        f"{views} epoch(s) of views (views_per_image: {config.views_per_image}, replayed over {config.epochs})"
        if config.views_per_image
        else f"{config.epochs} epoch(s)"
    )
    groups: dict[tuple[str, ...] | None, list[str]] = {}
    for method in methods:
        groups.setdefault(parts_of(method), []).append(method)
    for parts, named in groups.items():
        who = ", ".join(named)
        if parts is None:
            lines.append(f"  {who}: the teacher runs online (they read its feature maps)")
            continue
        shapes = _output_shapes(teacher, splits, parts)
        total, _ = TeacherCache.size(count, shapes, config.teacher_cache, views)
        size = f"{' + '.join(parts)}, {megabytes(total)} per data seed over {of_views} in {config.teacher_cache}"
        if total > config.teacher_cache_gb * 1e9:
            per_epoch, _ = TeacherCache.size(count, shapes, config.teacher_cache, 1)
            fit = int(config.teacher_cache_gb * 1e9 // per_epoch)
            lines.append(
                f"  {who}: {size}: over the budget of {config.teacher_cache_gb:g} GB (teacher_cache_gb): the "
                f"teacher runs online"
                + (
                    f" (recipe.views_per_image: {fit} or fewer would fit: K stored views per image replayed, a "
                    f"change of the training distribution)"
                    if fit >= 1 and not config.views_per_image
                    else ""
                )
            )
        else:
            lines.append(f"  {who}: {size}: computed once per view, read by every trial with this data seed")
    return lines


def balanced_weights(
    config: RunConfig,
    splits: Mapping | None = None,
    teacher: torch.nn.Module | None = None,
    teacher_store: TeacherStore | None = None,
    batches: int = 4,
) -> tuple[dict[str, float], float]:
    """The ``balanced`` rule of :func:`l2d.losses.official_weights`: the official weights of ``config.method``
    times the factor that makes their weighted terms, on the untrained student (seeded by ``config.seed``) over
    the first ``batches`` training batches, add up to the supervised BCE. Returns ``(weights, factor)``."""
    import torch

    from l2d.engine import model_forward

    run = build_run(
        config.replace(hparams=official_weights(config.method)),
        splits=splits,
        teacher=teacher,
        teacher_store=teacher_store,
    )
    distiller = run.distiller
    device = distiller.device
    criterion, student, teacher_model = distiller.criterion, run.student.to(device), run.teacher.to(device)
    student.eval()
    teacher_model.eval()
    weights = official_weights(config.method)
    bce = distilled = 0.0
    loader = torch.utils.data.DataLoader(run.splits["train"], batch_size=config.batch_size, shuffle=False)
    for index, (images, targets) in enumerate(loader):
        if index == batches:
            break
        images, targets = images.to(device), targets.to(device)
        with torch.no_grad():
            _, parts = criterion(
                model_forward(student, images, criterion.student_stages),
                model_forward(teacher_model, images, criterion.teacher_stages),
                targets,
            )
        bce += float(parts["bce"])
        distilled += sum(float(parts[name]) * weights[f"lambda_{name}"] for name in parts if name != "bce")
    factor = bce / distilled if distilled > 0 else 1.0
    return official_weights(config.method, "balanced", factor=factor), factor


def fit(
    run: Run, on_epoch: EpochFn | None = None, batch_progress: ProgressFn | None = None, test: str = "every"
) -> list[dict]:
    """Train ``run`` from its next epoch to its last; returns its whole history.

    Args:
        on_epoch: called with each epoch's metrics (all floats) right after the epoch: report, checkpoint, log.
        batch_progress: the engine's per-batch callback (``(batch, batches, values)``).
        test: ``every`` evaluates the test split every epoch, ``last`` only after the last one (selection never
            looks at test; this only saves time).
    """
    if test not in ("every", "last"):
        raise ValueError(f"test must be 'every' or 'last', got {test!r}")
    distiller = run.distiller
    while distiller.epoch < distiller.recipe.epochs:
        last = distiller.epoch + 1 == distiller.recipe.epochs
        metrics = distiller.run_epoch(batch_progress, evaluate_test=test == "every" or last)
        metrics = {name: float(value) for name, value in metrics.items()}
        run.history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
    return run.history


def measure_latency(model: torch.nn.Module, image_size: int, device: torch.device, repeats: int = 10) -> float:
    """Median milliseconds of one forward pass on one image (eval mode, no grad)."""
    import torch

    model.eval()
    images = torch.rand(1, 3, image_size, image_size, device=device)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(images)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def default_out(config: RunConfig) -> str:
    """Where ``l2d-sweep train`` writes by default: ``runs/<dataset>-<teacher>-to-<student>-<method>``."""
    config = resolve(config)
    return f"runs/{config.dataset}-{config.teacher}-to-{config.student}-{config.method}"


def train_to_folder(
    config: RunConfig,
    out: str,
    store: TeacherStore,
    on_epoch: EpochFn | None = None,
    batch_progress: ProgressFn | None = None,
    teacher_progress=None,
) -> dict:
    """``l2d-sweep train``: the run of ``config`` (its teacher from ``store``, trained there when missing), written
    into the folder ``out``: ``args.yaml`` (the resolved configuration), TensorBoard scalars, ``student.pt`` and
    ``metrics.json``. Selection happens on val; test is scored once, at the end.

    Args:
        out: a new or empty folder, or one this tool wrote before (:func:`l2d.storage.prepare_output`).
        teacher_progress: ``(on_epoch, batch_progress)`` for the teacher, when it has to be trained.

    Returns:
        What ``metrics.json`` holds: the configuration, the last epoch, the history, the student's size, the
        teacher's card, the wall time, and the test split's chance level (its mean label frequency).
    """
    import torch
    from torch.utils.tensorboard import SummaryWriter

    from l2d.models import count_parameters

    config = resolve(config)
    check_output(out, "--out")  # refused before anything is read; created only once the run is built
    check_weights(config)  # before any data is read or any teacher trained
    splits = build_splits(config)  # the data first: a bad dataset fails before any teacher is trained
    teacher, teacher_card = None, None
    if METHODS[config.method].needs_teacher:
        teacher_epoch, teacher_batch = teacher_progress or (None, None)
        teacher, teacher_card, _ = get_teacher(config, store, splits, teacher_epoch, teacher_batch)
    run = build_run(config, splits=splits, teacher=teacher, teacher_card=teacher_card)
    folder = prepare_output(out, "--out", kind="train")
    recorded = {
        **asdict(config),
        "recipe": asdict(config.student_recipe),
        "teacher_digest": teacher_card["digest"] if teacher_card else None,
    }
    (folder / "args.yaml").write_text(yaml.safe_dump(recorded, sort_keys=False))
    start = time.time()
    with SummaryWriter(str(Location.parse(folder) / "tensorboard")) as writer:

        def record(metrics: dict) -> None:
            for name, value in metrics.items():
                if name != "epoch":
                    writer.add_scalar(name.replace("_", "/", 1), value, int(metrics["epoch"]))
            if on_epoch is not None:
                on_epoch(metrics)

        history = fit(run, on_epoch=record, batch_progress=batch_progress, test="last")
    buffer = io.BytesIO()
    torch.save(run.student.state_dict(), buffer)
    (folder / "student.pt").write_bytes(buffer.getvalue())
    result = {
        "config": recorded,
        "final": history[-1],
        "history": history,
        "wall_time_s": time.time() - start,
        "student_parameters": count_parameters(run.student),
        "teacher": {k: v for k, v in teacher_card.items() if k != "history"} if teacher_card else None,
        "chance_mAP": float(splits["test"].targets.mean() * 100),
        "teacher_outputs": run.teacher_cache_said,
    }
    (folder / "metrics.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    return result
