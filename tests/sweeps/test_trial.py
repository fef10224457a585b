"""One trial's loop (sweeps.tune.trial._run) with a session of its own: the engine's epochs reported, checkpointed and
the best kept; a resumed trial replays its history first. The Ray sessions are exercised by the sweep tests."""

import json

import pytest

from l2d.storage import Location
from sweeps.folder.checkpoints import HISTORY_KEY, BestCheckpoint, restore_newest, write_checkpoint
from sweeps.specs import parse_spec
from sweeps.tune.trial import TrialContext, _run
from tests.sweeps.conftest import TINY_SPEC


class RecordingSession:
    """The session protocol of sweeps.tune.trial (device, rank, run_dir, restore, report), recording what it is told."""

    def __init__(self, run_dir: Location):
        import torch

        self.device, self.rank, self.run_dir = torch.device("cpu"), 0, run_dir
        self.reports = []

    def restore(self):
        return restore_newest(self.run_dir)

    def report(self, metrics, epoch, state, history, since):
        import time

        if state is not None:
            write_checkpoint(self.run_dir, epoch, state, history)
        metrics.setdefault("time_checkpoint_s", time.perf_counter() - since)
        self.reports.append(dict(metrics))


def _context(tmp_path, **changes):
    spec = parse_spec({**TINY_SPEC, "storage": str(tmp_path / "sweeps"), **changes})
    return TrialContext.from_spec(spec)


CONFIG = {
    "pairing": "test_resnet",
    "student@test_resnet": "test_efficientnet",
    "method": "mld",
    "lr": 2e-3,
    "lambda_mld": 1.0,
}


def test_a_trial_reports_every_epoch_and_keeps_its_best(tmp_path):
    context = _context(tmp_path, methods=["mld"], search_space={"lr": {"low": 1e-3, "high": 5e-3}})
    assert context.trainer == "in-process" and context.base.dataset == "mosaic-digits"
    run_dir = context.run_dir("t1")
    session = RecordingSession(run_dir)
    _run(context, CONFIG, session)
    epochs = [int(r["epoch"]) for r in session.reports]
    assert epochs == [1, 2, 3]
    for report in session.reports:
        assert {"val_mAP", "test_mAP", "student_params", "latency_ms", "images_per_s"} <= set(report)
        assert report["time_checkpoint_s"] > 0 and report["time_student_s"] > 0  # the ledger, checkpoints included
        assert report["worker_nodes"] == 1 and report["resumed_from"] == 0.0
    best = json.loads((run_dir / "best" / "best.json").read_text())
    assert best["metrics"]["val_mAP"] == max(r["val_mAP"] for r in session.reports)
    assert len(BestCheckpoint.history(run_dir)) == best["epoch"]


def test_a_resumed_trial_replays_its_history_then_goes_on(tmp_path):
    context = _context(tmp_path, methods=["mld"], search_space={"lr": {"low": 1e-3, "high": 5e-3}})
    run_dir = context.run_dir("t2")
    first = RecordingSession(run_dir)

    class Stop(Exception):
        pass

    def stop_after_two(metrics, epoch, state, history, since):
        RecordingSession.report(first, metrics, epoch, state, history, since)
        if epoch == 2:
            raise Stop

    first.report = stop_after_two
    with pytest.raises(Stop):
        _run(context, CONFIG, first)
    again = RecordingSession(run_dir)
    _run(context, CONFIG, again)
    replay = again.reports[0]
    assert int(replay["epoch"]) == 2 and [int(r["epoch"]) for r in json.loads(replay[HISTORY_KEY])] == [1, 2]
    assert [int(r["epoch"]) for r in again.reports[1:]] == [3]
    assert again.reports[1]["resumed_from"] == 1.0
    # The epochs before the crash are the same numbers the first run reported.
    assert json.loads(replay[HISTORY_KEY])[0]["val_mAP"] == first.reports[0]["val_mAP"]


def test_a_multi_seed_trial_reports_the_means_of_its_students_and_resumes_them_all(tmp_path):
    """``budget.selection_seeds: 2``: a search trial trains the student on its seed and the next, and reports each
    epoch's means, the same numbers as the two students run alone (the second as a confirmation run of that seed);
    best/ keeps the first seed's student and says which values made the mean; stopped and resumed, it ends the same."""
    space = {"lr": {"low": 1e-3, "high": 5e-3}}
    alone = _context(tmp_path, methods=["mld"], search_space=space)
    first_seed = RecordingSession(alone.run_dir("seed0"))
    _run(alone, CONFIG, first_seed)
    second_seed = RecordingSession(alone.run_dir("seed1"))
    _run(alone, {**CONFIG, "stage": "confirm", "seed": 1, "confirms": "seed0"}, second_seed)

    budget = {**TINY_SPEC["budget"], "selection_seeds": 2}
    context = _context(tmp_path, methods=["mld"], search_space=space, budget=budget)
    assert context.selection_seeds == 2
    both = RecordingSession(context.run_dir("both"))
    _run(context, CONFIG, both)
    assert [int(r["epoch"]) for r in both.reports] == [1, 2, 3]
    for mean, a, b in zip(both.reports, first_seed.reports, second_seed.reports, strict=True):
        assert a["val_mAP"] != b["val_mAP"]  # two students, not one twice
        for name in ("val_mAP", "test_mAP", "train_total", "val_loss"):
            assert mean[name] == (a[name] + b[name]) / 2, name
        assert mean["time_student_s"] == pytest.approx(a["time_student_s"] + b["time_student_s"], rel=0.8)
    best = json.loads((context.run_dir("both") / "best" / "best.json").read_text())
    assert best["selection"]["seeds"] == [0, 1] and best["selection"]["metric"] == "val_mAP"
    epoch = best["epoch"]
    assert best["selection"]["values"] == [
        first_seed.reports[epoch - 1]["val_mAP"],
        second_seed.reports[epoch - 1]["val_mAP"],
    ]
    assert best["metrics"]["val_mAP"] == max(r["val_mAP"] for r in both.reports)

    class Stop(Exception):
        pass

    stopped = RecordingSession(context.run_dir("stopped"))

    def stop_after_two(metrics, epoch, state, history, since):
        RecordingSession.report(stopped, metrics, epoch, state, history, since)
        if epoch == 2:
            raise Stop

    stopped.report = stop_after_two
    with pytest.raises(Stop):
        _run(context, CONFIG, stopped)
    again = RecordingSession(context.run_dir("stopped"))
    _run(context, CONFIG, again)
    assert [int(r["epoch"]) for r in again.reports] == [2, 3] and again.reports[1]["resumed_from"] == 1.0
    assert again.reports[1]["val_mAP"] == both.reports[2]["val_mAP"]  # both students continued exactly


def test_replicas_are_combined_as_means_and_the_time_spent_as_sums():
    from sweeps.tune.trial import combine_replicas

    combined = combine_replicas(
        [
            {"epoch": 2.0, "val_mAP": 40.0, "time_teacher_s": 1.5, "epoch_seconds": 3.0, "teacher_cache_hits": 10},
            {"epoch": 2.0, "val_mAP": 44.0, "time_teacher_s": 0.5, "epoch_seconds": 2.0, "teacher_cache_hits": 6},
        ]
    )
    assert combined == {
        "epoch": 2.0,
        "val_mAP": 42.0,
        "time_teacher_s": 2.0,
        "epoch_seconds": 5.0,
        "teacher_cache_hits": 16.0,
    }
