"""What a user reads is what happened (no Ray: sweep folders written by the results writer and a real Optuna study):

- a copied or renamed sweep folder reads as itself in every read command and the API, and a copy is named as one;
- ``--format csv|json|jsonl`` is the data: every column and row at full precision unless ``--columns``/``--limit``;
- one set of column names (table header, ``--columns``, ``--sql``, the API), the searched hyperparameters shown;
- the study a reader gets, and the dashboard's, cannot change the sweep's ``study.db``;
- analyses on a sweep too small for them exit 0 and say so; ``status --format json``.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
import yaml

from sweeps.cli import main
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
#: A searched value with more digits than a table shows: the data formats must carry all of them.
PRECISE = 286.873912345678


def _write_sweep(storage: Path, name: str, trials: int, base: float = 30.0) -> Path:
    """A finished sweep folder: spec, marker, results of ``trials`` trials, and its Optuna study (one trial each)."""
    from l2d.storage import Location
    from sweeps.folder.marker import write_marker
    from sweeps.search.study import study_name
    from sweeps.specs import parse_spec
    from sweeps.specs.stored import spec_digest
    from tests.sweeps.conftest import TINY_SPEC

    spec = parse_spec(
        {
            **TINY_SPEC,
            "name": name,
            "storage": str(storage),
            "methods": ["l2d"],
            "budget": {**TINY_SPEC["budget"], "num_samples": trials},
        },
        "x.yaml",
    )
    sweep = storage / name
    sweep.mkdir(parents=True)
    (sweep / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    marker = write_marker(Location.parse(sweep), spec_digest=spec_digest(spec))
    _add_trials(sweep, range(trials), base)
    study = optuna.create_study(
        study_name=study_name(spec, marker["sweep_id"]), storage=f"sqlite:///{sweep / 'study.db'}", direction="maximize"
    )
    for index in range(trials):
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": 1e-3 * (index + 1)},
                value=base + index,
                distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)},
                user_attrs={"tune_trial_id": f"{name[:3]}{index:05d}"},
            )
        )
    return sweep


def _add_trials(sweep: Path, indices, base: float = 30.0, prefix: str | None = None) -> None:
    from sweeps.results import ResultsWriter

    writer = ResultsWriter(str(sweep), max_epochs=2)
    for index in indices:
        trial = f"{(prefix or sweep.name)[:3]}{index:05d}"
        config = {
            "teacher": "test_resnet",
            "student": "test_efficientnet",
            "method": "l2d",
            "lr": 1e-3 * (index + 1),
            "lambda_mld": PRECISE + index,
            "lambda_cd": 0.14,
            "lambda_id": 23.3,
        }
        for epoch in (1, 2):
            writer.record_epoch(
                trial,
                config,
                {
                    "epoch": epoch,
                    "val_mAP": base + index + epoch / 3,
                    "test_mAP": base + index + epoch / 7,
                    "student_params": 245638.0,
                    "latency_ms": 1.5,
                    "images_per_s": 150.0,
                    "epoch_seconds": 2.0,
                },
            )
        writer.finish(trial, config)
    writer.write()
    writer.publish()


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sweeps.cli", *args],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(ROOT / ".no-home")},
        timeout=120,
    )


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    storage = tmp_path_factory.mktemp("reads") / "runs"
    _write_sweep(storage, "big", 12)
    return storage


def test_data_formats_carry_every_column_and_row_at_full_precision(storage):
    sweep = storage / "big"
    every = pq.read_table(sweep / "results" / "trials.parquet")
    by_id = {row["trial_id"]: row for row in every.to_pylist()}
    done = _run("results", str(sweep), "--format", "csv")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert len(rows) == 12 and list(rows[0]) == every.column_names  # every row (no silent --limit), every column
    for row in rows:
        assert float(row["lambda_mld"]) == by_id[row["trial_id"]]["lambda_mld"]  # not rounded
        assert float(row["best_val_mAP"]) == by_id[row["trial_id"]]["best_val_mAP"]
    for fmt in ("json", "jsonl"):
        done = _run("results", str(sweep), "--format", fmt)
        parsed = json.loads(done.stdout) if fmt == "json" else [json.loads(line) for line in done.stdout.splitlines()]
        assert len(parsed) == 12 and list(parsed[0]) == every.column_names, fmt
        assert all(r["lambda_mld"] == by_id[r["trial_id"]]["lambda_mld"] for r in parsed), fmt
    # --limit and --columns still choose.
    done = _run("results", str(sweep), "--format", "json", "--limit", "3", "--columns", "lambda_mld")
    assert [list(r) for r in json.loads(done.stdout)] == [["trial_id", "lambda_mld"]] * 3
    # The API's leaderboard: full precision, the same names.
    from sweeps.api import Sweep

    board = Sweep.open(sweep).leaderboard(limit=None)
    assert len(board) == 12 and board["lambda_mld"].tolist() == sorted(
        (r["lambda_mld"] for r in by_id.values()), reverse=True
    )  # best first: the higher index, the higher val


def test_one_set_of_column_names_and_the_table_shows_the_searched_hyperparameters(storage, capsys):
    sweep = storage / "big"
    assert main(["results", str(sweep)]) == 0
    table = capsys.readouterr().out
    header = table.splitlines()[0].split()
    assert "best_val_mAP" in header and "test_mAP_at_best" in header  # the names --columns and SQL take
    assert "lr" in header and "lambda_mld" in header  # the config beside the metric, within 100 columns
    assert len([line for line in table.splitlines() if line.startswith("big0")]) == 10  # a table: the top 10
    assert "(10 rows;" in table
    for name in header:  # every name in the header round-trips
        assert main(["results", str(sweep), "--columns", name, "--format", "json"]) == 0
        assert name in json.loads(capsys.readouterr().out)[0]
        assert main(["results", str(sweep), "--sql", f'SELECT "{name}" FROM trials', "--format", "json"]) == 0
        capsys.readouterr()
    from sweeps.api import Sweep

    assert list(Sweep.open(sweep).leaderboard(columns=header)) == list(dict.fromkeys(["trial_id", *header]))
    # A metric's short name is answered with the column's.
    assert main(["results", str(sweep), "--columns", "val_mAP"]) == 2
    assert "did you mean 'best_val_mAP'" in capsys.readouterr().err


def test_the_read_commands_print_what_the_sweep_object_returns(storage, tmp_path, capsys):
    """One way into a sweep: `results`, `status`, `list` and `compare` print the values of :class:`sweeps.api.Sweep`
    (the CLI opens the sweep there), so a notebook and the command line cannot disagree."""
    from sweeps.api import Sweep
    from sweeps.results.reader import plain_value

    def printed(*argv):
        assert main(list(argv)) == 0
        return json.loads(capsys.readouterr().out)

    def plain(rows):
        return [{k: plain_value(v) for k, v in row.items()} for row in rows]

    sweep = Sweep.open(storage / "big")
    board = sweep.results().leaderboard(None, None, every_column=True).to_pylist()
    assert printed("results", str(sweep.path), "--format", "json") == plain(board)
    assert printed("results", str(sweep.path), "--sql", "SELECT trial_id FROM trials", "--format", "json") == plain(
        sweep.sql("SELECT trial_id FROM trials").to_dict("records")
    )
    status = printed("status", str(sweep.path), "--format", "json")
    assert json.loads(json.dumps({**sweep.status().to_dict(), "path": str(sweep.path)}, default=str)) == status
    rows, unreadable = Sweep.find(storage)
    assert (
        printed("list", str(storage), "--format", "json")
        == plain([{k: v for k, v in row.items() if k != "trial_id"} for row in rows])
        and not unreadable
    )
    found = Sweep.compare([sweep.path, sweep.path])
    compared = printed("compare", str(sweep.path), str(sweep.path), "--format", "json")
    for name, table in found.tables.items():
        assert compared[name] == plain(table), name
    assert compared["column"] == found.column and compared["copies"] == found.copies


def test_a_copied_or_renamed_sweep_reads_as_itself(storage, tmp_path, capsys):
    from sweeps.api import Sweep
    from sweeps.specs.stored import load_sweep_spec

    original = storage / "big"
    copy = shutil.copytree(original, storage / "big-copy")
    _add_trials(copy, [12, 13], base=90.0, prefix="cop")  # the copy goes on: its best is its own new trial
    renamed = shutil.copytree(original, tmp_path / "elsewhere" / "renamed")  # no folder of the old name beside it
    (renamed / "results" / "trials.parquet").unlink()  # and it differs: rebuilt from its segments on read
    for folder, best in ((original, "big00011"), (copy, "cop00013"), (renamed, "big00011")):
        assert load_sweep_spec(folder).sweep_dir.path == str(folder)
        assert Sweep.open(folder).path.path == str(folder) and Sweep.open(folder).best()["trial_id"] == best
        assert main(["results", str(folder), "--format", "json", "--limit", "1"]) == 0
        assert json.loads(capsys.readouterr().out)[0]["trial_id"] == best
        assert main(["status", str(folder), "--format", "json"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["path"] == str(folder) and status["best"]["trial_id"] == best
        out = tmp_path / f"{folder.name}.png"
        assert main(["plot", str(folder), "--kind", "history", "--out", str(out)]) == 0
        assert f"plot of {folder} to" in capsys.readouterr().err and out.is_file()
    # list names each folder by itself and says which are copies of one sweep.
    assert main(["list", str(storage), "--format", "json"]) == 0
    captured = capsys.readouterr()
    listed = {row["sweep"]: row for row in json.loads(captured.out)}
    assert listed["big"]["trials"] == 12 and listed["big-copy"]["trials"] == 14
    assert listed["big"]["path"] == str(original) and listed["big-copy"]["path"] == str(copy)
    assert f"{original}, {copy} are copies of one sweep" in captured.err  # list names the paths
    # compare labels the sides by their folders, sees their real difference and names the copy.
    assert main(["compare", str(original), str(copy), "--format", "json"]) == 0
    compared = json.loads(capsys.readouterr().out)
    assert [row["sweep"] for row in compared["sweeps"]] == ["big", "big-copy"] and compared["copies"]
    [pairing] = compared["best_per_pairing"]
    assert pairing["big"] == pytest.approx(41 + 2 / 3) and pairing["big-copy"] == pytest.approx(103 + 2 / 3)
    assert pairing["diff"] == pytest.approx(62.0)
    # compare's text fits 100 columns, the paired values first, the hyperparameters in a table of their own.
    assert main(["compare", str(original), str(copy)]) == 0
    text = capsys.readouterr().out
    assert "note: " in text and all(len(line) <= 100 for line in text.splitlines()), text
    assert "the paired configurations' hyperparameters:" in text


def test_a_reader_s_study_cannot_change_the_sweep(storage):
    from sweeps.api import Sweep

    sweep = storage / "big"
    before = (sweep / "study.db").read_bytes()
    study = Sweep.open(sweep).study()
    assert len(study.trials) == 12
    with pytest.raises(optuna.exceptions.StorageInternalError):  # the read-only connection refuses the write
        study.optimize(lambda trial: trial.suggest_float("lr", 1e-4, 1.0, log=True), n_trials=1)
    with pytest.raises(optuna.exceptions.StorageInternalError):
        optuna.delete_study(study_name=study.study_name, storage=study._storage)
    assert (sweep / "study.db").read_bytes() == before
    assert len(optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{sweep / 'study.db'}").trials) == 12


def _serve(sweep: Path, *flags: str):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "sweeps.cli", "dashboard", str(sweep), "--port", str(port), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    first = server.stdout.readline()
    assert f"127.0.0.1:{port}" in first, first + server.stderr.read()
    return server, port, first


def _delete_study(port: int) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/studies/1", method="DELETE")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def test_the_dashboard_is_read_only_unless_writable(storage, tmp_path):
    pytest.importorskip("optuna_dashboard")
    sweep = storage / "big"
    before = (sweep / "study.db").read_bytes()
    server, port, first = _serve(sweep)
    try:
        assert "read-only" in first
        assert _delete_study(port) >= 400  # optuna-dashboard's delete button: refused by the read-only connection
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert (sweep / "study.db").read_bytes() == before
    # --writable is the real thing, with a warning: the same request deletes the study (of a copy here).
    copy = shutil.copytree(sweep, tmp_path / "writable")
    server, port, first = _serve(copy, "--writable")
    try:
        assert "writable" in first
        assert _delete_study(port) in (200, 204)
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert "--writable: the dashboard can change and delete the study" in err
    assert optuna.get_all_study_summaries(f"sqlite:///{copy / 'study.db'}") == []


def test_analyses_of_a_small_sweep_say_so_and_exit_0(tmp_path, capsys):
    sweep = _write_sweep(tmp_path / "runs", "small", 2)
    for kind in ("importance", "rungs"):
        out = tmp_path / f"{kind}.png"
        assert main(["plot", str(sweep), "--kind", kind, "--out", str(out)]) == 0, kind
        err = capsys.readouterr().err
        assert f"no {kind} plot drawn:" in err and not out.exists(), err
    assert main(["importance", str(sweep)]) == 0
    assert "too few for an importance" in capsys.readouterr().out
    from sweeps.api import Sweep
    from sweeps.results.plots import NotEnoughData

    with pytest.raises(NotEnoughData, match="too few for an importance"):  # the API: the same words
        Sweep.open(sweep).plot("importance")
    # Bad input is still exit 2.
    assert main(["plot", str(sweep), "--kind", "history", "--out", str(tmp_path / "x.txt")]) == 2


def test_status_says_interrupted_from_the_last_run_record(tmp_path, capsys):
    sweep = _write_sweep(tmp_path / "runs", "cut", 3)
    record = {
        "runs": [
            {
                "action": "run",
                "started": "2026-12-06T10:00:00",
                "ended": "2026-12-06T10:05:00",
                "outcome": "interrupted (SIGINT)",
            }
        ]
    }
    (sweep / "run.json").write_text(json.dumps(record))
    assert main(["status", str(sweep), "--format", "json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "interrupted" and status["detail"].startswith("by SIGINT: ")
    assert main(["status", str(sweep)]) == 0
    text = capsys.readouterr().out
    assert "the sweep is interrupted" in text and f"l2d-sweep resume {sweep}" in text
    assert main(["list", str(sweep.parent), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["state"] == "interrupted"
    record["runs"][0]["outcome"] = "3 completed"
    (sweep / "run.json").write_text(json.dumps(record))
    assert main(["status", str(sweep), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "finished"
    del record["runs"][0]["ended"]  # a driver killed without a word (SIGKILL): not "finished" either
    (sweep / "run.json").write_text(json.dumps(record))
    assert main(["status", str(sweep), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "incomplete"
