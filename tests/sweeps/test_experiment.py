"""The experiment's wiring without running it: what a local cluster must hold, the resources a trial asks for, the
callbacks and the collaborators each is handed, the Tune folder of each experiment."""

import pytest

from sweeps.folder.lease import LeaseKeeper
from sweeps.specs import SpecError, parse_spec
from sweeps.tune.experiment import callbacks, check_local_resources, driver_resources, tune_dir_name
from tests.sweeps.conftest import TINY_SPEC


def _spec(tmp_path, **resources):
    return parse_spec(
        {**TINY_SPEC, "storage": str(tmp_path / "sweeps"), "resources": {**TINY_SPEC["resources"], **resources}}
    )


def test_a_trial_that_does_not_fit_this_machine_is_refused(tmp_path, monkeypatch):
    import os

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cores = os.cpu_count()
    check_local_resources(_spec(tmp_path))
    with pytest.raises(SpecError, match=f"needs {cores + 1} CPUs"):
        check_local_resources(_spec(tmp_path, cpus_per_worker=cores + 1))
    with pytest.raises(SpecError, match="needs 1 GPUs"):
        check_local_resources(_spec(tmp_path, gpus_per_worker=1))
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # a cluster decides for itself
    check_local_resources(_spec(tmp_path, cpus_per_worker=cores + 1))


def test_the_callbacks_get_their_collaborators(tmp_path):
    from ray.tune.logger import JsonLoggerCallback

    spec = _spec(tmp_path)
    spec.sweep_dir.makedirs()
    lease = LeaseKeeper(spec.sweep_dir)
    callback, logger = callbacks(spec, True, lease, "sweep0")
    assert isinstance(logger, JsonLoggerCallback)
    assert callback.guard == lease.verify and callback.keep == "best+last" and callback.tracker is None
    assert callable(callback.exporter)
    assert callbacks(spec, True, None)[0].guard is None


def test_experiment_folders_and_driver_resources():
    assert [tune_dir_name(k) for k in (0, 1, 2)] == ["tune", "tune-1", "tune-2"]
    assert driver_resources() == {"cpu": 0.01}  # no cluster with a trial_driver resource here
