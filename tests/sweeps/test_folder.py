"""The sweep folder's safety: the marker, reserved names, foreign folders, and the lease between two drivers."""

import json
import os
import subprocess
import sys
import time

import pytest

from l2d.storage import Location
from sweeps import folder
from sweeps.folder import LeaseHeldError, LeaseKeeper, SweepExistsError, SweepFolderError, prepare_new


@pytest.fixture(autouse=True)
def _quick_settle(monkeypatch):
    monkeypatch.setattr(folder, "SETTLE_S", 0.05)


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


def test_a_sweep_from_before_markers_is_recognised_and_adopted(tmp_path):
    sweep = Location.parse(tmp_path / "old")
    (sweep / "spec.yaml").write_text("name: old")
    (sweep / "tune" / "tuner.pkl").write_text("x")
    assert folder.is_sweep(sweep) and folder.read_marker(sweep) is None
    marker = folder.adopt(sweep)
    assert folder.read_marker(sweep)["sweep_id"] == marker["sweep_id"] == folder.adopt(sweep)["sweep_id"]
    with pytest.raises(SweepFolderError, match="not a sweep folder"):
        folder.adopt(Location.parse(tmp_path / "nothing"))


def test_trial_ids_are_deterministic():
    ids = [folder.trial_id("abc", 0, n) for n in range(1, 50)]
    assert ids == [folder.trial_id("abc", 0, n) for n in range(1, 50)]
    assert len(set(ids)) == 49 and all(len(i) == 8 for i in ids)
    assert folder.trial_id("abc", 1, 1) != ids[0] and folder.trial_id("abd", 0, 1) != ids[0]


def test_a_second_driver_is_refused_while_the_first_holds_the_lease(tmp_path):
    sweep = Location.parse(tmp_path / "s")
    first = LeaseKeeper(sweep, say=lambda text: None).acquire()
    try:
        with pytest.raises(LeaseHeldError, match=r"is being driven by .*@.* pid \d+ .* since .* last heartbeat"):
            LeaseKeeper(sweep, say=lambda text: None).acquire()
        with pytest.raises(LeaseHeldError, match=r"refusing to delete it \(--new\) while it runs"):
            folder.write_marker(sweep)
            prepare_new(sweep, delete_existing=True, say=lambda text: None)
        assert sweep.exists()
    finally:
        first.release()
    assert not (sweep / "lease.json").exists()  # released: the next driver gets it
    LeaseKeeper(sweep, say=lambda text: None).acquire().release()


def test_a_stale_lease_is_taken_over(tmp_path, monkeypatch):
    sweep = Location.parse(tmp_path / "s")
    said = []
    # A driver on this host whose process is gone.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lease = {**json.loads(json.dumps(folder.Lease.mine().__dict__)), "pid": int(dead.stdout)}
    (sweep / "lease.json").write_text(json.dumps(lease))
    LeaseKeeper(sweep, say=said.append).acquire().release()
    assert "is gone" in said[0]
    # A driver elsewhere that stopped renewing its lease.
    (sweep / "lease.json").write_text(json.dumps({**lease, "host": "elsewhere", "heartbeat": time.time() - 10_000}))
    LeaseKeeper(sweep, say=said.append).acquire().release()
    assert "no heartbeat for" in said[1]
    # A live one elsewhere: only --force takes it.
    (sweep / "lease.json").write_text(json.dumps({**lease, "host": "elsewhere", "heartbeat": time.time()}))
    with pytest.raises(LeaseHeldError):
        LeaseKeeper(sweep, say=said.append).acquire()
    LeaseKeeper(sweep, force=True, say=said.append).acquire().release()
    assert said[2].endswith("--force")


def test_the_last_of_two_simultaneous_drivers_wins(tmp_path):
    sweep = Location.parse(tmp_path / "s")
    script = ("import sys; from sweeps import folder; from l2d.storage import Location; folder.SETTLE_S = 1.0\n"
              "try:\n    k = folder.LeaseKeeper(Location.parse(sys.argv[1]), say=lambda t: None).acquire()\n"
              "    print('held', flush=True); import time; time.sleep(2); k.release()\n"
              "except folder.LeaseHeldError as e:\n    print('refused', flush=True)\n")
    drivers = [subprocess.Popen([sys.executable, "-c", script, str(sweep)], stdout=subprocess.PIPE, text=True,
                                cwd=os.getcwd()) for _ in range(2)]
    answers = sorted(d.communicate(timeout=60)[0].strip() for d in drivers)
    assert answers == ["held", "refused"]


def test_a_driver_that_lost_its_lease_stops_without_writing(tmp_path):
    sweep = Location.parse(tmp_path / "s")
    script = ("import sys, time; from sweeps import folder; from l2d.storage import Location\n"
              "folder.SETTLE_S = 0.05\n"
              "k = folder.LeaseKeeper(Location.parse(sys.argv[1]), say=lambda t: None).acquire()\n"
              "print('held', flush=True); time.sleep(1.5); k.verify(); print('still writing', flush=True)\n")
    driver = subprocess.Popen([sys.executable, "-c", script, str(sweep)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=os.getcwd())
    assert driver.stdout.readline().strip() == "held"
    LeaseKeeper(sweep, force=True, say=lambda text: None).acquire()  # another driver takes over
    out, err = driver.communicate(timeout=60)
    assert driver.returncode == 1 and "still writing" not in out
    assert "lost the lease" in err and "without writing anything more" in err
