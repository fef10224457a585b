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
