"""The teacher-output cache: the teacher's outputs of each view computed once and read by every run with the same
teacher and data seed; exact in float32, bounded in float16; another method or student reads what one run wrote; a
damaged entry is computed again; two runs that miss the same batch at once compute it once; a resumed run reads what
the run before it wrote; a method that reads feature maps, or a cache over its budget, runs the teacher online."""

from __future__ import annotations

import copy
import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest

from l2d.run import RunConfig, build_run, fit
from l2d.teachers import TeacherStore

RUN = RunConfig(
    dataset="mosaic-digits",
    dataset_options={"size": 48},
    image_size=16,
    embed_dim=16,
    teacher="test_resnet",
    student="test_efficientnet",
    teacher_epochs=1,
    teacher_lr=2e-3,
    epochs=2,
    lr=2e-3,
    batch_size=16,
    method="l2d",
    device="cpu",
)
COMPARED = ("train_total", "train_bce", "train_mld", "train_cd", "train_id", "val_mAP", "val_loss", "test_mAP")


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """One teacher store for the module (its teacher trained once); each test its own cache folder."""
    return TeacherStore(str(tmp_path_factory.mktemp("teachers")))


@pytest.fixture
def store(teachers, tmp_path, monkeypatch):
    monkeypatch.setenv("L2D_SWEEP_CACHE", str(tmp_path / "cache"))
    return teachers


def _fit(config: RunConfig, store: TeacherStore):
    run = build_run(config, teacher_store=store)
    return run, fit(run)


@pytest.mark.slow  # whole runs, several of them: in `make test`, not the quick loop
def test_a_float32_cache_gives_the_online_numbers_and_the_second_run_only_reads(store):
    _, online = _fit(RUN.replace(teacher_cache="off"), store)
    first_run, first = _fit(RUN.replace(teacher_cache="float32"), store)
    assert "computed once per view" in first_run.teacher_cache_said and "float32" in first_run.teacher_cache_said
    second_run, second = _fit(RUN.replace(teacher_cache="float32"), store)
    for a, b, c in zip(online, first, second, strict=True):
        for name in COMPARED:
            assert a[name] == b[name] == c[name], name  # to the last bit, on CPU
    images = len(first_run.splits["train"]) // 16 * 16  # full batches (drop_last)
    assert [e["teacher_cache_misses"] for e in first] == [images, images] and first[0]["teacher_cache_hits"] == 0
    assert [e["teacher_cache_hits"] for e in second] == [images, images] and second[0]["teacher_cache_misses"] == 0
    assert "teacher_cache_hits" not in online[0]


def test_float16_outputs_differ_from_the_online_ones_by_a_bounded_amount(store):
    """float16 keeps about three significant digits of the teacher's outputs: measured on a batch, relative to each
    part's scale. (A run's metrics then drift as any perturbation of training makes them: compared by float32.)"""
    import torch

    run = build_run(RUN.replace(teacher_cache="float16"), teacher_store=store)
    cache, teacher = run.distiller.teacher_cache, run.distiller.teacher
    images = torch.stack([run.splits["train"][i][0] for i in range(16)])
    with torch.no_grad():
        online = teacher(images)
    cached = cache.outputs(1, torch.arange(16), lambda: online)
    for part in ("logits", "label_embeddings"):
        exact, rounded = getattr(online, part), getattr(cached, part)
        error = (exact - rounded).abs().max().item() / exact.abs().max().item()
        assert 0 < error <= 1e-3, (part, error)


@pytest.mark.slow  # whole runs, several of them: in `make test`, not the quick loop
def test_another_method_and_student_of_the_same_seed_read_what_one_run_wrote(store):
    _fit(RUN.replace(teacher_cache="float32"), store)
    other_run, other = _fit(RUN.replace(teacher_cache="float32", method="mld", student="test_resnet"), store)
    assert other_run.distiller.teacher_cache is not None
    assert all(e["teacher_cache_misses"] == 0 and e["teacher_cache_hits"] > 0 for e in other)
    # another data seed: other views, other entries
    _, reseeded = _fit(RUN.replace(teacher_cache="float32", seed=1), store)
    assert reseeded[0]["teacher_cache_hits"] == 0 and reseeded[0]["teacher_cache_misses"] > 0


@pytest.mark.slow  # whole runs, several of them: in `make test`, not the quick loop
def test_a_damaged_entry_is_computed_again(store):
    run, first = _fit(RUN.replace(teacher_cache="float32"), store)
    cache = run.distiller.teacher_cache
    damaged = cache.folder / "epoch-0001.label_embeddings"
    with open(damaged, "r+b") as handle:
        handle.truncate(10)
    _, again = _fit(RUN.replace(teacher_cache="float32"), store)
    assert again[0]["teacher_cache_misses"] > 0 and again[1]["teacher_cache_misses"] == 0  # only epoch 1 recomputed
    for name in COMPARED:
        assert first[0][name] == again[0][name], name


@pytest.mark.slow  # whole runs, several of them: in `make test`, not the quick loop
def test_stored_views_read_the_first_epochs_outputs_and_k_at_the_runs_length_changes_nothing(store):
    """views_per_image 1: the second epoch replays the first's views, so it reads every teacher output the first
    computed and the cache holds one epoch; K >= the run's epochs is fresh views, to the bit."""
    _, fresh = _fit(RUN.replace(teacher_cache="off"), store)
    run, replayed = _fit(RUN.replace(teacher_cache="float32", views_per_image=1), store)
    images = len(run.splits["train"]) // 16 * 16
    assert [e["teacher_cache_misses"] for e in replayed] == [images, 0]
    assert [e["teacher_cache_hits"] for e in replayed] == [0, images]
    assert sorted(p.name for p in run.distiller.teacher_cache.folder.glob("epoch-*.logits")) == ["epoch-0001.logits"]
    assert "1 epoch(s) x" in run.teacher_cache_said
    for name in COMPARED:
        assert replayed[0][name] == fresh[0][name], name  # epoch 1 is the same either way
    assert replayed[1]["train_total"] != fresh[1]["train_total"]  # epoch 2: the old views, not new ones
    _, long_enough = _fit(RUN.replace(teacher_cache="off", views_per_image=2), store)
    for a, b in zip(fresh, long_enough, strict=True):
        for name in COMPARED:
            assert a[name] == b[name], name


def test_feature_map_methods_and_an_overflowing_cache_run_the_teacher_online(store):
    hint = build_run(RUN.replace(method="hint"), teacher_store=store)
    assert hint.distiller.teacher_cache is None and "reads the teacher's feature maps" in hint.teacher_cache_said
    tight = build_run(RUN.replace(teacher_cache_gb=1e-9), teacher_store=store)
    assert tight.distiller.teacher_cache is None
    assert "over the budget of 1e-09 GB (teacher_cache_gb): the teacher runs online" in tight.teacher_cache_said
    history = fit(tight)
    assert "teacher_cache_hits" not in history[0] and np.isfinite(history[0]["train_total"])
    alone = build_run(RUN.replace(method="bce"), teacher_store=store)
    assert alone.distiller.teacher_cache is None and alone.teacher_cache_said is None


def _writer(folder: str, started, role: str, results) -> None:
    """One run of :func:`test_two_runs_that_miss_the_same_batch_compute_it_once` (a process of its own)."""
    import torch

    from l2d.models import ModelOutput
    from l2d.teacher_cache import TeacherCache

    cache = TeacherCache(Path(folder), 8, {"logits": (3,)}, "float32")

    def compute():
        started.set()  # the first run is inside its forward pass, nothing written yet
        time.sleep(2.0)
        return ModelOutput(torch.arange(24.0).reshape(8, 3) + (0 if role == "first" else 100), None, None)

    if role == "second":
        started.wait(60)
    logits = cache.outputs(1, torch.arange(8), compute).logits
    results.put((role, cache.take_counts(), logits.tolist()))


def test_two_runs_that_miss_the_same_batch_compute_it_once(tmp_path):
    """The second run asks for a batch while the first is computing it: it waits for the epoch's lock, finds the
    rows written, and reads them (without the lock it would compute them again and write its own numbers)."""
    context = multiprocessing.get_context("spawn")
    started, results = context.Event(), context.Queue()
    roles = ("first", "second")
    runs = [context.Process(target=_writer, args=(str(tmp_path), started, role, results)) for role in roles]
    for run in runs:
        run.start()
    got = {}
    for _ in runs:
        role, counts, logits = results.get(timeout=120)
        got[role] = counts, logits
    for run in runs:
        run.join(30)
        assert run.exitcode == 0
    assert got["first"][0] == (0, 8) and got["second"][0] == (8, 0)  # (hits, misses)
    assert got["first"][1] == got["second"][1] == np.arange(24.0).reshape(8, 3).tolist()


@pytest.mark.slow  # whole runs: in `make test`, not the quick loop
def test_a_resumed_run_reads_what_the_run_before_it_wrote(store):
    """A run stopped after epoch 1 and resumed from its checkpoint (a trial ASHA paused, a crash) reads epoch 2's
    outputs written by an earlier run of the same views, and ends where an uninterrupted run ends."""
    config = RUN.replace(teacher_cache="float32")
    states = []
    first_run = build_run(config, teacher_store=store)
    whole = fit(first_run, on_epoch=lambda _: states.append(copy.deepcopy(first_run.distiller.state_dict())))
    resumed = build_run(config, teacher_store=store)
    resumed.distiller.load_state_dict(states[0])
    rest = fit(resumed)
    assert len(rest) == 1 and rest[0]["epoch"] == 2
    assert rest[0]["teacher_cache_misses"] == 0 and rest[0]["teacher_cache_hits"] > 0
    for name in COMPARED:
        assert rest[0][name] == whole[1][name], name


def test_the_plan_a_sweep_prints_says_each_methods_size_and_what_runs_online(store):
    """Before any trial: each part's size an epoch, and per group of methods the disk it takes or why the teacher
    runs online (its feature maps, or over the budget)."""
    from l2d.run import teacher_cache_plan
    from l2d.teacher_cache import megabytes

    run = build_run(RUN.replace(teacher_cache="float16"), teacher_store=store)
    teacher, splits = run.teacher, run.splits
    count = len(splits["train"])
    classes = len(splits["train"].class_names)
    logits = count * classes * 2  # bytes an epoch in float16
    embeddings = count * classes * 16 * 2
    lines = teacher_cache_plan(
        RUN.replace(teacher_cache="float16"), teacher, splits, ["bce", "mld", "kd", "l2d", "hint"]
    )
    assert lines[0].startswith(f"teacher outputs of test_resnet ({count:,} training images): logits ")
    assert f"logits {megabytes(logits)}, label_embeddings {megabytes(embeddings)}, features " in lines[0]
    assert lines[1] == f"  mld, kd: logits, {megabytes(2 * logits)} per data seed over 2 epoch(s) in float16: " + (
        "computed once per view, read by every trial with this data seed"
    )
    assert lines[2].startswith("  l2d: logits + label_embeddings, ")
    assert lines[3] == "  hint: the teacher runs online (they read its feature maps)"
    between = (2 * logits + 2 * (logits + embeddings)) / 2 / 1e9  # room for the logits, not for l2d's parts
    tight = teacher_cache_plan(
        RUN.replace(teacher_cache="float16", teacher_cache_gb=between), teacher, splits, ["mld", "l2d"]
    )
    assert tight[1].endswith("computed once per view, read by every trial with this data seed")
    assert tight[2].endswith(
        f"over the budget of {between:g} GB (teacher_cache_gb): the teacher runs online (recipe.views_per_image: 1 "
        f"or fewer would fit: K stored views per image replayed, a change of the training distribution)"
    )
    # one epoch of views replayed: half the size, within the budget
    replayed = teacher_cache_plan(
        RUN.replace(teacher_cache="float16", teacher_cache_gb=between, views_per_image=1), teacher, splits, ["l2d"]
    )
    assert replayed[1] == (
        f"  l2d: logits + label_embeddings, {megabytes(logits + embeddings)} per data seed over 1 epoch(s) of views "
        f"(views_per_image: 1, replayed over 2) in float16: computed once per view, read by every trial with this "
        f"data seed"
    )
    nothing_fits = teacher_cache_plan(
        RUN.replace(teacher_cache="float16", teacher_cache_gb=1e-9), teacher, splits, ["l2d"]
    )
    assert nothing_fits[1].endswith("the teacher runs online")  # no K fits: nothing suggested
    assert teacher_cache_plan(RUN, teacher, splits, ["bce"]) == []
    off = teacher_cache_plan(RUN.replace(teacher_cache="off"), teacher, splits, ["mld"])
    assert off == ["teacher outputs: computed at every step by every trial (teacher_cache: off)"]
