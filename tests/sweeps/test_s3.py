"""A sweep whose storage is S3: an S3-compatible server (moto) on 127.0.0.1, a small sweep, its resume, results.

The endpoint travels in the storage URI (``s3://sweeps/runs?endpoint_override=127.0.0.1:PORT&scheme=http``), so
every path the sweep builds must keep the URI's options out of its paths. Everything goes through the ordinary code
paths: Ray Tune's and Ray Train's storage, the teacher store, the checkpoints and the Parquet results. The trial
uses the ``hint`` method, whose trainable connector must be checkpointed with the student.
"""

import io
import json

import pytest

from tests.commands import l2d_sweep

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]


def test_sweep_resume_and_results_on_s3(s3_server, tiny_spec):
    import torch

    from l2d.storage import Location

    storage = f"s3://sweeps/runs?endpoint_override={s3_server}&scheme=http"
    path = tiny_spec(
        name="on-s3",
        storage=storage,
        methods=["hint"],
        search_space={"lr": 2e-3},
        budget={"num_samples": 1, "max_epochs": 2, "grace_period": 1, "reduction_factor": 2, "teacher_epochs": 1},
    )
    run = l2d_sweep("run", str(path))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    root = Location.parse(storage)
    sweep = root / "on-s3"
    for name in ("spec.yaml", "asha.json", "results/trials.parquet", "results/epochs.parquet"):
        assert (sweep / name).is_file(), name
    assert any((entry / "card.json").is_file() for entry in (root / "teachers").list())
    # Nothing was written under a path holding the URI's options.
    assert [entry.name for entry in root.list()] == ["on-s3", "teachers"]
    trial_dirs = (sweep / "train").list()
    assert len(trial_dirs) == 1
    # Checkpoints live in the bucket; the completed trial keeps its last epoch and its best (keep: best+last).
    checkpoints = [folder for folder in trial_dirs[0].list() if folder.name.startswith("epoch-")]
    assert [folder.name for folder in checkpoints] == ["epoch-0002"]
    best = json.loads((trial_dirs[0] / "best" / "best.json").read_text())  # one unit: best.json names its files
    assert all((trial_dirs[0] / "best" / name).is_file() for name in best["files"].values()), best
    state = torch.load(io.BytesIO((checkpoints[-1] / "state.pt").read_bytes()), weights_only=True)
    assert state["method"] == "hint" and "connectors.hint.conv.weight" in state["criterion"]

    # Resuming a finished sweep runs nothing again.
    resumed = l2d_sweep("resume", str(sweep))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert " started: " not in resumed.stdout

    results = l2d_sweep(
        "results",
        str(sweep),
        "--sql",
        "SELECT count(*) AS trials, min(method) AS method FROM trials",
        "--format",
        "csv",
    )
    assert results.returncode == 0, results.stderr
    assert results.stdout.splitlines() == ["trials,method", "1,hint"]
    status = l2d_sweep("status", str(sweep))
    assert status.returncode == 0 and "trials by state:" in status.stdout


def test_credentials_in_the_storage_uri_are_refused_before_anything_is_written(tiny_spec, tmp_path):
    path = tiny_spec(name="secret")
    done = l2d_sweep("run", str(path), "--storage", "s3://AKIDEXAMPLE:s3cr3tvalue@sweeps/runs", timeout=120)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "carries credentials in the URI" in lines[0], done.stderr
    assert "s3cr3tvalue" not in done.stderr + done.stdout
    assert not (tmp_path / "sweeps").exists()
