"""The sweep's Optuna study as stored: a schema from an older Optuna upgraded after a backup, one from a newer
refused, only the sweep's own file that is not a database set aside (under a unique name), a foreign path refused
before anything is touched, a locked database left alone; readers' own copies of a remote study; the sweep's id
recovered from the study and the results when its marker is lost."""

import json
import sqlite3

import optuna
import pytest
import yaml

from sweeps.folder.marker import MARKER, trial_id, write_marker
from sweeps.results import ResultsWriter
from sweeps.search.study import StudyStorageError, StudyStore, open_study, study_name, sweep_identity
from sweeps.specs import parse_spec
from sweeps.specs.stored import SweepStateError, spec_digest
from tests.sweeps.conftest import TINY_SPEC


def _spec(tmp_path, **changes):
    spec = parse_spec({**TINY_SPEC, "storage": str(tmp_path / "sweeps"), **changes})
    spec.sweep_dir.makedirs()
    return spec


def _study_with_trials(spec, sweep_id="abc"):
    store = StudyStore(spec.sweep_dir)
    study = open_study(spec, sweep_id, store)
    study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-2), n_trials=2)
    return store


def _stamp(path, revision):
    connection = sqlite3.connect(path)
    connection.execute("UPDATE alembic_version SET version_num = ?", (revision,))
    connection.commit()
    connection.close()


def test_an_older_schema_is_upgraded_after_a_backup(tmp_path, caplog):
    spec = _spec(tmp_path)
    store = _study_with_trials(spec)
    older = store.storage().get_all_versions()[1]
    store._rdb = None
    _stamp(store.local_file, older)  # what a study written by an older Optuna looks like to this one
    with caplog.at_level("WARNING"):
        study = open_study(spec, "abc", StudyStore(spec.sweep_dir))
    assert len(study.trials) == 2  # the same study, its trials kept
    backups = list(store.local_file.parent.glob("study.db.backup-*"))
    assert len(backups) == 1 and "upgraded it" in caplog.text and backups[0].name in caplog.text


def test_a_newer_schema_is_refused_and_left_alone(tmp_path):
    spec = _spec(tmp_path)
    store = _study_with_trials(spec)
    store._rdb = None
    _stamp(store.local_file, "v99.0.0.z")
    before = store.local_file.read_bytes()
    with pytest.raises(StudyStorageError, match=r"newer Optuna .*pip install -U optuna"):
        open_study(spec, "abc", StudyStore(spec.sweep_dir))
    assert store.local_file.read_bytes() == before and not list(store.local_file.parent.glob("study.db.*"))


def test_only_the_sweeps_own_file_that_is_not_a_database_is_set_aside(tmp_path):
    spec = _spec(tmp_path)
    own = spec.sweep_dir / "study.db"
    for _ in range(2):  # twice: the second set-aside copy must not replace the first
        own.write_text("this is not a database")
        study = open_study(spec, "abc", StudyStore(spec.sweep_dir))
        assert study.trials == []
    aside = sorted(p.name for p in (tmp_path / "sweeps" / "tiny").glob("study.db.corrupt-*"))
    assert len(aside) == 2 and len(set(aside)) == 2
    # A path the spec names that holds something else: refused, nothing touched.
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    named = _spec(tmp_path, name="named", study_storage=f"sqlite:///{notes}")
    with pytest.raises(StudyStorageError, match="exists and is not a SQLite database; refusing"):
        open_study(named, "abc", StudyStore(named.sweep_dir, named.study_storage))
    assert notes.read_text() == "my notes" and not list(tmp_path.glob("notes.txt.*"))
    foreign = tmp_path / "app.db"
    connection = sqlite3.connect(foreign)
    connection.execute("CREATE TABLE customers (name TEXT)")
    connection.commit()
    connection.close()
    other = _spec(tmp_path, name="other", study_storage=f"sqlite:///{foreign}")
    with pytest.raises(StudyStorageError, match="a SQLite database of something else"):
        open_study(other, "abc", StudyStore(other.sweep_dir, other.study_storage))


def test_a_locked_database_is_an_error_that_changes_nothing(tmp_path):
    spec = _spec(tmp_path)
    store = _study_with_trials(spec)
    store.storage().engine.dispose()
    lock = sqlite3.connect(store.local_file)
    lock.execute("BEGIN EXCLUSIVE")  # another process holds it
    try:
        waiting = StudyStore(spec.sweep_dir)
        waiting.timeout = 1.0
        with pytest.raises(StudyStorageError, match="nothing was changed; a locked database"):
            open_study(spec, "abc", waiting)
    finally:
        lock.rollback()
        lock.close()
    assert not list(store.local_file.parent.glob("study.db.*"))  # nothing set aside for a lock
    assert len(open_study(spec, "abc", StudyStore(spec.sweep_dir)).trials) == 2


def test_a_remote_studys_readers_get_copies_of_their_own(tmp_path):
    spec = parse_spec({**TINY_SPEC, "storage": "s3://bucket/runs"})
    driver, reader, other = (
        StudyStore(spec.sweep_dir),
        StudyStore(spec.sweep_dir, reader=True),
        StudyStore(spec.sweep_dir, reader=True),
    )
    assert len({driver.local_file, reader.local_file, other.local_file}) == 3
    assert "driver" in str(driver.local_file) and "reader-" in str(reader.local_file)


def _sweep_with_results(tmp_path, sweep_id="abc"):
    spec = _spec(tmp_path)
    write_marker(spec.sweep_dir, sweep_id, spec_digest=spec_digest(spec))
    (spec.sweep_dir / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict()))
    _study_with_trials(spec, sweep_id)
    writer = ResultsWriter(spec.sweep_dir, 3)
    writer.record_epoch(trial_id(sweep_id, 0, 1), {"method": "bce"}, {"epoch": 1, "val_mAP": 1.0})
    writer.write()
    return spec


def test_a_lost_marker_is_recovered_from_the_study_and_the_results(tmp_path, caplog):
    spec = _sweep_with_results(tmp_path)
    marker_file = spec.sweep_dir / MARKER
    for damage in ("{not json", None):
        if damage is None:
            marker_file.delete()
        else:
            marker_file.write_text(damage)
        found = sweep_identity(spec)  # a read command: recovered, nothing written
        assert found["sweep_id"] == "abc"
        assert (not marker_file.exists()) if damage is None else marker_file.read_text() == damage
    with caplog.at_level("WARNING"):
        repaired = sweep_identity(spec, repair=True)  # a driver writes it again
    assert repaired["sweep_id"] == "abc" and "recovered from the study and the results" in caplog.text
    assert sweep_identity(spec)["sweep_id"] == "abc" and not sweep_identity(spec).get("damaged")
    assert study_name(spec, "abc") in optuna.get_all_study_names(f"sqlite:///{spec.sweep_dir.path}/study.db")


def test_a_marker_nothing_vouches_for_is_refused(tmp_path):
    spec = _sweep_with_results(tmp_path)
    (spec.sweep_dir / "study.db").delete()
    (spec.sweep_dir / MARKER).write_text("{broken")
    with pytest.raises(SweepStateError, match=r"\.l2d-sweep: damaged, and no study .* vouches for the sweep's id"):
        sweep_identity(spec, repair=True)


def test_a_hand_edited_spec_is_found(tmp_path, caplog):
    from sweeps.specs.stored import load_sweep_spec

    spec = _sweep_with_results(tmp_path)
    edited = spec.to_dict()
    edited["mode"] = "min"
    (spec.sweep_dir / "spec.yaml").write_text(yaml.safe_dump(edited))
    with caplog.at_level("WARNING"):
        load_sweep_spec(spec.sweep_dir)  # a reader: reported
    assert "edited by hand" in caplog.text
    with pytest.raises(SweepStateError, match=r"spec\.yaml: differs from the spec this sweep was started with"):
        load_sweep_spec(spec.sweep_dir, driver=True)  # a driver: refused


def test_a_spec_written_before_a_setting_was_added_is_not_an_edit(tmp_path, caplog):
    """A sweep started by an older version: its spec.yaml and the marker's digest lack a setting added since (here
    ``budget.teacher_head_epochs``); parsed today the spec holds it (None), which is not an edit by hand."""
    from sweeps.specs.stored import load_sweep_spec, written_digest

    spec = _sweep_with_results(tmp_path)
    older = spec.to_dict()
    del older["budget"]["teacher_head_epochs"]
    (spec.sweep_dir / "spec.yaml").write_text(yaml.safe_dump(older, sort_keys=False))
    marker = json.loads((spec.sweep_dir / MARKER).read_text())
    stored = dict(older, storage=spec.storage)
    marker["spec_digest"] = written_digest(stored)  # what that version wrote beside it
    (spec.sweep_dir / MARKER).write_text(json.dumps(marker))
    with caplog.at_level("WARNING"):
        loaded = load_sweep_spec(spec.sweep_dir, driver=True)
    assert "edited by hand" not in caplog.text and loaded.budget.teacher_head_epochs is None
    older["mode"] = "min"  # and an edit of that file is still found
    (spec.sweep_dir / "spec.yaml").write_text(yaml.safe_dump(older, sort_keys=False))
    with pytest.raises(SweepStateError, match=r"spec\.yaml: differs from the spec this sweep was started with"):
        load_sweep_spec(spec.sweep_dir, driver=True)


def test_a_trial_asked_but_never_tagged_is_failed_as_orphaned(tmp_path):
    """A driver killed between the study's ask() and tagging the trial with its Tune id leaves a running trial that
    no Tune trial is: the reconcile at the end of the next run fails it (status orphaned), so it neither stays
    running in the dashboard nor counts as a live trial for the sampler's constant liar; tagged ones are untouched."""
    import optuna

    from sweeps.search.study import reconcile

    spec = _spec(tmp_path)
    store = StudyStore(spec.sweep_dir)
    study = open_study(spec, "abc", store)
    orphan = study.ask()
    tagged = study.ask()
    tagged.set_user_attr("tune_trial_id", "abc00001")
    fixed = reconcile(study, store, spec, [], live={"abc00001"}, fail_unknown=False)
    assert fixed["orphaned"] == 0 and study.trials[orphan.number].state == optuna.trial.TrialState.RUNNING
    fixed = reconcile(study, store, spec, [], live={"abc00001"}, fail_unknown=True)
    assert fixed["orphaned"] == 1
    after = {t.number: t for t in study.trials}
    assert after[orphan.number].state == optuna.trial.TrialState.FAIL
    assert after[orphan.number].user_attrs["status"] == "orphaned"
    assert after[tagged.number].state == optuna.trial.TrialState.RUNNING  # live: left for its Tune trial
