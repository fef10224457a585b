"""Every read command on a sweep, in a pseudo-terminal of 100 columns and through pipes: tables fit the terminal,
`--format json` is one JSON document, stdout holds the data and nothing else; `list` and `compare` on real folders;
misspelt commands and flags get a suggestion; the global flags work after the command; the completion script is
valid bash and completes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _sweep(storage: Path, name: str, lr: float) -> Path:
    from l2d.storage import Location
    from sweeps.folder.marker import write_marker
    from sweeps.results import ResultsWriter
    from sweeps.specs import parse_spec
    from sweeps.specs.stored import spec_digest
    from tests.sweeps.conftest import TINY_SPEC

    spec = parse_spec(
        {
            **TINY_SPEC,
            "name": name,
            "storage": str(storage),
            "search_space": {**TINY_SPEC["search_space"], "lr": {"low": lr, "high": lr * 10}},
        },
        "x.yaml",
    )
    sweep = storage / name
    sweep.mkdir(parents=True)
    (sweep / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    write_marker(Location.parse(sweep), spec_digest=spec_digest(spec))
    writer = ResultsWriter(str(sweep), max_epochs=3)
    for index, method in enumerate(["l2d", "kd", "l2d", "kd"]):
        trial = f"{name[:3]}{index:05d}"
        config = {
            "teacher": "test_resnet",
            "student": "test_efficientnet",
            "method": method,
            "lr": lr * (index + 1),
            "lambda_mld": 10.0 if method == "l2d" else None,
            "lambda_kd": 5.0 if method == "kd" else None,
        }
        for epoch in range(1, 4 if index % 2 == 0 else 2):
            writer.record_epoch(
                trial,
                config,
                {
                    "epoch": epoch,
                    "val_mAP": 30.0 + index + epoch,
                    "test_mAP": 29.0 + index + epoch,
                    "student_params": 245638.0,
                    "latency_ms": 1.5,
                    "images_per_s": 150.0,
                    "epoch_seconds": 2.0,
                },
            )
            writer.write()
        writer.finish(trial, config)
    writer.write()
    writer.publish()
    return sweep


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    storage = tmp_path_factory.mktemp("read") / "storage"
    return storage, _sweep(storage, "alpha", 1e-3), _sweep(storage, "beta", 2e-3)


def _commands(storage: Path, alpha: Path, beta: Path) -> list[list[str]]:
    return [
        ["results", str(alpha)],
        ["results", str(alpha), "--pareto"],
        [
            "results",
            str(alpha),
            "--sql",
            "SELECT method, count(*) AS n, max(best_val_mAP) AS best FROM trials GROUP BY method ORDER BY method",
        ],
        ["status", str(alpha)],
        ["list", str(storage)],
        ["compare", str(alpha), str(beta)],
    ]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return {**env, "PYTHONPATH": str(ROOT)}


def _in_terminal(args: list[str], columns: int = 100) -> tuple[int, str]:
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "sweeps.cli", *args], stdin=slave, stdout=slave, stderr=slave, env=_env(), close_fds=True
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the other side closed: the command ended
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return process.wait(timeout=120), b"".join(chunks).decode().replace("\r\n", "\n")


def test_in_a_terminal_every_table_fits_its_width(sweeps):
    storage, alpha, beta = sweeps
    for args in _commands(storage, alpha, beta):
        code, text = _in_terminal(args)
        assert code == 0, (args, text)
        wide = [line for line in text.splitlines() if len(line) > 100]
        assert not wide, (args, wide)
    # The leaderboard is wider than 100 columns: what was left out is named under it.
    code, text = _in_terminal(["results", str(alpha)])
    assert "more column(s) not shown" in text and "--columns to choose" in text


def test_through_a_pipe_stdout_holds_the_data_only(sweeps):
    storage, alpha, beta = sweeps
    for args in _commands(storage, alpha, beta):
        done = subprocess.run([sys.executable, "-m", "sweeps.cli", *args], capture_output=True, text=True, env=_env())
        assert done.returncode == 0 and done.stderr == "", (args, done.stderr)
        assert all(len(line) <= 100 for line in done.stdout.splitlines()), args  # 100 columns without a terminal
    for args in (
        ["results", str(alpha)],
        ["list", str(storage)],
        ["compare", str(alpha), str(beta)],
        ["results", str(alpha), "--sql", "SELECT * FROM epochs"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "sweeps.cli", *args, "--format", "json"], capture_output=True, text=True, env=_env()
        )
        assert done.returncode == 0 and done.stderr == "", (args, done.stderr)
        rows = json.loads(done.stdout)  # one document, every column
        if args[0] == "compare":  # several tables: one document holding each
            assert set(rows) >= {"sweeps", "best_per_pairing", "paired", "spec_differences"}, rows
            rows = rows["sweeps"]
        assert isinstance(rows, list) and rows and isinstance(rows[0], dict), args
    board = json.loads(
        subprocess.run(
            [sys.executable, "-m", "sweeps.cli", "results", str(alpha), "--format", "json"],
            capture_output=True,
            text=True,
            env=_env(),
        ).stdout
    )
    assert [r["trial_id"] for r in board] == ["alp00002", "alp00003", "alp00000", "alp00001"]  # by val mAP
    lines = subprocess.run(
        [sys.executable, "-m", "sweeps.cli", "results", str(alpha), "--format", "jsonl"],
        capture_output=True,
        text=True,
        env=_env(),
    ).stdout.splitlines()
    assert [json.loads(line)["trial_id"] for line in lines] == [r["trial_id"] for r in board]


def test_list_and_compare_read_real_folders(sweeps, capsys):
    from sweeps.cli import main

    storage, alpha, beta = sweeps
    (storage / "not-a-sweep").mkdir(exist_ok=True)
    assert main(["list", str(storage), "--format", "json"]) == 0
    listed = {r["sweep"]: r for r in json.loads(capsys.readouterr().out)}
    assert sorted(listed) == ["alpha", "beta"]  # the folder that is no sweep is not listed
    assert (
        listed["alpha"]["trials"] == 4 and listed["alpha"]["best"] == 35.0 and listed["alpha"]["state"] == "incomplete"
    )  # 4 trials of a budget of 5, no driver
    assert main(["compare", str(alpha), str(beta)]) == 0
    text = capsys.readouterr().out
    assert (
        "best best_val_mAP per method and pairing (beta - alpha in diff):" in text
        and "spec fields that differ:" in text
    )
    # The one configuration both ran (kd, lr 4e-3, lambda_kd 5; seed 0 in both): alpha's 34.0, beta's 32.0.
    assert "paired (seed 0): 1 configuration(s) run by both; beta - alpha: mean -2.00, beta better in 0 of 1" in text, (
        text
    )
    from sweeps.results import SweepResults
    from sweeps.results.compare import best_per_pairing, paired_trials
    from sweeps.specs.stored import load_sweep_spec

    tables = [SweepResults(path).trials.to_pylist() for path in (alpha, beta)]
    board = best_per_pairing(tables, ["alpha", "beta"], "best_val_mAP", "max")
    assert [(r["method"], r["alpha"], r["beta"], r["diff"]) for r in board] == [
        ("kd", 34.0, 34.0, 0.0),
        ("l2d", 35.0, 35.0, 0.0),
    ]
    specs = [load_sweep_spec(path) for path in (alpha, beta)]
    [pair], _ = paired_trials(tables, specs, ["alpha", "beta"], "best_val_mAP")
    assert (pair["trial alpha"], pair["trial beta"], pair["diff"]) == ("alp00003", "bet00001", -2.0)
    import dataclasses

    assert paired_trials(
        tables, [specs[0], dataclasses.replace(specs[1], seed=1)], ["alpha", "beta"], "best_val_mAP"
    ) == ([], "the sweeps' seeds differ (0 and 1): no trial can be paired")
    assert "search_space.lr.low" in text and "budget" not in text.split("spec fields that differ:")[1]
    # A damaged sweep is named on stderr; the others are still listed.
    broken = shutil.copytree(alpha, storage / "gamma")
    (broken / "spec.yaml").write_text("name: [unclosed")
    assert main(["list", str(storage)]) == 0
    out, err = capsys.readouterr()
    assert "gamma" not in out and "gamma/spec.yaml: not valid YAML" in err and "alpha" in out
    shutil.rmtree(broken)


def test_a_misspelt_command_or_flag_gets_a_suggestion(capsys):
    from sweeps.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["reslts", "x"])
    assert stopped.value.code == 2 and "did you mean 'results'?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["results", "x", "--formt", "json"])
    assert "did you mean '--format'?" in capsys.readouterr().err


def test_global_flags_work_before_and_after_the_command():
    from sweeps.cli import build_parser

    parser = build_parser()
    for argv in (["-v", "status", "x"], ["status", "x", "-v"], ["status", "-v", "x"]):
        args = parser.parse_args(argv)
        assert (args.verbose, args.quiet, args.debug) == (True, False, False), argv
    args = parser.parse_args(["-q", "results", "x", "--debug"])
    assert (args.verbose, args.quiet, args.debug) == (False, True, True)


def test_the_completion_script_is_valid_bash_and_completes(tmp_path):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    script = subprocess.run(
        [sys.executable, "-m", "sweeps.cli", "completion", "bash"],
        capture_output=True,
        text=True,
        env=_env(),
        check=True,
    ).stdout
    (tmp_path / "completion.sh").write_text(script)
    probe = tmp_path / "probe.sh"
    probe.write_text(
        f"source {tmp_path / 'completion.sh'}\n"
        't() { COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]}-1)); COMPREPLY=(); _l2d_sweep; '
        'echo "${COMPREPLY[*]}"; }\n'
        "t l2d-sweep re\nt l2d-sweep results --fo\nt l2d-sweep results --format ''\n"
        "t l2d-sweep weights ''\n"
    )
    done = subprocess.run([bash, str(probe)], capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    assert lines[0] == "resume results" and lines[1] == "--format" and lines[2] == "table csv json jsonl"
    assert lines[3].split()[:2] == ["list", "check"]


def test_a_reader_that_stops_early_gets_no_error(sweeps):
    """`l2d-sweep results ... | head -1`: the command ends quietly, like a Unix tool killed by SIGPIPE (141)."""
    _, alpha, _ = sweeps
    # More than a pipe's buffer holds (64 KiB), so that the writer is still writing when the reader goes.
    many = "SELECT range AS n, 'x' AS filler FROM range(200000)"
    for args in (["results", str(alpha), "--sql", many, "--format", "jsonl"], ["results", str(alpha), "--sql", many]):
        process = subprocess.Popen(
            [sys.executable, "-m", "sweeps.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env()
        )
        process.stdout.readline()
        process.stdout.close()  # the reader is gone before the writer is done
        err = process.stderr.read().decode()
        assert process.wait(timeout=60) in (0, 141) and "Broken pipe" not in err and "Traceback" not in err, err
