"""The command line: help, one-line errors, the methods listing."""

import json
import subprocess
import sys

import pytest

from sweeps.cli import main


def test_methods_lists_every_method(capsys):
    from l2d.losses import METHODS

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in METHODS:
        assert f"\n{name} " in out
    assert "lambda_mld=10, lambda_cd=100, lambda_id=1000" in out
    assert "on mosaic-digits, l2d defaults to lambda_mld=0.163, lambda_cd=0.14, lambda_id=23.3" in out


def test_bad_command_is_a_one_line_error():
    result = subprocess.run([sys.executable, "-m", "sweeps.cli", "bogus"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "invalid choice: 'bogus'" in result.stderr


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "methods" in capsys.readouterr().out


DATA = ["--dataset-option", "size=64", "--image-size", "16", "--embed-dim", "32", "--batch-size", "16"]
TINY = [*DATA, "--teacher-epochs", "1"]


def test_train_end_to_end(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--teacher",
            "test_resnet",
            "--student",
            "test_efficientnet",
            "--method",
            "l2d",
            "--lambda-cd",
            "50",
            "--epochs",
            "2",
            "--out",
            str(out),
            *TINY,
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "teacher  test_resnet" in printed and "student  test_efficientnet" in printed
    assert "lambda_cd=50" in printed and "chance level" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics["history"]] == [1, 2]
    # mosaic-digits' own L2D weights, the one given on the command line winning
    assert metrics["config"]["hparams"] == {"lambda_mld": 0.163, "lambda_cd": 50.0, "lambda_id": 23.3}
    assert 0 <= metrics["final"]["test_mAP"] <= 100
    assert (out / "student.pt").is_file() and (out / "args.yaml").is_file()
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("val/mAP")] == [1, 2]
    assert "train/cd" in events.Tags()["scalars"]
    # A second run reuses the stored teacher.
    assert (
        main(
            [
                "train",
                "--teacher",
                "test_resnet",
                "--student",
                "test_efficientnet",
                "--method",
                "kd",
                "--epochs",
                "1",
                "--out",
                str(tmp_path / "run2"),
                *TINY,
            ]
        )
        == 0
    )
    assert "training teacher" not in capsys.readouterr().err
    # A feature-level method (a trainable connector on the last stage) through the same command.
    assert (
        main(
            [
                "train",
                "--teacher",
                "test_resnet",
                "--student",
                "test_efficientnet",
                "--method",
                "hint",
                "--lambda-hint",
                "20",
                "--epochs",
                "1",
                "--out",
                str(tmp_path / "run3"),
                *TINY,
            ]
        )
        == 0
    )
    hint = json.loads((tmp_path / "run3" / "metrics.json").read_text())
    assert hint["config"]["hparams"] == {"lambda_hint": 20.0} and hint["final"]["train_hint"] > 0


def test_teacher_command_trains_then_loads(tmp_path, capsys):
    args = ["teacher", "--backbone", "test_resnet", "--epochs", "1", "--store", str(tmp_path / "store"), *DATA]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "trained and stored" in first and "val mAP" in first and "parameters" in first
    assert main([*args, "--json"]) == 0
    second = capsys.readouterr().out
    assert "loaded from the store" in second
    card = json.loads(second[second.index("{") :])
    assert card["backbone"] == "test_resnet" and card["epochs"] == 1


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--epochs", "0"], "--epochs: 0 is out of range; allowed: an integer >= 1"),
        (["train", "--method", "nope"], "invalid choice: 'nope'"),
        (["train", "--lambda-cd", "-1"], "--lambda-cd: must be a finite number >= 0"),
        (["train", "--method", "kd", "--lambda-cd", "5"], "method 'kd' has no hyperparameter 'lambda_cd'"),
        (["train", "--student", "resnet_18"], "unknown backbone 'resnet_18'"),
        (["train", "--dataset", "coco2014"], "needs a root folder"),
        (["teacher", "--dataset-option", "nonsense"], "expected KEY=VALUE"),
        (["train", "--dataset-option", "sizes=3", "--teacher-epochs", "1"], "unknown mosaic-digits option 'sizes'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message, tmp_path, capsys):
    argv = [*args, "--out", str(tmp_path / "x")] if args[0] == "train" else args
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse's own errors
        code = exit_info.code
    assert code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "x").exists()  # nothing written


def test_dataset_command(capsys):
    assert main(["dataset", "--dataset-option", "size=200", "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mosaic-digits/val: 200 images, 10 classes")
    assert "most frequent pairs" in out


def test_teacher_train_and_a_sweep_share_one_teacher_key():
    from l2d.run import teacher_key
    from sweeps.cli import build_parser
    from sweeps.cli.single import teacher_command_config, train_command_config
    from sweeps.specs import parse_spec
    from tests.sweeps.conftest import TINY_SPEC

    spec = parse_spec({**TINY_SPEC, "storage": "/tmp/unused"})
    sweep_key = teacher_key(spec.base_run().replace(teacher="test_resnet"), "data")
    data = ["--dataset-option", "scale=0.05", "--image-size", "32", "--embed-dim", "32", "--batch-size", "16"]
    parser = build_parser()
    teacher_args = parser.parse_args(["teacher", "--backbone", "test_resnet", "--epochs", "1", *data])
    train_args = parser.parse_args(
        [
            "train",
            "--teacher",
            "test_resnet",
            "--teacher-epochs",
            "1",
            "--student",
            "test_convnext",
            "--lr",
            "0.01",
            "--epochs",
            "7",
            "--method",
            "kd",
            *data,
        ]
    )
    assert teacher_key(teacher_command_config(teacher_args), "data") == sweep_key
    # The student's lr and epochs are not the key.
    assert teacher_key(train_command_config(train_args), "data") == sweep_key
    # The teacher's own settings are.
    other = parser.parse_args(
        ["train", "--teacher", "test_resnet", "--teacher-epochs", "1", "--teacher-lr", "0.01", *data]
    )
    assert teacher_key(train_command_config(other), "data") != sweep_key


def test_train_and_teacher_accept_initial_weights(tmp_path, capsys):
    import timm
    import torch

    from l2d.weights import identity

    files = {}
    for backbone in ("test_resnet", "test_efficientnet"):
        files[backbone] = tmp_path / f"{backbone}.pth"
        torch.save(timm.create_model(backbone, pretrained=False).state_dict(), files[backbone])
    store = str(tmp_path / "store")
    assert (
        main(
            [
                "teacher",
                "--backbone",
                "test_resnet",
                "--epochs",
                "1",
                "--weights",
                str(files["test_resnet"]),
                "--store",
                store,
                "--json",
                *DATA,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    card = json.loads(out[out.index("{") :])
    assert card["key"]["weights"] == identity(str(files["test_resnet"]), "test_resnet")
    # train with the same teacher weights finds that teacher; the student starts from its own file.
    assert (
        main(
            [
                "train",
                "--teacher",
                "test_resnet",
                "--teacher-weights",
                str(files["test_resnet"]),
                "--student",
                "test_efficientnet",
                "--student-weights",
                str(files["test_efficientnet"]),
                "--method",
                "kd",
                "--epochs",
                "1",
                "--store",
                store,
                "--out",
                str(tmp_path / "run"),
                *TINY,
            ]
        )
        == 0
    )
    assert "training teacher" not in capsys.readouterr().err
    recorded = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert recorded["config"]["student_weights"] == str(files["test_efficientnet"])
    assert recorded["teacher"]["digest"] == card["digest"]
