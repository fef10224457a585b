"""The distillation engine: epochs of training and evaluation, in one process or under DDP.

(Over 400 lines for one reason: the training loop, evaluation, checkpointing and the DDP plumbing share state per
epoch; split apart they would pass it through every call.)

The same code runs ``l2d-sweep train`` on a laptop, a unit test with a 2-process gloo group, and every worker of a
sweep trial (Ray Train sets up the process group; this module never imports Ray).

Recipe (the official one by default): Adam with L2 weight decay 1e-4 on weights only (not on biases or other
1-D parameters), OneCycle (max lr 1e-4, pct_start 0.2) stepped per batch, batch 64; AMP on CUDA (bf16 where
supported, else fp16 with a gradient scaler), float32 on CPU. The teacher runs in eval mode under
``torch.inference_mode``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import asdict
from typing import Callable, Iterator, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from l2d.losses import DistillationCriterion, loss_parts
from l2d.metrics import multilabel_metrics
from l2d.models import ModelOutput
from l2d.recipe import Recipe, recipe_matches, view_epoch
from l2d.teacher_cache import TeacherCache

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, Mapping[str, float]], None]
#: Default sampling of the gradient-share diagnostics: one optimizer step in this many (about 5 % more time for L2D's
#: four parts: one extra backward pass per part on the sampled step).
GRAD_SHARE_EVERY = 50


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf; the message names the epoch and the batch."""


def world() -> tuple[int, int]:
    """``(rank, world size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Adam:
    """Adam with L2 decay on weights only: biases, norm scales and other 1-D parameters are not decayed."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim > 1 else no_decay).append(parameter)
    return torch.optim.Adam(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int):
    """OneCycle over ``(recipe.schedule_epochs or recipe.epochs) * steps_per_epoch`` optimizer steps.

    Raises:
        ValueError: a schedule whose warm-up ends exactly on its first step (``pct_start * steps == 1``), where
            PyTorch's OneCycle divides by zero.
    """
    epochs = recipe.schedule_epochs or recipe.epochs
    total = epochs * steps_per_epoch
    if abs(recipe.pct_start * total - 1) < 1e-9:
        raise ValueError(
            f"the OneCycle schedule has {total} optimizer steps ({epochs} epoch(s) x "
            f"{steps_per_epoch} batch(es)) and pct_start {recipe.pct_start:g}: a warm-up of exactly one "
            f"step, which OneCycle cannot compute; change the batch size, the epochs, pct_start or the "
            f"dataset size"
        )
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=recipe.lr, epochs=epochs, steps_per_epoch=steps_per_epoch, pct_start=recipe.pct_start
    )


class ShardSampler(Sampler[int]):
    """Rank r of w gets indices r, r + w, ... in order: no padding, so gathered predictions have no duplicates."""

    def __init__(self, dataset: Dataset, rank: int, world_size: int):
        self.indices = list(range(rank, len(dataset), world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class _Indexed(Dataset):
    """Wraps a dataset to also return each sample's index (to reassemble predictions gathered across ranks)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        return image, target, index


def view_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of image ``index``'s augmented view in ``epoch`` of a run whose data seed is ``seed``: a function of the
    three alone, so every run with that data seed sees the same view of each image in each epoch, whatever its model,
    its method or its loader workers consumed from the random generators in between."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class ViewSampler(Sampler):
    """The training order of a loader (a seeded shuffle, or a rank's :class:`DistributedSampler` shard) as
    ``(index, view epoch, seed)`` keys, which :class:`Views` turns into each image's view of that epoch. The epoch is
    part of the key, not state in the dataset: loader workers (persistent ones too) see it with every index. With
    ``views_per_image`` K the view epoch cycles through the first K epochs (:func:`l2d.recipe.view_epoch`);
    the order is reshuffled every epoch either way."""

    def __init__(self, order: Sampler, seed: int, generator: torch.Generator | None = None, views_per_image: int = 0):
        self.order, self.seed, self.generator = order, seed, generator
        self.views_per_image = views_per_image
        self.epoch = self.views_from = 0  # the epoch, and the epoch whose views it shows

    def set_epoch(self, epoch: int) -> None:
        """The epoch's order (reshuffled from ``seed + epoch``: a resumed run sees the same one) and views."""
        self.epoch = epoch
        self.views_from = view_epoch(epoch, self.views_per_image)
        if isinstance(self.order, DistributedSampler):
            self.order.set_epoch(epoch)
        elif self.generator is not None:
            self.generator.manual_seed(self.seed + epoch)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        return ((index, self.views_from, self.seed) for index in self.order)

    def __len__(self) -> int:
        return len(self.order)


class Views(Dataset):
    """A training dataset whose sample ``(index, epoch, seed)`` is drawn under :func:`view_seed` of that key, in a
    fork of the global random generator: the augmentation's draws are the view's own, and leave the generator that
    dropout and initialisation draw from as it was."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]):
        """``(image, target, index)``: the view, and which image it is (the teacher-output cache's row)."""
        index, epoch, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(view_seed(seed, epoch, index))
            image, target = self.dataset[index]
        return image, target, index


def make_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    num_workers: int = 0,
    seed: int = 0,
    device: torch.device | None = None,
    views_per_image: int = 0,
) -> DataLoader:
    """A loader for this rank: shuffled and DistributedSampler-sharded for training, sharded in order for eval.

    ``batch_size`` is global: each of the w ranks loads ``batch_size // w`` (at least 1). ``views_per_image``: the
    training views replayed from the first K epochs (:class:`ViewSampler`; 0: a new view every epoch).
    """
    rank, world_size = world()
    per_rank = max(1, batch_size // world_size)
    pin = device is not None and device.type == "cuda"
    if train:
        generator = None
        if world_size > 1:
            order = DistributedSampler(dataset, world_size, rank, shuffle=True, seed=seed, drop_last=True)
        else:
            generator = torch.Generator().manual_seed(seed)
            order = RandomSampler(dataset, generator=generator)
        # drop_last: a last batch of 1 breaks BatchNorm and skews CD/ID, which need sets of >= 2.
        drop_last = len(dataset) // world_size >= per_rank
        return DataLoader(
            Views(dataset),
            batch_size=per_rank,
            sampler=ViewSampler(order, seed, generator, views_per_image),
            # the loader's own draw (its workers' base seed) from a generator of its own, not the global one
            generator=generator if generator is not None else torch.Generator().manual_seed(seed),
            num_workers=num_workers,
            drop_last=drop_last,
            pin_memory=pin,
            persistent_workers=num_workers > 0,
        )
    return DataLoader(
        _Indexed(dataset),
        batch_size=per_rank,
        sampler=ShardSampler(dataset, rank, world_size),
        num_workers=num_workers,
        pin_memory=pin,
        persistent_workers=num_workers > 0,
    )


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 on CUDA where supported, else fp16; None (float32) on CPU or when disabled."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def use_channels_last(device: torch.device, setting: bool | None) -> bool:
    """:attr:`Recipe.channels_last` resolved: the setting, or CUDA when it is None."""
    return device.type == "cuda" if setting is None else bool(setting)


def _to_device(images: torch.Tensor, device: torch.device, channels_last: bool | None = None) -> torch.Tensor:
    """Images on ``device``, channels-last where :func:`use_channels_last` says so."""
    if use_channels_last(device, channels_last) and images.ndim == 4:
        return images.to(device, non_blocking=True, memory_format=torch.channels_last)
    return images.to(device, non_blocking=True)


def model_forward(model: nn.Module, images: torch.Tensor, stages: tuple[int, ...]) -> ModelOutput:
    """``model(images)``, asking for backbone stages only when there are any (plain modules need not take them)."""
    return model(images, stages=stages) if stages else model(images)


def _teacher_forward(
    teacher: nn.Module, images: torch.Tensor, dtype: torch.dtype | None, stages: tuple[int, ...] = ()
) -> ModelOutput:
    with torch.inference_mode(), torch.autocast(images.device.type, dtype=dtype, enabled=dtype is not None):
        output = model_forward(teacher, images, stages)
    # Clones are ordinary tensors, safe to use beside autograd (inference tensors are not).
    return output.map(torch.clone)


class TrainStep(nn.Module):
    """The student and the method's criterion as one module: one forward gives the loss, and under DDP the
    gradients of the criterion's connectors are averaged across ranks with the student's."""

    def __init__(self, student: nn.Module, criterion: DistillationCriterion):
        super().__init__()
        self.student = student
        self.criterion = criterion

    def forward(
        self, images: torch.Tensor, targets: torch.Tensor, teacher_output: ModelOutput | None, live: dict | None = None
    ):
        output = model_forward(self.student, images, self.criterion.student_stages)
        return self.criterion(output, teacher_output, targets, live=live)


def gradient_shares(
    live: Mapping[str, torch.Tensor], parameters: list[torch.Tensor], scale: float = 1.0
) -> dict[str, float] | None:
    """Each weighted loss part's gradient norm over ``parameters`` (the student's), and its share of their sum:
    ``{"grad_norm_<part>": ||d(w_p L_p)/d theta||, "grad_share_<part>": that / sum over parts}`` (the shares add up
    to 1). ``live`` maps each part to its weighted, differentiable value; the graph is kept for the step's own
    backward, and no ``.grad`` is touched, so training is the same with or without this. ``scale``: a gradient
    scaler's factor (the norms are divided by it). None when a gradient is not finite (an fp16 overflow)."""
    norms = {}
    for part, value in live.items():
        if not value.requires_grad:
            norms[part] = 0.0
            continue
        grads = torch.autograd.grad(value * scale, parameters, retain_graph=True, allow_unused=True)
        squared = sum((g.float().pow(2).sum() for g in grads if g is not None), torch.zeros((), device=value.device))
        norms[part] = float(squared.sqrt()) / scale
    if not all(math.isfinite(n) for n in norms.values()):
        return None
    total = sum(norms.values())
    result = {f"grad_norm_{part}": norm for part, norm in norms.items()}
    result.update({f"grad_share_{part}": norm / total if total > 0 else 0.0 for part, norm in norms.items()})
    return result


def _all_reduce_max(value: torch.Tensor) -> torch.Tensor:
    if world()[1] > 1:
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value


def train_epoch(
    step: nn.Module,
    teacher: nn.Module | None,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    criterion: DistillationCriterion,
    device: torch.device,
    epoch: int,
    scaler: torch.amp.GradScaler | None = None,
    dtype: torch.dtype | None = None,
    progress: ProgressFn | None = None,
    channels_last: bool | None = None,
    grad_share_every: int = 0,
    step_offset: int = 0,
    teacher_cache: TeacherCache | None = None,
) -> dict[str, float]:
    """Train one epoch of ``step`` (a :class:`TrainStep`, maybe DDP-wrapped); return the loss parts (``train_total``,
    ``train_bce``, ...) and ``images_per_s`` (all ranks together).

    Loss parts are means over batches of each batch's value, exactly as the optimizer saw them (BCE is summed
    over the batch's images and labels, MLD averaged over images, CD and ID summed over the batch's sets).

    With ``grad_share_every`` N > 0 and a method of several loss parts, every N-th optimizer step (counted from
    ``step_offset``, the steps of the epochs before) also measures each part's share of the student's gradient
    norm (:func:`gradient_shares`): ``train_grad_share_<part>`` and ``train_grad_norm_<part>`` are their means over
    the sampled steps (and over ranks), ``train_grad_samples`` how many there were.

    Raises:
        NonFiniteLossError: the loss was NaN or inf (checked every batch, on every rank together).
    """
    step.train()
    if teacher is not None:
        teacher.eval()
    if isinstance(loader.sampler, (ViewSampler, DistributedSampler)):
        loader.sampler.set_epoch(epoch)  # the epoch's order and views
    # The epoch whose views this one shows (itself, or one of the first K replayed): the teacher's outputs are its.
    views_of = loader.sampler.views_from if isinstance(loader.sampler, ViewSampler) else epoch
    names = ("total", *loss_parts(criterion.method))
    sums = torch.zeros(len(names), dtype=torch.float64, device=device)
    diagnosed = names[1:] if grad_share_every > 0 and len(names) > 2 else ()
    # [samples, norm sums..., share sums...] of the gradient diagnostics.
    diagnostics = torch.zeros(1 + 2 * len(diagnosed), dtype=torch.float64, device=device)
    student_parameters = [p for p in unwrap(step).student.parameters() if p.requires_grad] if diagnosed else []
    seen = 0
    start = time.perf_counter()
    num_batches = len(loader)
    # The ledger: seconds waiting for the loader (and the copy to the device), in the teacher's forward pass, and in
    # the student's step (forward, losses, backward, optimizer: the rest of the loop). On CUDA each mark waits for
    # the device, so that its time is counted where it is spent.
    ledger = [0.0, 0.0, 0.0]
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    mark = start
    batches = iter(loader)
    for batch_index in range(num_batches):
        try:
            images, targets, indices = next(batches)
        except StopIteration:
            break
        images = _to_device(images, device, channels_last)
        targets = targets.to(device, non_blocking=True)
        synchronize()
        now = time.perf_counter()
        ledger[0], mark = ledger[0] + now - mark, now
        teacher_output = None
        if teacher is not None:

            def forward(images=images):
                return _teacher_forward(teacher, images, dtype, criterion.teacher_stages)

            teacher_output = (
                teacher_cache.outputs(views_of, indices.to(device), forward) if teacher_cache is not None else forward()
            )
        if teacher is not None:
            synchronize()
            now = time.perf_counter()
            ledger[1], mark = ledger[1] + now - mark, now
        live = {} if diagnosed and (step_offset + batch_index) % grad_share_every == 0 else None
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss, parts = step(images, targets, teacher_output, live=live)
        bad = _all_reduce_max((~torch.isfinite(loss.detach())).float().reshape(1))
        if bad.item():
            values = ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items())
            raise NonFiniteLossError(
                f"non-finite loss at epoch {epoch}, batch {batch_index + 1}/{num_batches} "
                f"(on this rank: total={loss.item():.4g}, {values}); lower the learning rate "
                f"or the loss weights"
            )
        if live:
            shares = gradient_shares(live, student_parameters, scaler.get_scale() if scaler is not None else 1.0)
            if shares is not None:
                diagnostics += torch.tensor(
                    [
                        1.0,
                        *(shares[f"grad_norm_{p}"] for p in diagnosed),
                        *(shares[f"grad_share_{p}"] for p in diagnosed),
                    ],
                    dtype=torch.float64,
                    device=device,
                )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        seen += images.shape[0]
        sums += torch.stack([loss.detach(), *(parts[name] for name in names[1:])]).double()
        if progress is not None:
            progress(batch_index + 1, num_batches, {"loss": loss.item()})
        synchronize()
        now = time.perf_counter()
        ledger[2], mark = ledger[2] + now - mark, now
    elapsed = time.perf_counter() - start
    # One all-reduce for all counters: [batches, images/s of this rank, part sums..., gradient diagnostics...].
    totals = torch.cat(
        [torch.tensor([num_batches, seen / max(elapsed, 1e-9)], dtype=torch.float64, device=device), sums, diagnostics]
    )
    if world()[1] > 1:
        dist.all_reduce(totals)
    values = totals.tolist()
    result = {f"train_{name}": value / max(values[0], 1) for name, value in zip(names, values[2 : 2 + len(names)])}
    result["images_per_s"] = values[1]
    result["train_seconds"] = elapsed
    result["time_data_s"], result["time_teacher_s"], result["time_student_s"] = ledger
    if teacher_cache is not None:  # images whose teacher outputs were read from the cache, and computed here
        result["teacher_cache_hits"], result["teacher_cache_misses"] = teacher_cache.take_counts()
    if diagnosed:
        samples, rest = values[2 + len(names)], values[3 + len(names) :]
        result["train_grad_samples"] = samples
        if samples:
            for index, part in enumerate(diagnosed):
                result[f"train_grad_norm_{part}"] = rest[index] / samples
                result[f"train_grad_share_{part}"] = rest[len(diagnosed) + index] / samples
    return result


def _gather(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Concatenate each array across ranks (rank order)."""
    if world()[1] == 1:
        return arrays
    gathered: list = [None] * world()[1]
    dist.all_gather_object(gathered, arrays)
    return [np.concatenate([part[i] for part in gathered]) for i in range(len(arrays))]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    teacher: nn.Module | None = None,
    criterion: DistillationCriterion | None = None,
    dtype: torch.dtype | None = None,
    prefix: str = "",
    channels_last: bool | None = None,
) -> dict[str, float]:
    """Metrics of ``model`` on ``loader`` (built by :func:`make_loader` with ``train=False``).

    Predictions are gathered across ranks before the metrics are computed, so every rank returns the metrics
    of the whole split. With a ``criterion`` (and the teacher it needs), its loss parts are computed on this
    split too.

    Returns:
        ``{prefix + name: value}``: mAP, CP, CR, CF1, OP, OR, OF1 (and ``top3_*``, ``topk_true_*``) in percent,
        and the per-image loss parts (``loss``, ``bce``, ...).
    """
    model.eval()
    with_losses = criterion is not None and (teacher is not None or not criterion.needs_teacher)
    if criterion is not None:
        criterion.eval()
    names = ("loss", *loss_parts(criterion.method)) if with_losses else ()
    sums = np.zeros(len(names) + 1)  # [batches, part sums...]
    scores, targets_all, indices = [], [], []
    for images, targets, index in loader:
        images = _to_device(images, device, channels_last)
        targets = targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            output = model_forward(model, images, criterion.student_stages if with_losses else ())
            teacher_output = (
                model_forward(teacher, images, criterion.teacher_stages)
                if with_losses and teacher is not None
                else None
            )
            if with_losses:
                loss, parts = criterion(output, teacher_output, targets)
                sums += [1.0, loss.item(), *(parts[name].item() for name in names[1:])]
        scores.append(torch.sigmoid(output.logits.float()).cpu().numpy())
        targets_all.append(targets.cpu().numpy())
        indices.append(index.numpy())
    classes = len(loader.dataset.dataset.class_names)
    all_scores, all_targets, all_indices, all_sums = _gather(
        [
            np.concatenate(scores) if scores else np.zeros((0, classes), np.float32),
            np.concatenate(targets_all) if targets_all else np.zeros((0, classes), np.float32),
            np.concatenate(indices) if indices else np.zeros(0, np.int64),
            sums[None, :],
        ]
    )
    order = np.argsort(all_indices, kind="stable")
    metrics = multilabel_metrics(all_scores[order], all_targets[order])
    metrics.pop("AP")
    result = {prefix + name: float(value) for name, value in metrics.items()}
    totals = all_sums.sum(0)
    for name, value in zip(names, totals[1:]):
        result[prefix + name] = float(value) / max(totals[0], 1.0)
    return result


class Distiller:
    """One training run: a student (and an optional teacher), the data splits, a method and a recipe.

    ``run_epoch()`` trains the next epoch and evaluates val (and test); ``state_dict``/``load_state_dict`` make the
    run resumable from any epoch boundary. The method's :class:`~l2d.losses.DistillationCriterion` (``criterion``)
    may own trainable connectors: they are optimized and checkpointed with the student. Under a process group
    the student and the criterion are wrapped in DDP together (``model``); ``student`` is always the bare model.

    Args:
        student: the model to train (its weights are changed in place).
        teacher: a trained model, or None for BCE-only training (teachers themselves, the ``bce`` baseline).
        train_set / val_set / test_set: the splits (``test_set`` may be None).
        method: a key of :data:`l2d.losses.METHODS`.
        hparams: overrides of the method's defaults.
        recipe: the optimization settings.
        device: where to train.
        seed: seeds the data order.
        grad_share_every: measure each loss part's share of the student's gradient norm every this many optimizer
            steps (:func:`train_epoch`; 0: never). A diagnostic: it changes nothing that is learned.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        train_set: Dataset,
        val_set: Dataset,
        test_set: Dataset | None,
        method: str = "l2d",
        hparams: Mapping[str, float] | None = None,
        recipe: Recipe | None = None,
        device: torch.device | str = "cpu",
        seed: int = 0,
        grad_share_every: int = GRAD_SHARE_EVERY,
        teacher_cache: TeacherCache | None = None,
    ):
        self.recipe = recipe or Recipe()
        self.teacher_cache = teacher_cache
        self.grad_share_every = grad_share_every
        self.device = torch.device(device)
        self.method = method
        self.dtype = amp_dtype(self.device, self.recipe.amp)
        self.channels_last = use_channels_last(self.device, self.recipe.channels_last)
        self.teacher = teacher.to(self.device).eval() if teacher is not None else None
        if self.teacher is not None and self.channels_last:
            self.teacher = self.teacher.to(memory_format=torch.channels_last)
        if self.teacher is not None:
            for parameter in self.teacher.parameters():
                parameter.requires_grad_(False)
        self.criterion = DistillationCriterion(method, hparams, student, self.teacher)
        self.hparams = self.criterion.hparams
        self.student: nn.Module = student.to(self.device)
        self.criterion.to(self.device)
        if self.channels_last:
            self.student = self.student.to(memory_format=torch.channels_last)
            self.criterion.to(memory_format=torch.channels_last)
        step = TrainStep(self.student, self.criterion)
        self.model: nn.Module = step
        if world()[1] > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(step, device_ids=device_ids)
        self.train_loader = make_loader(
            train_set,
            self.recipe.batch_size,
            True,
            self.recipe.num_workers,
            seed,
            self.device,
            views_per_image=self.recipe.views_per_image,
        )
        self.val_loader = make_loader(
            val_set, self.recipe.batch_size, False, self.recipe.num_workers, device=self.device
        )
        self.test_loader = (
            make_loader(test_set, self.recipe.batch_size, False, self.recipe.num_workers, device=self.device)
            if test_set is not None
            else None
        )
        if len(self.train_loader) == 0:
            raise ValueError(f"the train split ({len(train_set)} images) gives no batch")
        # Student parameters first, then the connectors: a method without connectors has the optimizer layout of
        # a bare student, so checkpoints written before connectors existed still load.
        self.optimizer = build_optimizer(step, self.recipe)
        self.scheduler = build_scheduler(self.optimizer, self.recipe, len(self.train_loader))
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None
        self.seed = seed
        self.epoch = 0  # epochs completed

    def run_epoch(self, progress: ProgressFn | None = None, evaluate_test: bool = True) -> dict[str, float]:
        """Train the next epoch, then evaluate; returns ``epoch`` (1-based), ``train_*``, ``val_*``, ``test_*``, and
        the ledger of its time: ``time_data_s`` (waiting for the loader), ``time_teacher_s`` (the teacher's forward
        passes), ``time_student_s`` (the student's steps), ``time_eval_s`` (val and test), ``epoch_seconds`` (all)."""
        if self.epoch >= self.recipe.epochs:
            raise RuntimeError(f"all {self.recipe.epochs} epochs of the schedule are done")
        epoch = self.epoch + 1
        # Dropout draws from the global RNG: seeding it per epoch makes a run resumed at an epoch boundary identical
        # to one that never stopped. (Augmentation draws its own, per image: ViewSampler.)
        torch.manual_seed(self.seed * 100_003 + epoch)
        start = time.perf_counter()
        metrics: dict[str, float] = {"epoch": epoch}
        metrics.update(
            train_epoch(
                self.model,
                self.teacher,
                self.train_loader,
                self.optimizer,
                self.scheduler,
                self.criterion,
                self.device,
                epoch,
                self.scaler,
                self.dtype,
                progress,
                self.channels_last,
                self.grad_share_every,
                self.epoch * len(self.train_loader),
                self.teacher_cache,
            )
        )
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        evaluating = time.perf_counter()
        metrics.update(
            evaluate(
                self.student,
                self.val_loader,
                self.device,
                self.teacher,
                self.criterion,
                self.dtype,
                prefix="val_",
                channels_last=self.channels_last,
            )
        )
        if evaluate_test and self.test_loader is not None:
            metrics.update(
                evaluate(
                    self.student,
                    self.test_loader,
                    self.device,
                    dtype=self.dtype,
                    prefix="test_",
                    channels_last=self.channels_last,
                )
            )
        now = time.perf_counter()
        metrics["time_eval_s"] = now - evaluating
        metrics["epoch_seconds"] = now - start
        self.epoch = epoch
        return metrics

    def state_dict(self) -> dict:
        """Everything needed to continue after this epoch (model, connectors, optimizer, schedule, scaler, epoch)."""
        state = {
            "epoch": self.epoch,
            "model": self.student.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "recipe": asdict(self.recipe),
            "method": self.method,
            "hparams": dict(self.hparams),
        }
        if self.criterion.state_dict():
            state["criterion"] = self.criterion.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`; the method, hparams and recipe must match (nanoGPT-style check)."""
        for key, mine in (("method", self.method), ("hparams", dict(self.hparams))):
            if state.get(key) != mine:
                raise ValueError(f"checkpoint {key} {state.get(key)!r} differs from this run's {mine!r}")
        if not recipe_matches(state.get("recipe", {}), self.recipe):
            raise ValueError(
                f"checkpoint recipe {state.get('recipe')!r} differs from this run's {asdict(self.recipe)!r}"
            )
        own = self.criterion.state_dict()
        if own and "criterion" not in state:
            raise ValueError(f"checkpoint lacks the trainable modules of method {self.method!r}")
        self.student.load_state_dict(state["model"])
        if own:
            self.criterion.load_state_dict(state["criterion"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
