"""What ``results`` (and ``status``) set beside the leaderboard: each teacher beside its student trained alone (a
teacher no better than its student is a warning; ``results --teachers``, ``Sweep.teachers()``), and the time ledger
(where the trials' time went). Without Ray: the folder is written by the results writer and
:func:`sweeps.results.teachers.write_teachers`, as the driver and the teacher phase write it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from l2d.storage import Location
from sweeps.cli import main
from sweeps.results import CorruptResultsError
from sweeps.results.teachers import TEACHERS_FILE, read_teachers, teacher_rows, teacher_warnings, write_teachers

CARD = {"val_mAP": 70.0, "test_mAP": 68.5, "epochs": 3, "parameters": 1000, "digest": "abc", "history": [1, 2]}


def _sweep(tmp_path: Path, best: dict[str, float]) -> Path:
    """A sweep folder with one trial per method of one pairing, each reaching ``best[method]`` val mAP at epoch 2."""
    from sweeps.folder.marker import write_marker
    from sweeps.results import ResultsWriter
    from sweeps.specs import parse_spec
    from sweeps.specs.stored import spec_digest
    from tests.sweeps.conftest import TINY_SPEC

    spec = parse_spec({**TINY_SPEC, "name": "t", "storage": str(tmp_path)}, "x.yaml")
    sweep = tmp_path / "t"
    sweep.mkdir()
    (sweep / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    write_marker(Location.parse(sweep), spec_digest=spec_digest(spec))
    writer = ResultsWriter(str(sweep), max_epochs=2)
    for index, (method, value) in enumerate(best.items()):
        trial = f"t{index:05d}"
        config = {"teacher": "test_resnet", "student": "test_efficientnet", "method": method, "lr": 1e-3}
        for epoch in (1, 2):
            writer.record_epoch(
                trial,
                config,
                {"epoch": epoch, "val_mAP": value - (2 - epoch), "test_mAP": value - 1.0, "student_params": 10.0},
            )
        writer.finish(trial, config)
    writer.write()
    writer.publish()
    return sweep


def test_a_teacher_no_better_than_its_student_alone_is_a_warning(tmp_path, capsys):
    sweep = _sweep(tmp_path, {"bce": 72.0, "l2d": 73.0, "kd": 71.0})
    write_teachers(Location.parse(sweep), {"test_resnet": CARD})
    assert main(["results", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "teachers of" in out and "test_resnet" in out
    assert "warning: teacher test_resnet (val mAP 70.00) is no better than its student test_efficientnet" in out
    assert "bce: val mAP 72.00" in out

    assert main(["results", str(sweep), "--teachers", "--format", "jsonl"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert row["teacher_val_mAP"] == 70.0 and row["teacher_test_mAP"] == 68.5 and row["how"] == "trained"
    assert row["alone_val_mAP"] == 72.0 and row["alone_test_mAP"] == 71.0
    assert row["margin"] == pytest.approx(-2.0)
    assert row["best_distilled_method"] == "l2d" and row["best_distilled_val_mAP"] == 73.0


def test_a_stronger_teacher_is_no_warning_and_an_unknown_margin_is_a_note(tmp_path, capsys):
    sweep = _sweep(tmp_path, {"bce": 65.0, "l2d": 66.0})
    write_teachers(Location.parse(sweep), {"test_resnet": {**CARD, "adopted": True}})
    assert main(["results", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "teachers of" in out and "adopted" in out
    assert "warning" not in out

    rows = teacher_rows(read_teachers(Location.parse(sweep)), [])
    assert rows == []  # no trial of the pairing: nothing to set beside
    no_alone = teacher_rows(
        {"t": {"val_mAP": 60.0}},
        [{"trial_id": "a", "teacher": "t", "student": "s", "method": "kd", "best_val_mAP": 61.0}],
    )
    (line,) = teacher_warnings(no_alone)
    assert line.startswith("note: the sweep trained no s alone") and "60.00" in line


def test_the_confirmation_stages_baseline_counts_as_the_student_alone():
    trials = [
        {"trial_id": "a", "teacher": "t", "student": "s", "method": "kd", "best_val_mAP": 50.0, "stage": "search"},
        {
            "trial_id": "b",
            "teacher": "t",
            "student": "s",
            "method": "bce",
            "best_val_mAP": 55.0,
            "stage": "confirm",
            "test_mAP_at_best": 54.0,
        },
    ]
    (row,) = teacher_rows({"t": {"val_mAP": 54.0}}, trials)
    assert row["alone_val_mAP"] == 55.0 and row["alone_test_mAP"] == 54.0 and row["margin"] == -1.0
    assert teacher_warnings([row])[0].startswith("warning: teacher t")


def test_no_teacher_phase_no_section_and_a_damaged_record_leaves_the_leaderboard(tmp_path, capsys):
    sweep = _sweep(tmp_path, {"bce": 65.0})
    assert main(["results", str(sweep)]) == 0
    assert "teachers of" not in capsys.readouterr().out
    assert main(["results", str(sweep), "--teachers"]) == 0
    assert "no teacher recorded" in capsys.readouterr().out

    (sweep / TEACHERS_FILE).write_text("{not json")
    with pytest.raises(CorruptResultsError, match="teachers.json: unreadable teacher record"):
        read_teachers(Location.parse(sweep))
    assert main(["results", str(sweep)]) == 0
    captured = capsys.readouterr()
    assert "leaderboard" not in captured.err and "t00000" in captured.out
    assert "unreadable teacher record" in captured.err
    assert (sweep / TEACHERS_FILE).read_text() == "{not json"  # a read command never writes


def test_the_record_keeps_the_cards_scores_not_their_history(tmp_path):
    target = write_teachers(Location.parse(tmp_path), {"x": CARD, "y": {**CARD, "adopted": True, "val_mAP": None}})
    record = json.loads(Path(str(target)).read_text())["teachers"]
    assert record["x"]["how"] == "trained" and record["y"]["how"] == "adopted"
    assert "history" not in record["x"] and record["x"]["test_mAP"] == 68.5
    assert read_teachers(Location.parse(tmp_path)) == record


def test_the_time_ledger_sums_each_trials_epochs_and_the_sweeps_trials(tmp_path, capsys):
    """``results`` and ``status`` say where the trials' time went (the ledger's parts summed over epochs and trials,
    the rest of the wall time as ``other``); a sweep recorded before the ledger existed says nothing."""
    from sweeps.results import ResultsWriter, SweepResults
    from sweeps.results.reader import describe_ledger

    sweep = _sweep(tmp_path, {"bce": 60.0})
    assert SweepResults(sweep).ledger() is None and describe_ledger(None) is None  # no ledger in those epochs
    writer = ResultsWriter(str(sweep), max_epochs=2)
    config = {"teacher": "test_resnet", "student": "test_efficientnet", "method": "l2d", "lr": 1e-3}
    for epoch in (1, 2):
        parts = {"time_data_s": 10.0, "time_teacher_s": 20.0, "time_student_s": 60.0, "time_eval_s": 5.0}
        writer.record_epoch(
            "t00009",
            config,
            {"epoch": epoch, "val_mAP": 50.0, "epoch_seconds": 98.0, "time_checkpoint_s": 2.0, **parts},
        )
    writer.finish("t00009", config)
    writer.write()
    writer.publish()
    row = next(r for r in SweepResults(sweep).trials.to_pylist() if r["trial_id"] == "t00009")
    assert (row["time_data_s"], row["time_teacher_s"], row["time_student_s"]) == (20.0, 40.0, 120.0)
    assert (row["time_eval_s"], row["time_checkpoint_s"], row["wall_time_s"]) == (10.0, 4.0, 200.0)
    ledger = SweepResults(sweep).ledger()
    assert ledger == {
        "seconds": 200.0,
        "trials": 1,
        "parts": {"data": 20.0, "teacher": 40.0, "student": 120.0, "eval": 10.0, "checkpoint": 4.0, "other": 6.0},
    }
    line = "time: 3.3 min over 1 trial(s): data 10%, teacher 20%, student 60%, eval 5%, checkpoint 2%, other 3%"
    assert describe_ledger(ledger) == line
    assert main(["results", str(sweep)]) == 0
    assert line in capsys.readouterr().out
    assert main(["status", str(sweep)]) == 0
    assert line in capsys.readouterr().out
