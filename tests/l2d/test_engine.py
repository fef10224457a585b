"""The engine: one epoch in one process and under a 2-process gloo group, NaN detection, resume, optimizer."""

import copy
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from l2d.data import build_dataset
from l2d.engine import Distiller, NonFiniteLossError, Recipe, build_optimizer
from l2d.models import ModelOutput, build_model

TINY = dict(image_size=16)


def _splits(train=96, val=40, test=40):
    return (
        build_dataset("mosaic-digits", split="train", size=train, **TINY),
        build_dataset("mosaic-digits", split="val", size=val, **TINY),
        build_dataset("mosaic-digits", split="test", size=test, **TINY),
    )


def _model(seed=0, name="test_resnet"):
    torch.manual_seed(seed)
    return build_model(name, 10, embed_dim=32)


def test_one_epoch_single_process_reports_everything():
    train, val, test = _splits()
    distiller = Distiller(
        _model(1), _model(2).eval(), train, val, test, "l2d", recipe=Recipe(epochs=2, batch_size=16, lr=1e-3)
    )
    metrics = distiller.run_epoch()
    assert metrics["epoch"] == 1
    for name in (
        "train_total",
        "train_bce",
        "train_mld",
        "train_cd",
        "train_id",
        "images_per_s",
        "val_mAP",
        "val_loss",
        "val_mld",
        "test_mAP",
        "test_CF1",
        "test_OF1",
        "lr",
    ):
        assert np.isfinite(metrics[name]), name
    assert metrics["images_per_s"] > 0
    assert 0 <= metrics["val_mAP"] <= 100
    # The time ledger: the loader, the teacher and the student share the training loop; evaluation the rest.
    data, teacher, student = metrics["time_data_s"], metrics["time_teacher_s"], metrics["time_student_s"]
    assert data > 0 and teacher > 0 and student > 0 and metrics["time_eval_s"] > 0
    assert data + teacher + student == pytest.approx(metrics["train_seconds"], rel=0.02)
    spent = metrics["train_seconds"] + metrics["time_eval_s"]
    assert spent <= metrics["epoch_seconds"] and spent == pytest.approx(metrics["epoch_seconds"], rel=0.05)
    alone = Distiller(_model(1), None, train, val, test, "bce", recipe=Recipe(epochs=2, batch_size=16, lr=1e-3))
    assert alone.run_epoch()["time_teacher_s"] == 0.0  # no teacher, no teacher time


def test_optimizer_decays_weights_only():
    model = _model()
    optimizer = build_optimizer(model, Recipe(weight_decay=1e-4))
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    assert any(p is model.head.classifier_bias for p in no_decay["params"])
    assert not any(p is model.head.class_queries.weight for g in optimizer.param_groups for p in g["params"])


class _Exploding(nn.Module):
    """A model whose logits turn NaN from its second call on."""

    def __init__(self):
        super().__init__()
        self.inner = _model()
        self.calls = 0

    def forward(self, images):
        output = self.inner(images)
        self.calls += 1
        if self.calls >= 2 and self.training:
            return ModelOutput(output.logits * float("nan"), output.label_embeddings, output.features)
        return output


def test_nan_loss_stops_with_epoch_and_batch():
    train, val, _ = _splits()
    distiller = Distiller(_Exploding(), None, train, val, None, "bce", recipe=Recipe(epochs=1, batch_size=16))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch 1, batch 2/6"):
        distiller.run_epoch()


def test_resume_continues_exactly():
    train, val, _ = _splits()
    recipe = Recipe(epochs=3, batch_size=16, lr=1e-3)
    straight = Distiller(_model(3), None, train, val, None, "bce", recipe=recipe, seed=5)
    for _ in range(3):
        last = straight.run_epoch()
    first = Distiller(_model(3), None, train, val, None, "bce", recipe=recipe, seed=5)
    first.run_epoch()
    state = first.state_dict()
    resumed = Distiller(_model(99), None, train, val, None, "bce", recipe=recipe, seed=5)
    resumed.load_state_dict(state)
    resumed.run_epoch()
    again = resumed.run_epoch()
    assert again["epoch"] == 3
    assert again["val_mAP"] == pytest.approx(last["val_mAP"], abs=1e-6)
    assert again["train_total"] == pytest.approx(last["train_total"], rel=1e-5)
    with pytest.raises(ValueError, match="checkpoint method 'bce' differs"):
        Distiller(_model(), _model(), train, val, None, "mld", recipe=recipe).load_state_dict(state)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, cache: str, results):
    os.environ["L2D_SWEEP_CACHE"] = cache
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        train, val, test = _splits(train=64, val=37, test=23)
        distiller = Distiller(
            _model(7),
            _model(8).eval(),
            train,
            val,
            test,
            "l2d",
            recipe=Recipe(epochs=1, batch_size=16, lr=1e-3),
            seed=1,
        )
        assert isinstance(distiller.model, nn.parallel.DistributedDataParallel)
        assert len(distiller.train_loader) == 4  # 64 images: 32 per rank, in batches of 16 / 2 = 8
        metrics = distiller.run_epoch()
        weights = next(distiller.student.parameters()).detach().clone()
        results[rank] = {"metrics": metrics, "weights": weights, "val_size": len(distiller.val_loader.sampler)}
    finally:
        dist.destroy_process_group()


def test_one_ddp_epoch_with_two_gloo_processes(_isolated_cache):
    _splits(train=64, val=37, test=23)  # build the cache once, before the workers race for it
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(_isolated_cache), results), nprocs=2, join=True)
    first, second = results[0], results[1]
    # Gradients are averaged across ranks: both ranks end the epoch with identical weights.
    assert torch.equal(first["weights"], second["weights"])
    # Predictions are gathered before the metrics: both ranks see the metrics of the whole split.
    assert first["metrics"]["val_mAP"] == second["metrics"]["val_mAP"]
    assert first["val_size"] + second["val_size"] == 37
    assert first["metrics"]["images_per_s"] == pytest.approx(second["metrics"]["images_per_s"])
    # The gradient diagnostics ran on the first step, on both ranks, and were averaged over them.
    shares = [first["metrics"][f"train_grad_share_{p}"] for p in ("bce", "mld", "cd", "id")]
    assert first["metrics"]["train_grad_samples"] == 2 and sum(shares) == pytest.approx(1.0)


def test_a_methods_connectors_are_trained_and_checkpointed():
    train, val, test = _splits()
    recipe = Recipe(epochs=3, batch_size=16, lr=1e-3)
    teacher = _model(2, "test_efficientnet").eval()
    distiller = Distiller(_model(1), teacher, train, val, test, "hint", recipe=recipe, seed=2)
    connector = distiller.criterion.connectors["hint"]
    before = {name: value.detach().clone() for name, value in connector.state_dict().items()}
    optimized = {id(p) for group in distiller.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimized for p in connector.parameters())
    metrics = distiller.run_epoch()
    assert metrics["train_hint"] > 0 and np.isfinite(metrics["val_hint"])
    assert not torch.equal(before["conv.weight"], connector.conv.weight)  # trained
    assert not torch.equal(before["norm.running_mean"], connector.norm.running_mean)
    state = copy.deepcopy(distiller.state_dict())  # the live tensors change in the next epoch
    torch.testing.assert_close(state["criterion"]["connectors.hint.conv.weight"], connector.conv.weight)
    straight = distiller.run_epoch()

    resumed = Distiller(_model(50), teacher, train, val, test, "hint", recipe=recipe, seed=2)
    resumed.load_state_dict(state)
    torch.testing.assert_close(
        resumed.criterion.connectors["hint"].conv.weight, state["criterion"]["connectors.hint.conv.weight"]
    )
    again = resumed.run_epoch()
    assert again["train_hint"] == pytest.approx(straight["train_hint"], rel=1e-5)
    assert again["val_mAP"] == pytest.approx(straight["val_mAP"], abs=1e-6)
    without = {k: v for k, v in state.items() if k != "criterion"}
    with pytest.raises(ValueError, match="lacks the trainable modules of method 'hint'"):
        Distiller(_model(50), teacher, train, val, test, "hint", recipe=recipe, seed=2).load_state_dict(without)


def test_gradient_shares_are_a_diagnostic_that_changes_nothing():
    train, val, test = _splits()
    runs = {}
    for every in (0, 1):
        distiller = Distiller(
            _model(1),
            _model(2).eval(),
            train,
            val,
            test,
            "l2d",
            seed=3,
            recipe=Recipe(epochs=1, batch_size=16, lr=1e-3),
            grad_share_every=every,
        )
        runs[every] = (distiller.run_epoch(), [p.detach().clone() for p in distiller.student.parameters()])
    (plain, plain_weights), (diagnosed, diagnosed_weights) = runs[0], runs[1]
    assert all(torch.equal(a, b) for a, b in zip(plain_weights, diagnosed_weights))
    assert plain["train_total"] == diagnosed["train_total"]
    assert not any(k.startswith("train_grad_") for k in plain)
    assert diagnosed["train_grad_samples"] == len(train) // 16  # every step
    shares = {p: diagnosed[f"train_grad_share_{p}"] for p in ("bce", "mld", "cd", "id")}
    assert sum(shares.values()) == pytest.approx(1.0) and all(0 <= v <= 1 for v in shares.values())
    assert all(diagnosed[f"train_grad_norm_{p}"] > 0 for p in shares)
    # BCE alone has one part: nothing to share out.
    alone = Distiller(
        _model(1), None, train, val, test, "bce", recipe=Recipe(epochs=1, batch_size=16, lr=1e-3), grad_share_every=1
    ).run_epoch()
    assert "train_grad_samples" not in alone


def test_channels_last_on_cpu():
    train, val, test = _splits()
    distiller = Distiller(
        _model(1),
        _model(2).eval(),
        train,
        val,
        test,
        "mld",
        recipe=Recipe(epochs=1, batch_size=16, lr=1e-3, channels_last=True),
    )
    conv = next(m for m in distiller.student.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    metrics = distiller.run_epoch()
    assert np.isfinite(metrics["val_mAP"])
    # A checkpoint of a channels-last run resumes under the default layout (the layout is not part of the recipe).
    other = Distiller(
        _model(1), _model(2).eval(), train, val, test, "mld", recipe=Recipe(epochs=1, batch_size=16, lr=1e-3)
    )
    other.load_state_dict(distiller.state_dict())


def _epoch_batches(loader, epoch: int, between=None) -> list[torch.Tensor]:
    loader.sampler.set_epoch(epoch)
    batches = []
    for images, *_ in loader:
        batches.append(images)
        if between is not None:
            between()  # what a model's forward pass draws from the global generator (dropout, a drop-path rate)
    return batches


def test_a_view_is_a_function_of_the_seed_the_epoch_and_the_image():
    """Every run with the same data seed sees the same view of each image in each epoch, whatever its model draws
    from the global generator between batches and whatever its loader workers: trials of one seed are paired by view,
    and the teacher's output for a view is the same in all of them."""
    from l2d.data import build_dataset
    from l2d.engine import make_loader

    dataset = build_dataset("mosaic-digits", None, "train", 16, size=24)
    plain = _epoch_batches(make_loader(dataset, 8, train=True, seed=3), 1)
    drawing = _epoch_batches(make_loader(dataset, 8, train=True, seed=3), 1, between=lambda: torch.rand(1000))
    workers = _epoch_batches(make_loader(dataset, 8, train=True, num_workers=2, seed=3), 1)
    for a, b, c in zip(plain, drawing, workers, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    loader = make_loader(dataset, 8, train=True, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(_epoch_batches(loader, 1), plain))  # an epoch read again
    assert not torch.equal(torch.cat(_epoch_batches(loader, 2)), torch.cat(plain))  # the next epoch: other views
    assert not torch.equal(torch.cat(_epoch_batches(make_loader(dataset, 8, train=True, seed=4), 1)), torch.cat(plain))


def test_stored_views_replay_the_first_k_epochs_views_in_a_new_order():
    """views_per_image K: epoch e shows the views of epoch (e - 1) % K + 1 (each image's pixels those of that epoch
    under fresh views), in the order of epoch e; 0 draws a new view every epoch."""
    from l2d.data import build_dataset
    from l2d.engine import make_loader

    dataset = build_dataset("mosaic-digits", None, "train", 16, size=24)

    def views(loader, epoch):  # each image's view in an epoch, by image
        loader.sampler.set_epoch(epoch)
        return {int(i): image for images, _, indices in loader for image, i in zip(images, indices)}

    def order(loader, epoch):
        loader.sampler.set_epoch(epoch)
        return [int(i) for _, _, indices in loader for i in indices]

    fresh = make_loader(dataset, 8, train=True, seed=3)
    replayed = make_loader(dataset, 8, train=True, seed=3, views_per_image=2)
    first, second = views(fresh, 1), views(fresh, 2)
    for epoch, shown in ((1, first), (2, second), (3, first), (4, second), (5, first)):
        got = views(replayed, epoch)
        assert got.keys() == shown.keys() and all(torch.equal(got[i], shown[i]) for i in got), epoch
    assert not all(torch.equal(first[i], second[i]) for i in first)  # two views, not one
    assert order(replayed, 3) == order(fresh, 3) != order(replayed, 1)  # the order is the epoch's own
    third = views(fresh, 3)
    assert not all(torch.equal(third[i], first[i]) for i in first)  # without replay, epoch 3 is new


def test_drawing_a_view_leaves_the_global_generator_alone():
    from l2d.data import build_dataset
    from l2d.engine import make_loader

    loader = make_loader(build_dataset("mosaic-digits", None, "train", 16, size=16), 8, train=True, seed=0)
    torch.manual_seed(11)
    expected = torch.rand(4)
    torch.manual_seed(11)
    _epoch_batches(loader, 1)  # Cutout and RandAugment drew from each view's own seed
    assert torch.equal(torch.rand(4), expected)
