"""Run and resume sweeps: the teacher phase, then student trials under Tune + Optuna (TPE) + ASHA.

Layout of a sweep folder (``<storage>/<name>``, local or ``s3://`` / ``gs://``)::

    spec.yaml              the validated spec, as run
    tune/                  Ray Tune's experiment (trial states, the Optuna searcher's state)
    train/trial-<id>/      each trial's epoch checkpoints (sweeps.checkpoints)
    asha.json              ASHA's rung records (Tune does not persist scheduler state)
    results/               trials.parquet and epochs.parquet (sweeps.results)
    tensorboard/           per-trial scalars and the HParams view (sweeps.callback)

Teachers live beside the sweeps, in ``<storage>/teachers`` (shared by every sweep of that storage). The search
space is :mod:`sweeps.search`, the trial :mod:`sweeps.trial`, the driver's bookkeeping :mod:`sweeps.callback`.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable

import yaml

from l2d.storage import Location
from sweeps.results import SweepResults, format_table
from sweeps.spec import SweepSpec, parse_spec

# Tune pickles the searcher and the callbacks into the experiment; sweeps written before these moved to their own
# modules name them here, so both names must keep resolving.
from sweeps.callback import SweepCallback  # noqa: F401
from sweeps.search import DefineByRunSpace  # noqa: F401

logger = logging.getLogger(__name__)


class SweepExistsError(ValueError):
    """``run`` was asked to start a sweep whose folder already holds one."""


class SweepNotFoundError(FileNotFoundError):
    """``resume`` was given a folder without a sweep."""


def init_ray(num_cpus: int | None = None):
    """Connect to the cluster in ``RAY_ADDRESS`` when set, else start a local one (dashboard on 127.0.0.1).

    Returns Ray's context (None when Ray was already initialized). Token authentication is Ray's default for
    local clusters since 2.59 and is left on.
    """
    import ray

    if ray.is_initialized():
        return None
    if os.environ.get("RAY_ADDRESS"):
        return ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    # One logical CPU more than the cores: each trial's driver holds 0.01 CPU while it only waits on its
    # workers, and without the headroom a worker asking for every core could never be placed beside it.
    cpus = (num_cpus or os.cpu_count() or 1) + 1
    return ray.init(num_cpus=cpus, dashboard_host="127.0.0.1", log_to_driver=False)


def _trainable(spec: SweepSpec):
    from ray import tune

    from sweeps.trial import TrialContext, run_trial

    trainable = tune.with_parameters(run_trial, context=TrialContext.from_spec(spec))
    if spec.trainer == "in-process":
        # The trial trains itself: it holds the worker's resources.
        resources = {"cpu": spec.resources.cpus_per_worker}
        if spec.resources.gpus_per_worker:
            resources["gpu"] = spec.resources.gpus_per_worker
        return tune.with_resources(trainable, resources)
    # The trial only drives a TorchTrainer: a sliver of a CPU, so that the workers get the real ones.
    return tune.with_resources(trainable, {"cpu": 0.01})


def _callbacks(spec: SweepSpec, quiet: bool) -> list:
    return [SweepCallback(spec.sweep_dir, spec.budget.max_epochs, spec.metric, spec.mode, quiet)]


def _tuner(spec: SweepSpec, quiet: bool):
    from ray import tune

    from sweeps.scheduler import PersistentASHA
    from sweeps.search import build_searcher

    if spec.budget.scheduler == "asha":
        scheduler = PersistentASHA(spec.sweep_dir / "asha.json", time_attr="epoch", max_t=spec.budget.max_epochs,
                                   grace_period=spec.budget.grace_period,
                                   reduction_factor=spec.budget.reduction_factor)
    else:
        from ray.tune.schedulers import FIFOScheduler

        scheduler = FIFOScheduler()
    # An in-process trial retries through Tune (and resumes from its own checkpoint); a TorchTrainer retries its
    # workers itself (ray.train.FailureConfig), so Tune must not retry it again.
    retries = spec.resources.max_failures if spec.trainer == "in-process" else 0
    # An in-process trial's process is kept for the next trial (imports, dataset splits and teachers stay
    # loaded). A TorchTrainer trial's thread outlives its last report while the worker group shuts down, and
    # Tune fails a trial whose predecessor's thread does not end within 2 s: no reuse there.
    storage_path, filesystem = spec.sweep_dir.ray_storage
    return tune.Tuner(
        _trainable(spec),
        tune_config=tune.TuneConfig(search_alg=build_searcher(spec), scheduler=scheduler,
                                    num_samples=spec.budget.num_samples,
                                    max_concurrent_trials=spec.resources.max_concurrent_trials, metric=spec.metric,
                                    mode=spec.mode, reuse_actors=spec.trainer == "in-process"),
        run_config=tune.RunConfig(name="tune", storage_path=storage_path, storage_filesystem=filesystem, verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=retries),
                                  callbacks=_callbacks(spec, quiet)),
    )


def _say(quiet: bool) -> Callable[[str], None]:
    return (lambda text: None) if quiet else (lambda text: print(text, flush=True))


def sweep_exists(sweep_dir: str | Location) -> bool:
    """Whether ``sweep_dir`` holds a sweep (its spec.yaml)."""
    return (Location.parse(sweep_dir) / "spec.yaml").is_file()


def run_sweep(spec: SweepSpec, new: bool = False, quiet: bool = False, num_cpus: int | None = None) -> SweepResults:
    """Start the sweep of ``spec``. Refuses when its folder already holds a sweep, unless ``new`` (start over)."""
    from sweeps.teacher_phase import teacher_phase

    say = _say(quiet)
    if sweep_exists(spec.sweep_dir):
        if not new:
            raise SweepExistsError(f"a sweep already exists at {spec.sweep_dir}; continue it with "
                                   f"`l2d-sweep resume {spec.sweep_dir}`, or pass --new to delete it and start over")
        say(f"--new: deleting the previous sweep at {spec.sweep_dir}")
        spec.sweep_dir.delete()
    init_ray(num_cpus)
    (spec.sweep_dir / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    teacher_phase(spec, say)
    say(f"sweep {spec.name}: {spec.budget.num_samples} trials of up to {spec.budget.max_epochs} epochs, "
        f"{spec.resources.max_concurrent_trials} at a time; folder {spec.sweep_dir}")
    _tuner(spec, quiet).fit()
    return SweepResults(spec.sweep_dir)


def load_sweep_spec(sweep_dir: str | Location) -> SweepSpec:
    """The spec stored in a sweep folder (following the folder when it moved)."""
    sweep_dir = Location.parse(sweep_dir, "sweep folder")
    path = sweep_dir / "spec.yaml"
    if not path.is_file():
        raise SweepNotFoundError(f"{sweep_dir}: no sweep here (spec.yaml missing); start one with `l2d-sweep run SPEC`")
    spec = parse_spec(yaml.safe_load(path.read_text()), str(path))
    if spec.sweep_dir != sweep_dir:  # the folder moved: follow it
        spec = parse_spec({**spec.to_dict(), "storage": str(sweep_dir.parent)}, str(path))
    return spec


def resume_sweep(sweep_dir: str | Location, quiet: bool = False, num_cpus: int | None = None) -> SweepResults:
    """Continue a sweep killed at any moment: finished trials stay finished, running ones continue from their
    last epoch checkpoint, the Optuna study and ASHA's rungs carry on."""
    from ray import tune

    from sweeps.teacher_phase import teacher_phase

    say = _say(quiet)
    spec = load_sweep_spec(sweep_dir)
    init_ray(num_cpus)
    tune_dir = spec.sweep_dir / "tune"
    storage_path, filesystem = tune_dir.ray_storage
    if not tune.Tuner.can_restore(storage_path, storage_filesystem=filesystem):
        say(f"{spec.sweep_dir}: the sweep stopped before its first trial; starting its trials now")
        teacher_phase(spec, say)
        _tuner(spec, quiet).fit()
        return SweepResults(spec.sweep_dir)
    teacher_phase(spec, say)
    say(f"resuming sweep {spec.name} from {spec.sweep_dir}")
    tuner = tune.Tuner.restore(storage_path, trainable=_trainable(spec), resume_unfinished=True,
                               resume_errored=False, restart_errored=False, storage_filesystem=filesystem)
    # The restored experiment brings the callbacks pickled when it started; use this version's.
    tuner._local_tuner.get_run_config().callbacks = _callbacks(spec, quiet)
    tuner.fit()
    return SweepResults(spec.sweep_dir)


def print_leaderboard(results: SweepResults, out=sys.stdout, limit: int = 10) -> None:
    print(format_table(results.leaderboard(limit)), file=out)
