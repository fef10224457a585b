"""A teacher fine-tuned elsewhere, used as it is (``teacher_epochs`` 0): a plain timm classifier trained outside the
package with ordinary timm code and saved as safetensors, and a checkpoint this project wrote."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from l2d.data import manifest as manifest_module
from l2d.models import adopt_checkpoint, build_model
from l2d.run import RunConfig, build_run, fit, resolve
from l2d.teachers import TeacherStore
from l2d.weights import WeightsError
from tests.userdata import csv_dataset, fine_tune_elsewhere

SIZE = 32  # the size fine_tune_elsewhere trains at


@pytest.fixture(autouse=True)
def _fresh_cache():
    manifest_module._LOADED.clear()
    yield
    manifest_module._LOADED.clear()


def _config(files: dict, checkpoint: str, method: str) -> RunConfig:
    return RunConfig(
        dataset="manifest",
        dataset_options={k: v for k, v in files.items() if k != "format"},
        image_size=SIZE,
        teacher="test_resnet",
        teacher_weights=checkpoint,
        teacher_epochs=0,
        teacher_head_epochs=2,
        student="test_efficientnet",
        method=method,
        epochs=1,
        batch_size=8,
        embed_dim=16,
        lr=2e-3,
        teacher_lr=2e-3,
        device="cpu",
    )


def test_a_plain_timm_classifier_is_the_teacher_as_it_is_for_mld_and_l2d(tmp_path):
    files = csv_dataset(tmp_path)
    checkpoint = fine_tune_elsewhere(tmp_path, files)
    store = TeacherStore(str(tmp_path / "teachers"))

    run = build_run(_config(files, checkpoint, "mld"), teacher_store=store)
    card = run.teacher_card
    assert card["adopted"] is True and card["logits"] == "classifier" and card["epochs"] == 0
    assert 0 <= card["val_mAP"] <= 100 and 0 <= card["test_mAP"] <= 100
    assert card["head_epochs"] == 2 and len(card["history"]) == 2 and card["head_val_mAP"] is not None
    # The logits MLD distills are the checkpoint's own classifier's, on the input timm normalised it with.
    original = timm.create_model("test_resnet", num_classes=3)
    from safetensors.torch import load_file

    original.load_state_dict(load_file(checkpoint))
    images = torch.rand(4, 3, SIZE, SIZE)
    config = timm.data.resolve_data_config(model=original)
    normalised = (images - torch.tensor(config["mean"]).view(1, 3, 1, 1)) / torch.tensor(config["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(run.teacher(images).logits, original.eval()(normalised), rtol=1e-4, atol=1e-5)
        # Nothing of the backbone moved while the head was fitted (frozen, and in eval mode).
        for name, tensor in original.state_dict().items():
            torch.testing.assert_close(run.teacher.backbone.state_dict()[name], tensor, msg=name)
    history = fit(run)
    assert len(history) == 1 and np.isfinite(history[0]["val_mAP"])

    # L2D needs label-wise embeddings: the fitted head's, from the store (the same key: nothing fitted again).
    l2d = build_run(_config(files, checkpoint, "l2d"), teacher_store=store)
    assert l2d.teacher_card["digest"] == card["digest"]
    with torch.no_grad():
        output = l2d.teacher(images)
    assert output.label_embeddings.shape == (4, 3, 16)
    torch.testing.assert_close(output.logits, original(normalised), rtol=1e-4, atol=1e-5)
    fresh = build_model("test_resnet", 3, 16, own_classifier=True)
    assert not torch.equal(
        fresh.head.state_dict()["token_projection.weight"], l2d.teacher.head.state_dict()["token_projection.weight"]
    )
    history = fit(l2d)
    assert len(history) == 1 and history[0]["train_cd"] >= 0 and history[0]["train_id"] >= 0


def test_a_checkpoint_this_project_wrote_is_loaded_whole(tmp_path):
    torch.manual_seed(3)
    model = build_model("test_resnet", 3, 16)
    path = tmp_path / "student.pt"
    torch.save(model.state_dict(), path)
    adopted = adopt_checkpoint("test_resnet", 3, 16, str(path))
    assert not adopted.own_classifier
    images = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(adopted.eval()(images).logits, model.eval()(images).logits)


def test_a_checkpoint_that_does_not_fit_names_the_tensor_and_both_shapes(tmp_path):
    from safetensors.torch import save_file

    net = timm.create_model("test_resnet", num_classes=5)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "five.safetensors"))
    with pytest.raises(WeightsError, match=r"tensor fc.weight is \(5, \d+\) in the file, \(3, \d+\) in the model"):
        adopt_checkpoint("test_resnet", 3, 16, str(tmp_path / "five.safetensors"))
    other = timm.create_model("test_efficientnet", num_classes=3)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "other.safetensors"))
    with pytest.raises(WeightsError, match=r"does not fit test_resnet: it lacks \d+ of its \d+ tensors"):
        adopt_checkpoint("test_resnet", 3, 16, str(tmp_path / "other.safetensors"))


def test_teacher_epochs_0_needs_the_checkpoint_file():
    from l2d.run import train_teacher

    with pytest.raises(ValueError, match=r"teacher_epochs 0 uses the teacher as it is: give its checkpoint file"):
        train_teacher(RunConfig(teacher="test_resnet", teacher_epochs=0))
    with pytest.raises(ValueError, match=r"teacher_epochs: -1 is out of range; allowed: an integer >= 0"):
        resolve(RunConfig(teacher="test_resnet", teacher_epochs=-1))


def _classifier_file(folder, names: list[str] | None, how: str = "metadata") -> str:
    """A plain timm classifier of test_resnet over ``len(names)`` classes whose names are given ``how``."""
    import json

    from safetensors.torch import save_file

    torch.manual_seed(5)
    net = timm.create_model("test_resnet", num_classes=3)
    tensors = {k: v.contiguous() for k, v in net.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    if how == "pth":
        path = folder / "teacher.pth"
        torch.save({"state_dict": tensors, "class_names": names}, path)
        return str(path)
    path = folder / "model.safetensors"
    metadata = {"class_names": json.dumps(names)} if how == "metadata" and names else None
    save_file(tensors, str(path), metadata=metadata)
    if how == "config.json":  # what timm's push_to_hub writes beside the weights
        (folder / "config.json").write_text(json.dumps({"architecture": "test_resnet", "label_names": names}))
    if how == "card.json":  # an export or a teacher-store entry of this project
        (folder / "card.json").write_text(json.dumps({"class_names": names}))
    return str(path)


@pytest.mark.parametrize("how", ["metadata", "pth", "config.json", "card.json"])
def test_the_class_names_a_checkpoint_carries_are_read_from_each_place(tmp_path, how):
    from l2d.weights import checkpoint_class_names

    path = _classifier_file(tmp_path / how, ["dog", "car", "cat"], how)
    names, where = checkpoint_class_names(path)
    assert names == ["dog", "car", "cat"] and (how in where or "class_names" in where)
    assert checkpoint_class_names(_classifier_file(tmp_path / "none", None, "none")) is None


def test_the_class_order_is_checked_by_name():
    from l2d.weights import class_order

    def order(names, classes):
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as folder:
            return class_order(_classifier_file(Path(folder), names), classes)

    same, said = order(["car", "cat", "dog"], ["car", "cat", "dog"])
    assert (
        same == [0, 1, 2]
        and said.startswith("by name (")
        and said.endswith("(metadata class_names)): the dataset's order")
    )
    permuted, said = order(["dog", "car", "cat"], ["car", "cat", "dog"])
    assert permuted == [1, 2, 0] and "another order (the dataset's class 0, 'car', is the checkpoint's row 1)" in said
    assert order(None, ["a", "b", "c"]) == (None, "by count only (the checkpoint names no classes)")
    with pytest.raises(
        WeightsError,
        match=r"lacks 1 of the dataset's 3 classes \(first: 'dog'\) and has 1 the "
        r"dataset does not \(first: 'bird'\)",
    ):
        order(["car", "bird", "cat"], ["car", "cat", "dog"])
    with pytest.raises(WeightsError, match=r"names the class 'cat' twice"):
        order(["cat", "car", "cat"], ["car", "cat", "dog"])


def test_a_classifier_in_another_order_is_put_in_the_datasets(tmp_path):
    """The checkpoint lists dog, car, cat; the dataset car, cat, dog: the adopted teacher's logit i is the dataset's
    class i (without the reordering, logit 0 would be the checkpoint's dog)."""
    import json

    from safetensors.torch import load_file, save_file

    from l2d.run import adopt_teacher

    files = csv_dataset(tmp_path)
    plain = fine_tune_elsewhere(tmp_path, files)  # rows in the dataset's order: car, cat, dog
    tensors = load_file(plain)
    rows = [2, 0, 1]  # the checkpoint's row j holds the dataset's class rows[j]: dog, car, cat
    permuted = {k: (v[rows].contiguous() if k.startswith("fc.") else v) for k, v in tensors.items()}
    path = tmp_path / "elsewhere" / "teacher.safetensors"
    path.parent.mkdir()
    save_file(permuted, str(path), metadata={"class_names": json.dumps(["dog", "car", "cat"])})

    model, card = adopt_teacher(_config(files, str(path), "mld"))
    assert "another order" in card["class_order"] and "rows put in the dataset's order" in card["class_order"]
    _assert_logits_in_the_datasets_order(model, tensors)


def test_a_whole_model_in_another_order_is_refused_with_the_fix(tmp_path):
    import json

    from l2d.run import adopt_teacher

    files = csv_dataset(tmp_path)
    model = build_model("test_resnet", 3, 16)
    folder = tmp_path / "export"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "student.pt")
    (folder / "card.json").write_text(json.dumps({"class_names": ["dog", "car", "cat"]}))
    with pytest.raises(
        WeightsError,
        match=r"in another order than the dataset's.*list the dataset's classes in the "
        r"checkpoint's order",
    ):
        adopt_teacher(_config(files, str(folder / "student.pt"), "mld"))


def test_a_checkpoint_in_object_storage_is_fetched_once_with_its_class_names(s3_server, tmp_path, monkeypatch):
    """``s3://`` weights (a local S3 server, moto): fetched once per node into the cache with the config.json
    beside it (timm's push_to_hub layout: its label_names put the classifier in the dataset's order)."""
    import json

    import boto3
    from safetensors.torch import load_file, save_file

    from l2d.run import adopt_teacher
    from l2d.weights import WeightsNotFoundError, fetch_remote

    monkeypatch.setenv("L2D_SWEEP_CACHE", str(tmp_path / "cache"))
    files = csv_dataset(tmp_path)
    tensors = load_file(fine_tune_elsewhere(tmp_path, files))
    rows = [2, 0, 1]  # dog, car, cat
    permuted = {k: (v[rows].contiguous() if k.startswith("fc.") else v) for k, v in tensors.items()}
    save_file(permuted, str(tmp_path / "model.safetensors"))
    client = boto3.client("s3", endpoint_url=f"http://{s3_server}")
    client.upload_file(str(tmp_path / "model.safetensors"), "sweeps", "teachers/mine/model.safetensors")
    labels = json.dumps({"architecture": "test_resnet", "label_names": ["dog", "car", "cat"]})
    client.put_object(Bucket="sweeps", Key="teachers/mine/config.json", Body=labels.encode())
    uri = f"s3://sweeps/teachers/mine/model.safetensors?endpoint_override={s3_server}&scheme=http"

    model, card = adopt_teacher(_config(files, uri, "mld"))
    assert (
        "config.json (label_names)" in card["class_order"] and "rows put in the dataset's order" in card["class_order"]
    )
    local = fetch_remote(uri)
    assert local.startswith(str(tmp_path / "cache" / "weights")) and (tmp_path / "cache").exists()
    assert load_file(local).keys() == permuted.keys()
    client.delete_object(Bucket="sweeps", Key="teachers/mine/config.json")  # the cached copy is what is read
    assert fetch_remote(uri) == local
    _assert_logits_in_the_datasets_order(model, tensors)
    with pytest.raises(WeightsNotFoundError, match=r"weights 's3://sweeps/teachers/none.safetensors.*': no such file"):
        fetch_remote(f"s3://sweeps/teachers/none.safetensors?endpoint_override={s3_server}&scheme=http")


def _assert_logits_in_the_datasets_order(model, tensors: dict) -> None:
    """``model``'s logits are those of the plain classifier ``tensors`` (rows in the dataset's order), on its input
    normalised as timm's data config says."""
    original = timm.create_model("test_resnet", num_classes=3)
    original.load_state_dict(tensors)
    images = torch.rand(2, 3, SIZE, SIZE)
    config = timm.data.resolve_data_config(model=original)
    normalised = (images - torch.tensor(config["mean"]).view(1, 3, 1, 1)) / torch.tensor(config["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(images).logits, original.eval()(normalised), rtol=1e-4, atol=1e-5)
