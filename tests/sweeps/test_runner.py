"""The drivers' decisions that come before Ray starts: run-or-resume refuses a changed spec (naming each change),
extend refuses an unfinished sweep, the differences between two specs; the whole lifecycle runs in the sweep tests."""

import pytest
import yaml

from l2d.storage import Location
from sweeps.folder.marker import SweepFolderError, write_marker
from sweeps.specs import parse_spec, with_overrides
from sweeps.tune.runner import extend_sweep, run_or_resume, spec_differences
from tests.sweeps.conftest import TINY_SPEC


def _stored_sweep(tmp_path):
    spec = parse_spec({**TINY_SPEC, "storage": str(tmp_path / "sweeps")})
    spec.sweep_dir.makedirs()
    write_marker(spec.sweep_dir)
    (spec.sweep_dir / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict()))
    return spec


def test_run_or_resume_refuses_another_spec(tmp_path):
    spec = _stored_sweep(tmp_path)
    changed = with_overrides(spec, "test", **{"budget.num_samples": 50})
    with pytest.raises(SweepFolderError, match=r"budget.num_samples: stored 5, given 50"):
        run_or_resume(changed, quiet=True)


def test_extend_refuses_an_unfinished_sweep(tmp_path):
    spec = _stored_sweep(tmp_path)
    with pytest.raises(SweepFolderError, match="has not finished its 5 trials"):
        extend_sweep(spec.sweep_dir, 3, quiet=True)


def test_spec_differences_name_every_leaf():
    assert spec_differences({"a": 1, "b": {"c": 2, "d": 3}}, {"a": 1, "b": {"c": 4}}) == [
        "b.c: stored 2, given 4",
        "b.d: stored 3, given None",
    ]


def test_overrides_go_through_the_spec_again(tmp_path):
    spec = parse_spec({**TINY_SPEC, "storage": str(tmp_path)})
    grown = with_overrides(spec, "test", **{"budget.max_epochs": 1, "name": "other"})
    assert grown.budget.max_epochs == 1 and grown.budget.grace_period == 1 and grown.name == "other"
    from sweeps.specs import SpecError

    with pytest.raises(SpecError, match="test: name: 'teachers' is reserved"):
        with_overrides(spec, "test", name="teachers")
    assert Location.parse(tmp_path / "other") == grown.sweep_dir
