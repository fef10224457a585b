"""The teacher store: train once, load afterwards, atomic writes, two processes at once."""

import json
import multiprocessing

import pytest
import torch

from l2d.run import RunConfig, teacher_key, train_teacher
from l2d.teachers import TeacherKey, TeacherStore

TINY_RECIPE = {"epochs": 1, "batch_size": 16, "lr": 1e-3, "weight_decay": 1e-4, "pct_start": 0.2}
TINY_RUN = RunConfig(
    dataset="mosaic-digits",
    dataset_options={"size": 64},
    image_size=16,
    embed_dim=32,
    teacher="test_resnet",
    teacher_epochs=1,
    teacher_lr=1e-3,
    batch_size=16,
)


def _key(**changes) -> TeacherKey:
    fields = dict(
        dataset="mosaic-digits",
        backbone="test_resnet",
        image_size=16,
        embed_dim=32,
        recipe=dict(TINY_RECIPE),
        seed=0,
        dataset_options={"size": 64},
        data_fingerprint="f",
    )
    fields.update(changes)
    return TeacherKey(**fields)


def test_the_run_config_gives_the_key():
    assert teacher_key(TINY_RUN, "f") == _key()
    assert teacher_key(TINY_RUN.replace(seed=3), "f") == _key(seed=3)
    # The student's settings are not the teacher's.
    assert teacher_key(TINY_RUN.replace(student="resnet18", lr=0.5, epochs=9, method="kd"), "f") == _key()
    # Other data under the same settings is another teacher.
    assert _key(data_fingerprint="g").digest() != _key().digest()


def test_trained_once_then_loaded(tmp_path):
    store = TeacherStore(str(tmp_path / "store"))
    calls = []

    def train():
        calls.append(1)
        return train_teacher(TINY_RUN)

    model, card, trained = store.get_or_train(_key(), 10, train)
    assert trained and len(calls) == 1
    for field in ("val_mAP", "test_mAP", "epochs", "wall_time_s", "parameters", "key", "digest"):
        assert field in card
    assert card["key"]["backbone"] == "test_resnet" and card["epochs"] == 1
    loaded, loaded_card, trained_again = store.get_or_train(_key(), 10, train)
    assert not trained_again and len(calls) == 1
    assert loaded_card["digest"] == card["digest"]
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    # Any change of the key is another teacher.
    assert store.card(_key(seed=1)) is None
    assert store.card(_key(recipe={**TINY_RECIPE, "lr": 2e-3})) is None
    assert _key(recipe={**TINY_RECIPE, "num_workers": 4}).digest() == _key().digest()
    files = sorted(p.name for p in (tmp_path / "store" / card["digest"]).iterdir())
    assert files == ["card.json", "model.pt"]


def test_a_failed_training_stores_nothing(tmp_path):
    store = TeacherStore(str(tmp_path / "store"))

    def train():
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        store.get_or_train(_key(), 10, train)
    assert store.card(_key()) is None
    with pytest.raises(KeyError, match="not in"):
        store.load(_key(), 10)


def _ask(store_path, cache, queue):
    import os

    os.environ["L2D_SWEEP_CACHE"] = cache
    torch.set_num_threads(1)
    store = TeacherStore(store_path)
    _, card, trained = store.get_or_train(_key(), 10, lambda: train_teacher(TINY_RUN))
    queue.put((card["digest"], trained))


def test_two_processes_asking_for_the_same_teacher(tmp_path, _isolated_cache):
    from l2d.data import build_dataset

    for split in ("train", "val", "test"):
        build_dataset("mosaic-digits", split=split, image_size=16, size=64)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    store_path = str(tmp_path / "store")
    workers = [context.Process(target=_ask, args=(store_path, str(_isolated_cache), queue)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
        assert worker.exitcode == 0
    answers = [queue.get(timeout=5) for _ in range(2)]
    assert answers[0][0] == answers[1][0]
    folder = tmp_path / "store" / answers[0][0]
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "model.pt"]  # no temporary file left
    json.loads((folder / "card.json").read_text())
    model, _ = TeacherStore(store_path).load(_key(), 10)
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("damaged", ["model.pt", "card.json"])
def test_an_unreadable_teacher_is_set_aside_and_trained_again(tmp_path, damaged, caplog):
    store = TeacherStore(str(tmp_path / "store"))
    store.get_or_train(_key(), 10, lambda: train_teacher(TINY_RUN))
    path = tmp_path / "store" / _key().digest() / damaged
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # truncated
    if damaged == "card.json":
        from l2d.teachers import CorruptTeacherError

        with pytest.raises(CorruptTeacherError, match=f"{damaged}: unreadable teacher card"):
            store.card(_key())
        assert not store.has(_key())
    calls = []

    def train():
        calls.append(1)
        return train_teacher(TINY_RUN)

    with caplog.at_level("WARNING", logger="l2d.teachers"):
        _, card, trained = store.get_or_train(_key(), 10, train)
    assert trained and calls == [1]
    assert f"{damaged}: unreadable teacher" in caplog.text and "training the teacher again" in caplog.text
    aside = [p for p in (tmp_path / "store").iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and (aside[0] / damaged).is_file()  # kept for inspection
    loaded, _ = store.load(_key(), 10)  # readable again
    assert store.get_or_train(_key(), 10, train)[2] is False and calls == [1]


def test_the_same_settings_over_other_data_are_another_teacher(tmp_path):
    from l2d.run import build_splits, get_teacher

    store = TeacherStore(str(tmp_path / "store"))
    _, first, trained = get_teacher(TINY_RUN, store)
    assert trained
    # Same options, another copy of the data whose labels differ: the fingerprint changes, so does the teacher.
    splits = build_splits(TINY_RUN)
    splits["train"].targets = splits["train"].targets.copy()
    splits["train"].targets[0] = 1 - splits["train"].targets[0]
    _, second, trained_again = get_teacher(TINY_RUN, store, splits)
    assert trained_again and second["digest"] != first["digest"]
    assert get_teacher(TINY_RUN, store)[2] is False  # the original data finds the original teacher


def test_a_teacher_at_its_own_resolution(tmp_path):
    """``teacher_image_size``: the teacher is trained (and scored) on the images at its own side, stored under the key
    of a teacher trained at that side (shared with a run whose images are that size), and resizes the student's
    batches to it: its logits on a 16 px batch are its logits on that batch resized to 32 px."""
    from l2d.run import build_run, fit, get_teacher, splits_key, teacher_side

    store = TeacherStore(str(tmp_path / "store"))
    config = TINY_RUN.replace(teacher_image_size=32, student="test_efficientnet", epochs=1, lr=1e-3, method="l2d")
    own, splits = teacher_side(config)
    assert own.image_size == 32 and own.teacher_image_size is None
    assert splits["train"][0][0].shape[-1] == 32  # the teacher's images, drawn at its side
    model, card, trained = get_teacher(config, store)
    assert trained and card["key"]["image_size"] == 32 and model.input_size == 32
    # The same teacher as a run at 32 px finds: nothing trained again.
    _, same, trained_again = get_teacher(TINY_RUN.replace(image_size=32), store)
    assert not trained_again and same["digest"] == card["digest"]
    assert splits_key(*teacher_side(config)).digest() == card["digest"]

    images = torch.rand(3, 3, 16, 16)
    resized = torch.nn.functional.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    with torch.no_grad():
        model.input_size = None
        expected = model(resized).logits
        model.input_size = 32
        torch.testing.assert_close(model(images).logits, expected)

    run = build_run(config, teacher_store=store)  # the student at 16 px distills from it
    assert run.splits["train"][0][0].shape[-1] == 16 and run.teacher.input_size == 32
    assert run.teacher_card["digest"] == card["digest"]
    history = fit(run)
    assert len(history) == 1 and history[0]["train_total"] > 0
