"""The three result benchmarks run end to end (tiny settings) and write the JSON the README quotes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.sweeps.conftest import TINY_SPEC

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]


def _run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True,
                          text=True, timeout=850, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture
def tiny_spec_file(tmp_path):
    spec = {**TINY_SPEC, "name": "bench", "storage": str(tmp_path / "sweeps"), "methods": ["l2d", "mld"],
            "budget": {**TINY_SPEC["budget"], "num_samples": 2, "max_epochs": 2}}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_sweep_overhead(tiny_spec_file, tmp_path):
    out = tmp_path / "overhead.json"
    printed = _run("sweep_overhead.py", "--spec", str(tiny_spec_file), "--skip-torch-trainer", "--out", str(out))
    report = json.loads(out.read_text())
    ours, plain, reuse = report["rows"]
    assert (ours["run"], plain["run"], reuse["run"]) == ("l2d-sweep", "plain Tune", "plain Tune (reuse_actors)")
    # The same trials: as many, and as many epochs each side.
    assert ours["trials"] == plain["trials"] == reuse["trials"] == 2
    assert ours["epochs"] == plain["epochs"] == reuse["epochs"] >= 2
    assert reuse["ratio_to_plain_reuse"] == 1.0
    for row in (ours, plain, reuse):
        assert 0 < row["training_s"] < row["wall_s"]
        assert row["overhead_per_trial_s"] == pytest.approx((row["wall_s"] - row["training_s"]) / row["trials"])
    assert plain["ratio_to_plain"] == 1.0 and ours["ratio_to_plain"] == pytest.approx(ours["wall_s"] / plain["wall_s"])
    assert "x plain" in printed


def test_asha_efficiency(tiny_spec_file, tmp_path):
    out = tmp_path / "asha.json"
    printed = _run("asha_efficiency.py", "--spec", str(tiny_spec_file), "--seeds", "0", "--out", str(out))
    report = json.loads(out.read_text())
    full, asha = report["rows"]
    assert full["arm"] == "random, full budget" and asha["arm"] == "TPE + ASHA"
    assert full["epochs"] == 2 * 2 and full["stopped_early"] == 0  # no early stopping: every trial, every epoch
    assert asha["epochs"] <= full["epochs"] and asha["trials"] == 2
    comparison = report["comparisons"][0]
    assert comparison["epochs_ratio"] == pytest.approx(asha["epochs"] / full["epochs"])
    assert comparison["val_mAP_diff"] == pytest.approx(asha["best_val_mAP"] - full["best_val_mAP"])
    assert "ASHA used" in printed


@pytest.mark.skipif(not FASHION.is_dir(), reason="needs the Debian package dataset-fashion-mnist")
def test_quality(tmp_path):
    out = tmp_path / "quality.json"
    printed = _run("quality.py", "--scale", "0.05", "--epochs", "2", "--teacher", "test_resnet", "--teacher-epochs",
                   "1", "--student", "test_efficientnet", "--embed-dim", "32", "--batch-size", "16", "--seeds", "0",
                   "1", "--methods", "bce", "l2d", "--tune-trials", "2", "--storage", str(tmp_path / "store"),
                   "--out", str(out))
    report = json.loads(out.read_text())
    rows = {row["method"]: row for row in report["rows"]}
    assert list(rows) == ["teacher test_resnet", "bce", "l2d", "l2d-tuned"]
    assert rows["bce"]["gap_closed"] == pytest.approx(0.0, abs=1e-9)
    assert rows["teacher test_resnet"]["gap_closed"] == 1.0
    assert all(row["seeds"] == 2 for name, row in rows.items() if not name.startswith("teacher"))
    assert all(0 <= row["test_mAP"] <= 100 for row in rows.values())
    # The weighted loss terms: BCE alone for bce, BCE + MLD + CD + ID (shares summing to 1) for l2d.
    assert rows["bce"]["loss_shares"] == {"bce": 1.0}
    assert set(rows["l2d"]["loss_shares"]) == {"bce", "mld", "cd", "id"}
    assert sum(rows["l2d"]["loss_shares"].values()) == pytest.approx(1.0)
    assert report["tuning"]["trials"] == 2 and set(report["tuning"]["weights"]) == {"lambda_mld", "lambda_cd",
                                                                                    "lambda_id"}
    assert "gap closed" in printed
    # --summarize rebuilds the same rows from the saved runs.
    _run("quality.py", "--summarize", str(out))
    assert json.loads(out.read_text())["rows"] == report["rows"]
