"""The sweep folder's safety: the marker, reserved names, foreign folders (the lease: tests/sweeps/test_lease.py)."""


import pytest

from l2d.storage import Location
from sweeps import folder
from sweeps.folder import SweepExistsError, SweepFolderError, prepare_new


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
    prepare_new(sweep, delete_existing=True, say=lambda text: None)
    assert not sweep.exists()


def test_a_sweep_from_before_markers_is_recognised(tmp_path):
    sweep = Location.parse(tmp_path / "old")
    (sweep / "spec.yaml").write_text("name: old")
    (sweep / "tune" / "tuner.pkl").write_text("x")
    assert folder.is_sweep(sweep) and folder.read_marker(sweep) is None
    assert folder.legacy_id(sweep) == folder.legacy_id(Location.parse(tmp_path / "old"))
    assert not folder.is_sweep(Location.parse(tmp_path / "nothing"))


def test_a_damaged_marker_still_marks_a_sweep_and_is_not_rewritten_by_reading(tmp_path):
    sweep = Location.parse(tmp_path / "s")
    folder.write_marker(sweep, "abc")
    (sweep / folder.MARKER).write_text("{broken")
    marker = folder.read_marker(sweep)
    assert marker["damaged"] and marker["sweep_id"] is None and folder.is_sweep(sweep)
    assert (sweep / folder.MARKER).read_text() == "{broken"


def test_trial_ids_are_deterministic():
    ids = [folder.trial_id("abc", 0, n) for n in range(1, 50)]
    assert ids == [folder.trial_id("abc", 0, n) for n in range(1, 50)]
    assert len(set(ids)) == 49 and all(len(i) == 8 for i in ids)
    assert folder.trial_id("abc", 1, 1) != ids[0] and folder.trial_id("abd", 0, 1) != ids[0]
