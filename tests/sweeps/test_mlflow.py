"""A sweep reported to a real MLflow tracking server (SQLite backend, on 127.0.0.1), read back with MLflow's client.

The server is MLflow's own (``mlflow server``), run from its own virtual environment: the full ``mlflow`` package
pins an older pyarrow than the one this project uses, so `make test` installs it apart, in ``.venv-mlflow``
(``L2D_MLFLOW_SERVER`` may name another ``mlflow`` executable). The sweep's side needs only ``mlflow-skinny``.
"""

import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sweeps.cli import main
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]


def _server_executable() -> str | None:
    for candidate in (
        os.environ.get("L2D_MLFLOW_SERVER"),
        str(REPO / ".venv-mlflow" / "bin" / "mlflow"),
        shutil.which("mlflow"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture
def mlflow_server(tmp_path):
    executable = _server_executable()
    if executable is None:
        pytest.skip("no `mlflow` server executable: `make test` installs one in .venv-mlflow (pip install mlflow)")
    port = free_port()
    log = open(tmp_path / "mlflow-server.log", "w")
    server = subprocess.Popen(
        [
            executable,
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--artifacts-destination",
            str(tmp_path / "mlflow-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.time() > deadline:
            server.kill()
            pytest.fail(f"the MLflow server did not start:\n{(tmp_path / 'mlflow-server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    yield url
    os.killpg(server.pid, 15)
    server.wait(timeout=30)
    log.close()


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_sweep_reports_every_trial_to_mlflow(tiny_spec, tmp_path, mlflow_server, ray_cleanup, capsys):
    from mlflow.tracking import MlflowClient

    path = tiny_spec(
        methods=["l2d"],
        tracking={"mlflow": {"tracking_uri": mlflow_server, "experiment": "distill"}},
        budget={"num_samples": 3, "max_epochs": 2, "grace_period": 1, "reduction_factor": 2, "teacher_epochs": 1},
    )
    assert main(["run", str(path)]) == 0
    sweep = tmp_path / "sweeps" / "tiny"
    trials = pq.read_table(sweep / "results" / "trials.parquet").to_pylist()
    epochs = pq.read_table(sweep / "results" / "epochs.parquet").to_pylist()

    def runs_by_trial():
        client = MlflowClient(tracking_uri=mlflow_server)
        experiment = client.get_experiment_by_name("distill")
        assert experiment is not None
        runs = client.search_runs([experiment.experiment_id])
        found = {}
        for run in runs:
            assert run.data.tags["l2d.trial_id"] not in found, "a trial has two MLflow runs"
            found[run.data.tags["l2d.trial_id"]] = run
        return client, found

    client, runs = runs_by_trial()
    assert set(runs) == {t["trial_id"] for t in trials}
    for trial in trials:
        run = runs[trial["trial_id"]]
        assert run.info.status == "FINISHED" and run.data.tags["l2d.status"] == trial["status"]
        assert run.data.tags["l2d.sweep"] == "tiny"
        assert float(run.data.params["lr"]) == pytest.approx(trial["lr"])
        assert float(run.data.params["lambda_mld"]) == pytest.approx(trial["lambda_mld"])
        assert run.data.params["method"] == "l2d" and run.data.params["student"] == trial["student"]
        history = client.get_metric_history(run.info.run_id, "val_mAP")
        expected = {e["epoch"]: e["val_mAP"] for e in epochs if e["trial_id"] == trial["trial_id"]}
        assert {m.step: m.value for m in history} == pytest.approx(expected)
        assert len(client.get_metric_history(run.info.run_id, "test_mAP")) == trial["epochs_run"]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "student")}
        assert {"student/student.safetensors", "student/card.json", "student/README.md"} <= artifacts

    # A resume that has nothing left to do adds no run.
    assert main(["resume", str(sweep)]) == 0
    assert set(runs_by_trial()[1]) == set(runs)


def test_an_unreachable_tracker_does_not_stop_the_sweep(monkeypatch, caplog):
    pytest.importorskip("mlflow.tracking")
    from sweeps.tune.tracking import MlflowTracker

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    tracker = MlflowTracker(f"http://127.0.0.1:{free_port()}", "x", "/tmp/sweep", "abc", "tiny")
    tracker.start("t1", {"lr": 0.1})
    tracker.epoch("t1", {"lr": 0.1}, {"epoch": 1, "val_mAP": 50.0})
    tracker.finish("t1", {"lr": 0.1}, "completed", lambda folder: None)
    assert tracker.broken
    assert sum("the sweep goes on without tracking" in r.message for r in caplog.records) == 1
