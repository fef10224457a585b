"""Initial weights, offline: local files (timm's own loader), the local Hugging Face cache, and their identity in
the teacher key; the official teacher schedule (a OneCycle longer than the epochs run)."""

import os

import pytest
import timm
import torch
from safetensors.torch import save_file

from l2d.models import build_model
from l2d.weights import WeightsError, WeightsNotFoundError, identity


def _source(name: str, tmp_path, suffix: str = ".pth"):
    torch.manual_seed(1)
    model = timm.create_model(name, pretrained=False)  # with its ImageNet-sized classifier, as a hub file has
    path = tmp_path / f"{name}{suffix}"
    if suffix == ".safetensors":
        save_file(model.state_dict(), str(path))
    else:
        torch.save(model.state_dict(), path)
    return model, path


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_local_file_loads_timms_way(tmp_path, suffix):
    source, path = _source("test_resnet", tmp_path, suffix)
    model = build_model("test_resnet", 5, 16, weights=str(path))
    for name, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, source.state_dict()[name])  # every tensor, the classifier dropped
    assert identity(str(path), "test_resnet") == identity(str(path), "test_resnet") and len(identity(str(path),
                                                                                                     "x")) == 16


def test_weights_of_another_model_are_refused(tmp_path):
    _, path = _source("test_efficientnet", tmp_path)
    with pytest.raises(WeightsError, match="weights do not fit test_resnet"):
        build_model("test_resnet", 5, 16, weights=str(path))
    with pytest.raises(WeightsNotFoundError, match="file not found"):
        build_model("test_resnet", 5, 16, weights=str(tmp_path / "missing.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="not a readable weights file"):
        build_model("test_resnet", 5, 16, weights=str(tmp_path / "junk.safetensors"))


def _fill_hub_cache(cache, repo: str, path) -> None:
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>/model.safetensors}."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    os.link(path, folder / "snapshots" / commit / "model.safetensors")


def test_hub_weights_come_from_the_local_cache_only(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match=r"timm/test_resnet\.\w+ is not in the local Hugging Face cache .* "
                                                   r"run .huggingface-cli download timm/test_resnet"):
        build_model("test_resnet", 5, 16, weights="timm")
    source, path = _source("test_resnet", tmp_path, ".safetensors")
    repo = timm.models.get_pretrained_cfg("test_resnet").hf_hub_id
    _fill_hub_cache(cache, repo, path)
    for spelling in ("timm", f"timm:{repo.split('.', 1)[1]}", f"hf-hub:{repo}"):
        model = build_model("test_resnet", 5, 16, weights=spelling)
        for name, value in model.backbone.state_dict().items():
            torch.testing.assert_close(value, source.state_dict()[name])
    with pytest.raises(WeightsError, match="timm has no pretrained weights 'test_resnet.nonsense'"):
        build_model("test_resnet", 5, 16, weights="timm:nonsense")


def test_the_teachers_weights_and_schedule_are_part_of_its_key(tmp_path):
    from l2d.run import RunConfig, teacher_key

    _, path = _source("test_resnet", tmp_path)
    base = RunConfig(teacher="test_resnet", teacher_epochs=2, image_size=16, embed_dim=16)
    plain = teacher_key(base, "data")
    weighted = teacher_key(base.replace(teacher_weights=str(path)), "data")
    assert weighted.weights == identity(str(path), "test_resnet") and weighted.digest() != plain.digest()
    assert plain.as_dict()["weights"] == ""  # a random start keeps the digest keys had before weights existed
    scheduled = teacher_key(base.replace(teacher_schedule_epochs=8), "data")
    assert scheduled.recipe["schedule_epochs"] == 8 and scheduled.digest() != plain.digest()


def test_a_run_stopped_before_its_schedule_ends_follows_the_longer_schedule():
    from l2d.engine import Recipe, build_optimizer, build_scheduler

    def learning_rates(recipe, steps):
        optimizer = build_optimizer(torch.nn.Linear(2, 2), recipe)
        scheduler = build_scheduler(optimizer, recipe, steps_per_epoch=5)
        rates = []
        for _ in range(steps):
            optimizer.step()
            scheduler.step()
            rates.append(scheduler.get_last_lr()[0])
        return rates

    stopped = learning_rates(Recipe(epochs=3, lr=1e-3, schedule_epochs=8), 15)
    full = learning_rates(Recipe(epochs=8, lr=1e-3), 15)
    assert stopped == pytest.approx(full)  # the first 3 of 8 epochs, not a compressed 3-epoch cycle
    assert stopped != pytest.approx(learning_rates(Recipe(epochs=3, lr=1e-3), 15))
    with pytest.raises(ValueError, match="schedule_epochs .2. must be >= epochs .3."):
        Recipe(epochs=3, schedule_epochs=2)
