"""The shipped paper-regime spec, search_spaces/scenes.yaml, run on a small budget: pretrained EfficientNet-Lite
pairings on mosaic-scenes, every epoch row with its gradient shares."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from sweeps.cli import main
from tests.conftest import require_scenes

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(1200)]
SPEC = Path(__file__).resolve().parents[2] / "search_spaces" / "scenes.yaml"


def test_the_scenes_spec_sweeps_pretrained_pairings(tmp_path, ray_cleanup, capsys):
    require_scenes()
    data = yaml.safe_load(SPEC.read_text())
    data["dataset"]["options"] = {"scale": 0.05}  # 60 / 15 / 30 canvases
    data["budget"].update(num_samples=2, max_epochs=1, teacher_epochs=1)
    data["resources"].update(max_concurrent_trials=1)
    data["storage"] = str(tmp_path / "runs")
    path = tmp_path / "scenes.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "teacher tf_efficientnet_lite2" in out and "teacher tf_efficientnet_lite1" in out
    trials = pq.read_table(tmp_path / "runs" / "scenes" / "results" / "trials.parquet").to_pylist()
    epochs = pq.read_table(tmp_path / "runs" / "scenes" / "results" / "epochs.parquet").to_pylist()
    assert len(trials) == 2 and all(t["status"] == "completed" for t in trials)
    assert all(t["student"].startswith("tf_efficientnet_lite") for t in trials)
    # The first point is L2D's default (official) weights; every epoch row has each loss part's gradient share.
    assert trials[0]["method"] == "l2d" or trials[1]["method"] == "l2d"
    for row in epochs:
        shares = [v for k, v in row.items() if k.startswith("train_grad_share_") and v is not None]
        assert shares and sum(shares) == pytest.approx(1.0)
