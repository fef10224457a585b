"""End-to-end sweeps on a real local Ray cluster with tiny models: results, TensorBoard, kill and resume."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from sweeps.cli import main
from sweeps.results import TRIAL_SCHEMA
from tests.sweeps.conftest import TINY_SPEC

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]


def _config_key(row):
    return (row["student"], row["method"], row["lr"], row["lambda_mld"], row["lambda_kd"])


def test_sweep_end_to_end(tiny_spec, tmp_path, ray_cleanup, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # Any kd trial gets an infinite weight: its loss overflows, and it must be recorded as failed.
    path = tiny_spec(
        search_space={"lambda_mld": {"low": 0.1, "high": 100}, "lr": {"low": 5e-4, "high": 5e-3}, "lambda_kd": 1e39}
    )
    # The teacher, trained first by `l2d-sweep teacher` with the spec's settings, is the one the sweep uses.
    assert (
        main(
            [
                "teacher",
                "--backbone",
                "test_resnet",
                "--epochs",
                "1",
                "--store",
                str(tmp_path / "sweeps" / "teachers"),
                "--dataset-option",
                "scale=0.05",
                "--image-size",
                "32",
                "--embed-dim",
                "32",
                "--batch-size",
                "16",
            ]
        )
        == 0
    )
    assert "trained and stored" in capsys.readouterr().out
    assert main(["run", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "leaderboard of" in printed and "teacher phase" in printed
    assert "teacher test_resnet: loaded" in printed
    # what the teacher-output cache takes, said once for the sweep before any trial
    assert re.search(r"teacher outputs of test_resnet \([\d,]+ training images\): logits ", printed)
    assert re.search(r"  l2d: logits \+ label_embeddings, [\d.]+ [kMG]B per data seed over \d+ epoch\(s\)", printed)
    assert re.search(r"  kd: logits, [\d.]+ [kMG]B per data seed", printed)
    sweep = tmp_path / "sweeps" / "tiny"

    trials = pq.read_table(sweep / "results" / "trials.parquet")
    epochs = pq.read_table(sweep / "results" / "epochs.parquet")
    assert trials.schema.names == TRIAL_SCHEMA.names and trials.num_rows == 5
    rows = trials.to_pylist()
    statuses = [r["status"] for r in rows]
    assert set(statuses) <= {"completed", "stopped", "failed"}
    assert "stopped" in statuses and "completed" in statuses  # ASHA stopped at least one trial
    for row in rows:
        if row["method"] == "kd":
            assert row["status"] == "failed" and "non-finite loss at epoch 1, batch 1" in row["error"]
            assert row["lambda_kd"] == 1e39
        else:
            assert row["error"] is None and row["best_val_mAP"] is not None and row["student_params"] > 0
            assert row["stopped_early"] == (row["status"] == "stopped")
            assert (row["epochs_run"] == 3) == (row["status"] == "completed")
    assert len({_config_key(r) for r in rows}) == 5
    # The dataset's default L2D weights (mosaic-digits' own, not the official COCO ones) are evaluated first.
    first = [r for r in rows if r["lambda_mld"] == 0.163 and r["method"] == "l2d"]
    assert first and first[0]["student"] == "test_efficientnet"

    epoch_rows = epochs.to_pylist()
    assert len(epoch_rows) == sum(r["epochs_run"] for r in rows)
    for row in rows:
        numbers = [e["epoch"] for e in epoch_rows if e["trial_id"] == row["trial_id"]]
        assert numbers == list(range(1, row["epochs_run"] + 1))  # 1-based, no gaps, no duplicates
    for column in ("val_mAP", "test_mAP", "val_loss", "train_bce", "train_mld", "images_per_s", "epoch_seconds"):
        assert column in epochs.schema.names

    assert (
        main(
            [
                "results",
                str(sweep),
                "--sql",
                "SELECT t.method, count(*) AS epochs FROM epochs e JOIN trials t USING (trial_id) GROUP BY t.method "
                "ORDER BY t.method",
                "--format",
                "json",
            ]
        )
        == 0
    )
    answer = json.loads(capsys.readouterr().out)
    assert {a["method"] for a in answer} <= {"l2d", "kd"} and sum(a["epochs"] for a in answer) == len(epoch_rows)
    # The time ledger: each trial's parts add up to its wall time (the rest is bookkeeping), and checkpoints count.
    for row in rows:
        if row["status"] != "failed":
            parts = [row[f"time_{part}_s"] for part in ("data", "teacher", "student", "eval", "checkpoint")]
            assert all(p is not None and p >= 0 for p in parts) and row["time_checkpoint_s"] > 0
            assert row["time_teacher_s"] > 0 and row["time_student_s"] > 0  # every method here distills
            assert 0.9 * row["wall_time_s"] <= sum(parts) <= row["wall_time_s"] * 1.0001, (parts, row["wall_time_s"])
    for column in ("time_data_s", "time_teacher_s", "time_student_s", "time_eval_s", "time_checkpoint_s"):
        assert column in epochs.schema.names
    assert main(["status", str(sweep)]) == 0
    shown = capsys.readouterr().out
    assert "trials by state:" in shown and re.search(r"time: .* over 4 trial\(s\): data \d+%, teacher \d+%", shown)
    assert main(["results", str(sweep), "--pareto"]) == 0
    assert not (sweep / "results" / "pareto.png").exists()  # a read command writes nothing into the sweep
    for kind in ("history", "parallel", "importance", "pareto"):
        out = tmp_path / f"{kind}.png"
        assert main(["plot", str(sweep), "--kind", kind, "--out", str(out)]) == 0, kind
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    # The rungs plot needs 3 trials that ran every epoch: drawn, or said, as the trials that ASHA let run decide
    # (tests/sweeps/test_plots.py draws it from a folder where they did).
    ran_every_epoch = sum(r["epochs_run"] == 3 for r in rows)
    capsys.readouterr()
    assert main(["plot", str(sweep), "--kind", "rungs", "--out", str(tmp_path / "rungs.png")]) == 0
    if ran_every_epoch >= 3:
        assert (tmp_path / "rungs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert f"needs 3 trials that ran every epoch; {ran_every_epoch} did" in capsys.readouterr().err
        assert not (tmp_path / "rungs.png").exists()
    assert main(["plot", str(sweep), "--kind", "pareto", "--out", str(sweep / "x.png")]) == 2  # not into the sweep
    assert main(["importance", str(sweep)]) == 0
    assert "trials" in capsys.readouterr().out
    # list and compare on the real sweep (and the spec it was started from validates).
    assert main(["list", str(sweep.parent), "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["sweep"] for r in listed] == [sweep.name] and listed[0]["trials"] == len(rows)
    assert main(["compare", str(sweep), str(sweep)]) == 0
    assert "the specs are the same" in capsys.readouterr().out
    assert main(["validate", str(sweep / "spec.yaml")]) == 0
    # The sweep-level HParams config sits beside the trials' folders.
    assert list((sweep / "tensorboard").glob("events.out.tfevents.*"))

    # Every trial checkpointed each epoch into its own folder; when it ended, keep: best+last (the default) left a
    # completed trial its last checkpoint and a stopped one none, and each its best epoch.
    for row in rows:
        if row["status"] != "failed":
            run_dir = sweep / "train" / f"trial-{row['trial_id']}"
            kept = sorted(p.name for p in run_dir.glob("epoch-*"))
            assert kept == ([f"epoch-{row['epochs_run']:04d}"] if row["status"] == "completed" else [])
            assert all((run_dir / k / "state.pt").is_file() for k in kept)
            assert json.loads((run_dir / "best" / "best.json").read_text())["epoch"] == row["best_epoch"]

    asha = json.loads((sweep / "asha.json").read_text())
    assert sum(len(recorded) for bracket in asha["brackets"] for _, recorded in bracket) >= 3

    completed = next(r for r in rows if r["status"] == "completed")
    board = EventAccumulator(str(sweep / "tensorboard" / completed["trial_id"]))
    board.Reload()
    assert [e.step for e in board.Scalars("val/mAP")] == [1, 2, 3]
    assert board.PluginTagToContent("hparams")  # the HParams dashboard's session data

    # A second `run` of the same spec refuses and says how to go on.
    assert main(["run", str(path)]) == 2
    assert "l2d-sweep resume" in capsys.readouterr().err


def _start(args, log):
    return subprocess.Popen(
        [sys.executable, "-m", "sweeps.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        cwd=os.getcwd(),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.parametrize("trainer", ["in-process", "torch-trainer"])
def test_kill_and_resume(tiny_spec, tmp_path, trainer):
    path = tiny_spec(
        name="killed",
        budget={"num_samples": 3, "max_epochs": 3, "grace_period": 1, "reduction_factor": 2, "teacher_epochs": 1},
        resources={**TINY_SPEC["resources"], "trainer": trainer},
    )
    sweep = tmp_path / "sweeps" / "killed"
    first_output = []
    process = _start(["run", str(path)], first_output)
    deadline = time.time() + 600
    interrupted = None
    for line in process.stdout:
        first_output.append(line)
        if " epoch 1/3: " in line:
            interrupted = line.split("trial ", 1)[1].split()[0]
            break
        assert time.time() < deadline, "".join(first_output)
    assert interrupted, "".join(first_output)
    os.kill(process.pid, signal.SIGKILL)  # the driver dies mid-trial, without any clean-up
    process.wait()
    try:
        os.killpg(process.pid, signal.SIGKILL)  # and so does everything it started (a lost machine)
    except ProcessLookupError:
        pass
    assert (sweep / "train" / f"trial-{interrupted}").is_dir()

    resumed = subprocess.run(
        [sys.executable, "-m", "sweeps.cli", "resume", str(sweep)], capture_output=True, text=True, timeout=700
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    output = "".join(first_output) + resumed.stdout

    trials = pq.read_table(sweep / "results" / "trials.parquet").to_pylist()
    epochs = pq.read_table(sweep / "results" / "epochs.parquet").to_pylist()
    assert len(trials) == 3
    assert all(t["status"] in ("completed", "stopped") for t in trials)
    # Every trial ended exactly once.
    for trial in trials:
        ends = [
            line
            for line in output.splitlines()
            if f"trial {trial['trial_id']} " in line
            and any(w in line for w in (" completed", " stopped"))
            and " epoch " not in line
        ]
        assert len(ends) == 1, (trial["trial_id"], ends)
    # The interrupted trial continued from its checkpoint: after the resume it reports from epoch >= 2 on.
    history = sorted((e for e in epochs if e["trial_id"] == interrupted), key=lambda e: e["epoch"])
    assert [e["epoch"] for e in history] == list(range(1, len(history) + 1))
    assert history[0]["resumed_from"] == 0.0
    after = [e for e in history if e["resumed_from"] == 1.0]
    assert after and after[0]["epoch"] >= 2
    assert "started: " in resumed.stdout or "resuming sweep" in resumed.stdout
    # The Optuna study went on without repeating a suggestion.
    assert len({_config_key(t) for t in trials}) == 3


def test_a_sweep_whose_every_trial_failed_exits_1(tiny_spec, tmp_path):
    path = tiny_spec(
        name="doomed",
        methods=["kd"],
        search_space={"lambda_kd": 1e39},
        budget={"num_samples": 2, "max_epochs": 2, "grace_period": 1, "reduction_factor": 2, "teacher_epochs": 1},
    )
    done = subprocess.run(
        [sys.executable, "-m", "sweeps.cli", "run", str(path)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "the sweep did not succeed: every trial failed (2 failed)" in done.stderr
    status = subprocess.run(
        [sys.executable, "-m", "sweeps.cli", "status", str(tmp_path / "sweeps" / "doomed")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        status.returncode == 0
        and "driver: not running; the sweep did not succeed (exit status 1): every trial failed (2 failed)"
        in status.stdout
    )


def test_a_spec_with_initial_weights_trains_a_feature_level_method(tiny_spec, tmp_path):
    import io

    import timm
    import torch

    from l2d.weights import identity

    files = {}
    for backbone in ("test_resnet", "test_efficientnet"):
        files[backbone] = str(tmp_path / f"{backbone}.safetensors")
        from safetensors.torch import save_file

        save_file(timm.create_model(backbone, pretrained=False).state_dict(), files[backbone])
    path = tiny_spec(
        name="weighted",
        methods=["reviewkd"],
        search_space={"lr": 2e-3},
        weights=files,
        pairings=[{"teacher": "test_resnet", "students": ["test_efficientnet"]}],
        budget={
            "num_samples": 1,
            "max_epochs": 2,
            "grace_period": 1,
            "reduction_factor": 2,
            "teacher_epochs": 1,
            "teacher_schedule_epochs": 3,
        },
    )
    done = subprocess.run(
        [sys.executable, "-m", "sweeps.cli", "run", str(path)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sweep = tmp_path / "sweeps" / "weighted"
    cards = [json.loads(p.read_text()) for p in (tmp_path / "sweeps" / "teachers").glob("*/card.json")]
    assert len(cards) == 1 and cards[0]["key"]["weights"] == identity(files["test_resnet"], "test_resnet")
    assert cards[0]["key"]["recipe"]["schedule_epochs"] == 3 and cards[0]["epochs"] == 1
    trial = pq.read_table(sweep / "results" / "trials.parquet").to_pylist()[0]
    assert (trial["method"], trial["status"], trial["epochs_run"]) == ("reviewkd", "completed", 2)
    assert trial["test_paper_CF1_at_best"] is not None and trial["test_paper_OF1_at_best"] is not None
    assert "val_paper_CF1" in pq.read_table(sweep / "results" / "epochs.parquet").schema.names
    state = torch.load(
        io.BytesIO((sweep / "train" / f"trial-{trial['trial_id']}" / "epoch-0002" / "state.pt").read_bytes()),
        weights_only=True,
    )
    assert any(k.startswith("connectors.reviewkd.fusions.") for k in state["criterion"])
