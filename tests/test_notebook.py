"""The notebook (notebooks/quickstart.py, jupytext) runs end to end in a real Jupyter kernel on a real sweep, and the
notebook API returns what the docs say (its cells assert it)."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_the_notebook_runs_on_a_real_sweep(tmp_path):
    jupytext = pytest.importorskip("jupytext", reason="jupytext is in the dev extra: pip install -e '.[dev]'")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is in the dev extra")
    pytest.importorskip("ipykernel", reason="ipykernel is in the dev extra")
    notebook = jupytext.read(ROOT / "notebooks" / "quickstart.py")
    os.environ["L2D_NOTEBOOK_STORAGE"] = str(tmp_path)
    try:
        nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(ROOT)}}).execute()
    finally:
        os.environ.pop("L2D_NOTEBOOK_STORAGE", None)
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "Sweep(" in text and "completed" in text  # the repr of the sweep it ran
    assert "student.safetensors" in text and (tmp_path / "exported" / "card.json").is_file()
    assert (tmp_path / "notebook" / "results" / "trials.parquet").is_file()
