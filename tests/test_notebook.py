"""The notebook (notebooks/quickstart.py, jupytext) runs end to end in a real Jupyter kernel on a real sweep, and the
notebook API returns what the docs say (its cells assert it)."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_the_notebook_runs_on_a_real_sweep(tmp_path):
    pytest.importorskip("jupytext", reason="jupytext is in the dev extra: pip install -e '.[dev]'")
    pytest.importorskip("nbclient", reason="nbclient is in the dev extra")
    pytest.importorskip("ipykernel", reason="ipykernel is in the dev extra")
    pytest.importorskip("nbconvert", reason="nbconvert is in the dev extra")
    sys.path.insert(0, str(ROOT / "docs"))
    from render_notebook import execute, render

    notebook = execute(storage=str(tmp_path))
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "Sweep(" in text and "completed" in text  # the repr of the sweep it ran
    assert "student.safetensors" in text and (tmp_path / "exported" / "card.json").is_file()
    assert (tmp_path / "notebook" / "results" / "trials.parquet").is_file()
    # The docs page it renders to (docs/render_notebook.py): the cells, their outputs, the history figure as a PNG.
    page, figures = tmp_path / "site" / "notebook.md", tmp_path / "site" / "images" / "notebook"
    page.parent.mkdir()
    written = render(notebook, page, figures)
    text = page.read_text()
    assert written and all(f.is_file() and f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in written)
    assert all(f"images/notebook/{f.name}" in text for f in written)
    assert "sweep.leaderboard()" in text and "Sweep(" in text


def _api_page_block() -> str:
    import re

    text = (ROOT / "docs" / "python-api.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)[0]


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_the_api_page_s_example_runs_on_a_real_sweep(tmp_path, monkeypatch):
    """docs/python-api.md's first block, run as it is written on a real sweep (the notebook's spec, run here)."""
    import pandas as pd

    from sweeps.api import Sweep

    code = _api_page_block()
    assert 'Sweep.open("runs/quickstart")' in code and "exports/best" in code
    spec = {
        "name": "api",
        "dataset": {"name": "mosaic-digits", "image_size": 32, "options": {"scale": 0.05}},
        "pairings": [{"teacher": "test_resnet", "students": ["test_efficientnet"]}],
        "methods": ["l2d", "kd"],
        "search_space": {"lambda_mld": {"low": 1, "high": 100}, "lr": {"low": 5e-4, "high": 5e-3}},
        "budget": {"num_samples": 3, "max_epochs": 2, "grace_period": 1, "reduction_factor": 2, "teacher_epochs": 1},
        "resources": {"workers_per_trial": 1, "cpus_per_worker": 1, "max_concurrent_trials": 1},
        "recipe": {"batch_size": 16, "embed_dim": 32},
        "storage": str(tmp_path / "runs"),
    }
    Sweep.run(spec)
    (tmp_path / "runs" / "api").rename(
        tmp_path / "runs" / "quickstart"
    )  # the page's path: a moved sweep reads as itself
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "docs/python-api.md", "exec"), namespace)
    sweep = namespace["sweep"]
    assert isinstance(sweep.leaderboard(), pd.DataFrame) and sweep.path.path == str(tmp_path / "runs" / "quickstart")
    assert (tmp_path / "exports" / "best" / "card.json").is_file()
