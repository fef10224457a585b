"""The sweep folder's safety: the marker, reserved names, foreign folders (the lease: tests/sweeps/test_lease.py)."""

import pytest

from l2d.storage import Location
from sweeps.folder import marker as folder
from sweeps.folder.marker import SweepExistsError, SweepFolderError, prepare_new


def test_new_sweeps_refuse_reserved_names_and_foreign_folders(tmp_path):
    storage = Location.parse(tmp_path)
    for name in ("teachers", "tensorboard", ".hidden"):
        with pytest.raises(SweepFolderError, match="is reserved"):
            prepare_new(storage / name, delete_existing=True)
    documents = tmp_path / "Documents"
    documents.mkdir()
    (documents / "thesis.tex").write_text("precious")
    for delete in (False, True):
        with pytest.raises(SweepFolderError, match="is not a sweep folder .no .l2d-sweep marker.: refusing"):
            prepare_new(storage / "Documents", delete_existing=delete)
    assert (documents / "thesis.tex").read_text() == "precious"
    (tmp_path / "empty").mkdir()
    prepare_new(storage / "empty", delete_existing=False)  # an empty folder may hold a new sweep
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SweepFolderError, match="is a file"):
        prepare_new(storage / "afile", delete_existing=True)


def test_only_a_marked_sweep_is_deleted(tmp_path):
    sweep = Location.parse(tmp_path / "mine")
    folder.write_marker(sweep)
    (sweep / "results" / "trials.parquet").write_text("x")
    with pytest.raises(SweepExistsError, match="l2d-sweep resume"):
        prepare_new(sweep, delete_existing=False)
    said = []
    prepare_new(sweep, delete_existing=True, say=said.append)
    assert not sweep.exists() and said == [f"--new: deleting the previous sweep at {sweep}"]  # said, not silent


def test_the_marker_says_what_it_is(tmp_path):
    import json
    import re
    import time

    sweep = Location.parse(tmp_path / "s")
    written = folder.write_marker(sweep, spec_digest="d")
    stored = json.loads((sweep / folder.MARKER).read_text())
    assert stored == written and stored["tool"] == "l2d-sweep" and stored["format"] == folder.FORMAT
    assert re.fullmatch(r"[0-9a-f]{16}", stored["sweep_id"]) and stored["spec_digest"] == "d"
    assert abs(time.mktime(time.strptime(stored["created"][:19], "%Y-%m-%dT%H:%M:%S")) - time.time()) < 120
    # A marker of another tool, or without an id, marks a damaged sweep: never a valid one.
    for other in ({"tool": "other", "sweep_id": "abc"}, {"tool": "l2d-sweep"}, ["l2d-sweep"]):
        (sweep / folder.MARKER).write_text(json.dumps(other))
        assert folder.read_marker(sweep)["damaged"] is True, other


def test_a_sweep_from_before_markers_is_recognised(tmp_path):
    sweep = Location.parse(tmp_path / "old")
    (sweep / "spec.yaml").write_text("name: old\npairings: []\nmethods: [l2d]\n")
    (sweep / "tune" / "experiment_state-2024-01-01_00-00-00.json").write_text("{}")
    assert folder.is_sweep(sweep) and folder.read_marker(sweep) is None
    # Its id is the one its study was named by then: a digest of its path (pinned, so old studies keep being found).
    import hashlib

    assert folder.legacy_id(sweep) == hashlib.sha256(str(tmp_path / "old").encode()).hexdigest()[:16]
    assert folder.legacy_id(sweep) != folder.legacy_id(Location.parse(tmp_path / "other"))
    assert not folder.is_sweep(Location.parse(tmp_path / "nothing"))
    # Or its results table beside its spec.
    other = Location.parse(tmp_path / "older")
    (other / "spec.yaml").write_text("name: older\npairings: []\nmethods: [kd]\n")
    (other / "results" / "trials.parquet").write_text("x")
    assert folder.is_sweep(other)


@pytest.mark.parametrize(
    "layout",
    [
        {"spec.yaml": "title: my project notes\n", "results/figures.csv": "a,b"},  # a user's spec and results
        {"spec.yaml": "name: proj\npairings: []\nmethods: [l2d]\n", "results/figures.csv": "a,b"},  # no table
        {"spec.yaml": "name: other\npairings: []\nmethods: [l2d]\n", "results/trials.parquet": "x"},  # another's name
        {"spec.yaml": "name: proj\npairings: []\n", "results/trials.parquet": "x"},  # not a sweep spec
        {"spec.yaml": "[not: a mapping", "tune/experiment_state-x.json": "{}"},  # not YAML
        {"spec.yaml": "name: proj\npairings: []\nmethods: [l2d]\n", "tune/tuner.pkl": "x"},  # no experiment state
        {"spec.yaml": "name: proj\npairings: []\nmethods: [l2d]\n", "tune/notes.json": "{}"},  # not Tune's state
        {"spec.yaml": "name: proj\npairings: []\nmethods: [l2d]\n", "tune/experiment_state-x.txt": "x"},
    ],
)
def test_a_folder_that_merely_looks_like_an_old_sweep_is_not_one_and_is_never_deleted(tmp_path, layout):
    project = tmp_path / "proj"
    for name, text in layout.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    location = Location.parse(project)
    assert not folder.is_sweep(location)
    with pytest.raises(SweepFolderError, match="is not a sweep folder") as refused:
        prepare_new(location, delete_existing=True, say=lambda text: None)
    assert "--new" not in str(refused.value)  # never advised over a folder that is not provably a sweep
    assert sorted(str(p.relative_to(project)) for p in project.rglob("*") if p.is_file()) == sorted(layout)


def test_a_damaged_marker_still_marks_a_sweep_and_is_not_rewritten_by_reading(tmp_path):
    sweep = Location.parse(tmp_path / "s")
    folder.write_marker(sweep, "abc")
    (sweep / folder.MARKER).write_text("{broken")
    marker = folder.read_marker(sweep)
    assert marker["damaged"] and marker["sweep_id"] is None and folder.is_sweep(sweep)
    assert (sweep / folder.MARKER).read_text() == "{broken"


def test_trial_ids_are_deterministic():
    ids = [folder.trial_id("abc", 0, n) for n in range(1, 50)]
    assert ids[:2] == ["883f549a", "cc2ddb4f"]  # pinned: a resumed driver must re-create the ids the first wrote
    assert len(set(ids)) == 49 and all(len(i) == 8 for i in ids)
    assert folder.trial_id("abc", 1, 1) != ids[0] and folder.trial_id("abd", 0, 1) != ids[0]
