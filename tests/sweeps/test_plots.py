"""The plot registry: a kind added in one place (one registered function) is a choice of `l2d-sweep plot`, a kind of
`Sweep.plot` and a line of the generated command-line docs; an unknown kind is an error in each."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sweeps.results import plots

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def heatmap(monkeypatch):
    """A plot kind registered for the test alone (the registry as it was, afterwards)."""
    monkeypatch.setattr(plots, "PLOTS", dict(plots.PLOTS))

    @plots.register_plot("heatmap", "the trials' values as a heat map, a kind added by a test", "none")
    def _draw(results, spec, study, method):
        plt = plots._pyplot()
        figure, axes = plt.subplots(figsize=(3, 2))
        axes.plot(results.trials.column("best_val_mAP").to_pylist())
        return figure

    return "heatmap"


def test_a_kind_added_in_one_place_is_in_the_cli_the_api_and_the_docs(heatmap, tmp_path, capsys):
    from sweeps.api import Sweep
    from sweeps.cli import main
    from tests.sweeps.test_what_a_user_reads import _write_sweep

    sweep = _write_sweep(tmp_path / "runs", "plotted", 3)
    out = tmp_path / "heatmap.png"
    assert main(["plot", str(sweep), "--kind", heatmap, "--out", str(out)]) == 0  # the CLI's choices
    assert plots.written_by_this_tool(out.read_bytes()[:65536])
    figure = Sweep.open(sweep).plot(heatmap)  # the API
    assert figure.axes
    sys.path.insert(0, str(ROOT / "docs"))
    from gen_reference import cli_reference, commands_table

    assert "the trials' values as a heat map, a kind added by a test" in cli_reference()  # the docs
    assert "heatmap" in commands_table()
    with pytest.raises(ValueError, match="registered twice"):
        plots.register_plot(heatmap, "again")(lambda **_: None)


def test_an_unknown_kind_is_an_error_everywhere(tmp_path, capsys):
    from sweeps.api import Sweep
    from sweeps.cli import main
    from tests.sweeps.test_what_a_user_reads import _write_sweep

    sweep = _write_sweep(tmp_path / "runs", "plotted", 3)
    with pytest.raises(SystemExit) as parsed:
        main(["plot", str(sweep), "--kind", "violin", "--out", str(tmp_path / "v.png")])
    assert parsed.value.code == 2 and "invalid choice: 'violin'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown plot kind 'violin'; one of history, parallel"):
        Sweep.open(sweep).plot("violin")
    with pytest.raises(ValueError, match="unknown plot kind"):
        plots.draw("violin", None, None)
    assert not (tmp_path / "v.png").exists()


def _rung_sweep(tmp_path: Path, trials: int) -> Path:
    """A sweep of ``trials`` trials that each ran its 2 epochs (ASHA's rung at epoch 1), better with its index."""
    import yaml

    from l2d.storage import Location
    from sweeps.folder.marker import write_marker
    from sweeps.results import ResultsWriter
    from sweeps.specs import parse_spec
    from sweeps.specs.stored import spec_digest
    from tests.sweeps.conftest import TINY_SPEC

    spec = parse_spec(
        {**TINY_SPEC, "name": "r", "storage": str(tmp_path), "budget": {**TINY_SPEC["budget"], "max_epochs": 2}},
        "x.yaml",
    )
    sweep = tmp_path / "r"
    sweep.mkdir(parents=True)
    (sweep / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    write_marker(Location.parse(sweep), spec_digest=spec_digest(spec))
    writer = ResultsWriter(str(sweep), max_epochs=2)
    for index in range(trials):
        config = {"teacher": "test_resnet", "student": "test_efficientnet", "method": "l2d", "lr": 1e-3}
        for epoch in (1, 2):
            writer.record_epoch(f"r{index:05d}", config, {"epoch": epoch, "val_mAP": 30.0 + index + epoch})
        writer.finish(f"r{index:05d}", config)
    writer.write()
    writer.publish()
    return sweep


def test_the_rungs_plot_sets_each_rung_against_the_final_value(tmp_path):
    from sweeps.results import SweepResults
    from sweeps.specs.stored import load_sweep_spec

    sweep = _rung_sweep(tmp_path, 4)
    figure = plots.rungs_figure(SweepResults(sweep), load_sweep_spec(sweep))
    (axis,) = figure.axes
    assert (
        axis.get_title().startswith("rung at epoch 1: Spearman +1.00")
        and "4 trials ran every epoch" in axis.get_title()
    )
    assert len(axis.collections[0].get_offsets()) == 4
    few = _rung_sweep(tmp_path / "few", 2)
    with pytest.raises(plots.NotEnoughData, match="needs 3 trials that ran every epoch; 2 did"):
        plots.rungs_figure(SweepResults(few), load_sweep_spec(few))
