"""Run and resume sweeps: the teacher phase, then student trials under Tune + Optuna (TPE) + ASHA.

Layout of a sweep folder (``<storage>/<name>``, local or ``s3://`` / ``gs://``)::

    .l2d-sweep             the marker: only this tool writes it (sweeps.folder)
    lease.json             who drives the sweep now (sweeps.folder)
    spec.yaml              the validated spec, as run (its budget grown by each extend)
    study.db               the Optuna study (SQLite, unless the spec's study_storage names a database)
    tune/, tune-<k>/       Ray Tune's experiments: the first run's, then one per extend (or lost state)
    train/trial-<id>/      each trial's epoch checkpoints (sweeps.checkpoints)
    asha.json              ASHA's rung records (Tune does not persist scheduler state)
    results/               trials.parquet and epochs.parquet (sweeps.results)
    tensorboard/           per-trial scalars and the HParams view (sweeps.callback)

Teachers live beside the sweeps, in ``<storage>/teachers`` (shared by every sweep of that storage). The search
space is :mod:`sweeps.search`, the trial :mod:`sweeps.trial`, the driver's bookkeeping :mod:`sweeps.callback`.

Every state file can be lost or damaged without losing a recorded result: Tune's experiment is restored when it
can be, and otherwise the sweep continues from its results tables and checkpoints in a new experiment (the trials
still to run, under new ids); a damaged results table, rung file, checkpoint, teacher or study database is rebuilt
or set aside where it is read, with a warning naming it. The study and the results tables are reconciled before
and after every experiment (:func:`sweeps.study.reconcile`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass, replace
from typing import Callable

import yaml

from l2d.storage import Location
# Tune pickles the searcher and the callbacks into the experiment; sweeps written before these moved to their own
# modules name them here, so both names must keep resolving.
from sweeps.callback import SweepCallback  # noqa: F401
from sweeps.folder import LeaseKeeper, SweepExistsError, SweepFolderError, SweepNotFoundError  # noqa: F401
from sweeps.provenance import RunRecord
from sweeps.results import SweepResults, format_table
from sweeps.search import DefineByRunSpace  # noqa: F401
from sweeps.spec import SpecError, SweepSpec, parse_spec

logger = logging.getLogger(__name__)

#: Trial states that end a trial.
FINISHED = ("completed", "stopped", "failed")


@dataclass
class SweepOutcome:
    """What a driver leaves behind: the results and, in words, whether the sweep did its job."""

    results: SweepResults | None
    counts: dict[str, int]

    @property
    def succeeded(self) -> bool:
        """At least one trial that did not fail (the exit status 0 of ``run``/``resume``)."""
        return any(n for status, n in self.counts.items() if status != "failed")

    def describe(self) -> str:
        if not self.counts:
            return "no trial ran"
        states = ", ".join(f"{n} {status}" for status, n in sorted(self.counts.items()))
        return states if self.succeeded else f"every trial failed ({states})"


def _outcome(sweep_dir: Location) -> SweepOutcome:
    try:
        results = SweepResults(sweep_dir)
    except FileNotFoundError:
        return SweepOutcome(None, {})
    counts: dict[str, int] = {}
    for status in results.trials.column("status").to_pylist():
        counts[status] = counts.get(status, 0) + 1
    return SweepOutcome(results, counts)


def check_local_resources(spec: SweepSpec) -> None:
    """Before Ray starts: a local cluster (no ``RAY_ADDRESS``) must hold one trial and the teacher phase, and every
    backbone's initial weights must be there and fit it (on a cluster, the teacher phase checks them on the nodes).

    Raises:
        SpecError: the trial needs more CPUs or GPUs than this machine has.
        WeightsError: weights missing, unreadable or not fitting their backbone (named).
    """
    if os.environ.get("RAY_ADDRESS"):
        return
    from l2d.models import build_model
    from l2d.run import resolve

    embed_dim = resolve(spec.base_run()).embed_dim
    for backbone, source in spec.weights.items():
        build_model(backbone, 2, embed_dim, weights=source)  # found, readable, fitting; then dropped
    cores = os.cpu_count() or 1
    needed = spec.resources.workers_per_trial * spec.resources.cpus_per_worker
    if needed > cores:
        raise SpecError(f"resources: a trial needs {needed:g} CPUs (workers_per_trial {spec.resources.workers_per_trial}"
                        f" x cpus_per_worker {spec.resources.cpus_per_worker:g}) but this machine has {cores} and no "
                        f"RAY_ADDRESS is set (a local cluster); lower them, or run on a cluster")
    gpus = spec.resources.workers_per_trial * spec.resources.gpus_per_worker
    if gpus:
        import torch

        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus > available:
            raise SpecError(f"resources: a trial needs {gpus:g} GPUs (workers_per_trial x gpus_per_worker) but this "
                            f"machine has {available} and no RAY_ADDRESS is set (a local cluster); set "
                            f"gpus_per_worker: 0, or run on a GPU cluster")


def init_ray(num_cpus: int | None = None, log_to_driver: bool = False):
    """Connect to the cluster in ``RAY_ADDRESS`` when set, else start a local one.

    A local cluster keeps what it can on loopback: the dashboard on 127.0.0.1 and no metrics exporter
    (``RAY_enable_metrics_collection=false`` unless set). Ray 2.60 itself binds its GCS, raylet and worker gRPC
    servers on every interface and its agents on the node's address (it maps 127.0.0.1 to it); token
    authentication, Ray's default since 2.59, is left on. Returns Ray's context (None when Ray was already
    initialized). ``log_to_driver`` shows the workers' logs (``--verbose``).
    """
    import ray

    # One set of logs: the project's TensorBoard and tables; Tune's own CSV/JSON/TensorBoard loggers stay off.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    if ray.is_initialized():
        return None
    if os.environ.get("RAY_ADDRESS"):
        return ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=log_to_driver)
    os.environ.setdefault("RAY_enable_metrics_collection", "false")
    # One logical CPU more than the cores: each trial's driver holds 0.01 CPU while it only waits on its
    # workers, and without the headroom a worker asking for every core could never be placed beside it.
    cpus = (num_cpus or os.cpu_count() or 1) + 1
    return ray.init(num_cpus=cpus, dashboard_host="127.0.0.1", log_to_driver=log_to_driver)


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
    return tune.with_resources(trainable, driver_resources())


#: A custom resource a cluster's head node may declare (cluster/aws.yaml, gcp.yaml, kuberay/): where it exists, the
#: driver of every TorchTrainer trial asks for one unit of it, so that drivers stay on the (on-demand) head and never
#: land on a spot worker that may vanish with them.
DRIVER_RESOURCE = "trial_driver"


def driver_resources() -> dict:
    """What the driver of a TorchTrainer trial holds: a unit of :data:`DRIVER_RESOURCE` where the cluster has it,
    else a sliver of a CPU (the workers get the real ones). Its Train controller follows it to the same node."""
    import ray

    if ray.is_initialized() and ray.cluster_resources().get(DRIVER_RESOURCE, 0) >= 1:
        return {"cpu": 0, DRIVER_RESOURCE: 1}
    return {"cpu": 0.01}


def _callbacks(spec: SweepSpec, quiet: bool, lease: LeaseKeeper | None, sweep_id: str | None = None) -> list:
    from sweeps.tracking import tracker_for

    callback = SweepCallback(spec.sweep_dir, spec.budget.max_epochs, spec.metric, spec.mode, quiet)
    callback.guard = lease.verify if lease is not None else None
    callback.keep = spec.keep
    callback.tracker = tracker_for(spec, sweep_id) if sweep_id else None
    # Tune's default loggers are off (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS: its TensorBoard copy would show every
    # trial twice beside the sweep's own); its JSON log stays, as Tune reads it back to build its result grid.
    from ray.tune.logger import JsonLoggerCallback

    return [callback, JsonLoggerCallback()]


def tune_dir_name(experiment: int) -> str:
    """The folder of a sweep's ``experiment``-th Tune experiment: ``tune`` for the first, ``tune-<k>`` after."""
    return "tune" if experiment == 0 else f"tune-{experiment}"


def _tuner(spec: SweepSpec, quiet: bool, lease: LeaseKeeper | None, sweep_id: str, experiment: int = 0,
           warm_started: bool = False):
    from ray import tune

    from sweeps.scheduler import PersistentASHA
    from sweeps.search import build_search

    if spec.budget.scheduler == "asha":
        scheduler = PersistentASHA(spec.sweep_dir / "asha.json", time_attr="epoch", max_t=spec.budget.max_epochs,
                                   grace_period=spec.budget.grace_period,
                                   reduction_factor=spec.budget.reduction_factor)
    else:
        from ray.tune.schedulers import FIFOScheduler

        scheduler = FIFOScheduler()
    # Tune restarts a failed trial up to max_failures times, from the trial's own latest checkpoint: an in-process
    # trial whose process or node died, and a TorchTrainer trial whose Train run gave up (Ray Train first restarts
    # lost workers itself, ray.train.FailureConfig) or whose driver was lost with its node.
    retries = spec.resources.max_failures
    # An in-process trial's process is kept for the next trial (imports, dataset splits and teachers stay
    # loaded). A TorchTrainer trial's thread outlives its last report while the worker group shuts down, and
    # Tune fails a trial whose predecessor's thread does not end within 2 s: no reuse there.
    storage_path, filesystem = spec.sweep_dir.ray_storage
    return tune.Tuner(
        _trainable(spec),
        tune_config=tune.TuneConfig(search_alg=build_search(spec, sweep_id, experiment, warm_started),
                                    scheduler=scheduler,
                                    num_samples=spec.budget.num_samples, metric=spec.metric, mode=spec.mode,
                                    reuse_actors=spec.trainer == "in-process"),
        run_config=tune.RunConfig(name=tune_dir_name(experiment), storage_path=storage_path,
                                  storage_filesystem=filesystem, verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=retries),
                                  callbacks=_callbacks(spec, quiet, lease, sweep_id)),
    )


def _say(quiet: bool) -> Callable[[str], None]:
    return (lambda text: None) if quiet else (lambda text: print(text, flush=True))


def sweep_exists(sweep_dir: str | Location) -> bool:
    """Whether ``sweep_dir`` holds a sweep (its marker, or a spec.yaml from before markers)."""
    from sweeps.folder import is_sweep

    return is_sweep(Location.parse(sweep_dir))


def run_sweep(spec: SweepSpec, new: bool = False, quiet: bool = False, num_cpus: int | None = None,
              force: bool = False, verbose: bool = False) -> SweepOutcome:
    """Start the sweep of ``spec``. Refuses when its folder already holds a sweep, unless ``new`` (start over), and
    a folder that is not a sweep. Nothing is written before every check has passed; a sweep that fails before its
    first trial (a dataset it cannot read, say) leaves no folder behind."""
    from sweeps.folder import prepare_new, write_marker
    from sweeps.teacher_phase import teacher_phase

    from sweeps.tracking import check_tracking

    say = _say(quiet)
    check_local_resources(spec)
    check_tracking(spec)
    prepare_new(spec.sweep_dir, new, say, force)
    marker = write_marker(spec.sweep_dir)
    lease = LeaseKeeper(spec.sweep_dir, force, say).acquire()
    before_first_trial = True
    record = RunRecord(spec.sweep_dir, "run")
    try:
        (spec.sweep_dir / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
        record.start()
        warm = _warm_start(spec, marker["sweep_id"], say) if spec.warm_start else 0
        init_ray(num_cpus, verbose)
        record.ray_started()
        teacher_phase(spec, say)
        say(f"sweep {spec.name}: {spec.budget.num_samples} trials of up to {spec.budget.max_epochs} epochs, "
            f"{spec.resources.max_concurrent_trials} at a time; folder {spec.sweep_dir}")
        before_first_trial = False
        _tuner(spec, quiet, lease, marker["sweep_id"], warm_started=warm > 0).fit()
        _reconcile_study(spec, marker["sweep_id"], say, finished=True)
    except BaseException as error:
        if not before_first_trial:
            record.end(f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}")
        lease.release()
        if before_first_trial:
            spec.sweep_dir.delete()  # it holds only what this call wrote: the marker, the spec (and the lease)
        raise
    outcome = _outcome(spec.sweep_dir)
    record.end(outcome.describe())
    lease.release()
    return outcome


def load_sweep_spec(sweep_dir: str | Location) -> SweepSpec:
    """The spec stored in a sweep folder (following the folder when it moved).

    Raises:
        SweepNotFoundError: no sweep there; SpecError: its spec.yaml is unreadable or invalid (named).
    """
    from sweeps.folder import is_sweep

    sweep_dir = Location.parse(sweep_dir, "sweep folder")
    path = sweep_dir / "spec.yaml"
    if not is_sweep(sweep_dir) or not path.is_file():
        raise SweepNotFoundError(f"{sweep_dir}: no sweep here (no spec.yaml); start one with `l2d-sweep run SPEC`")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise SpecError(f"{path}: not valid YAML ({str(error).splitlines()[0]}); the sweep's stored spec is damaged"
                        ) from None
    spec = parse_spec(data, str(path))
    if spec.sweep_dir != sweep_dir:  # the folder moved: follow it
        spec = parse_spec({**spec.to_dict(), "storage": str(sweep_dir.parent)}, str(path))
    return spec


def _warm_start(spec: SweepSpec, sweep_id: str, say) -> int:
    """Seed the new sweep's study with the finished trials of the sweep at ``spec.warm_start`` that fit this space;
    returns how many. The other sweep must exist (a one-line error otherwise, before Ray starts)."""
    from sweeps.study import StudyStore, add_recorded, build_sampler, open_study

    source = SweepResults(spec.warm_start)
    rows = [r for r in source.trials.to_pylist() if r["status"] in ("completed", "stopped")]
    store = StudyStore(spec.sweep_dir, spec.study_storage)
    study = open_study(spec, sweep_id, store, build_sampler(spec))
    added, skipped = add_recorded(study, spec, rows, {"warm_start_from": spec.warm_start})
    store.push()
    reasons = ", ".join(f"{n} {why}" for why, n in skipped.items())
    say(f"warm start: {added} finished trial(s) of {spec.warm_start} in the study"
        + (f"; {sum(skipped.values())} skipped ({reasons})" if skipped else ""))
    return added


def _reconcile_study(spec: SweepSpec, sweep_id: str, say, finished: bool) -> None:
    """Bring the study in step with the results tables (see :func:`sweeps.study.reconcile`); ``finished``: no trial
    of the current experiment runs any more, so a study trial still running was lost."""
    from sweeps.study import StudyStore, build_sampler, open_study, reconcile

    from sweeps.results import CorruptResultsError

    try:
        rows = SweepResults(spec.sweep_dir).trials.to_pylist()
    except FileNotFoundError:
        rows = []
    except CorruptResultsError as error:  # the driver's callback rebuilds the table; reconcile after the run
        logger.warning("%s; the study is reconciled once the table is rebuilt", error)
        return
    store = StudyStore(spec.sweep_dir, spec.study_storage)
    store.pull()
    study = open_study(spec, sweep_id, store, build_sampler(spec))
    fixed = reconcile(study, spec, rows, live=set(), fail_unknown=finished)
    store.push()
    if any(fixed.values()):
        say("study reconciled with the results: " + ", ".join(f"{n} {what}" for what, n in fixed.items() if n))


def _restore(spec: SweepSpec, quiet: bool, lease: LeaseKeeper, experiment: int, sweep_id: str):
    """Tune's experiment of ``spec``, restored with this version's trainable and callbacks; None when it cannot be."""
    from ray import tune

    storage_path, filesystem = (spec.sweep_dir / tune_dir_name(experiment)).ray_storage
    if not tune.Tuner.can_restore(storage_path, storage_filesystem=filesystem):
        return None, "no experiment state"
    try:
        tuner = tune.Tuner.restore(storage_path, trainable=_trainable(spec), resume_unfinished=True,
                                   resume_errored=False, restart_errored=False, storage_filesystem=filesystem)
    except Exception as error:  # noqa: BLE001 - a damaged pickle or state file raises anything
        return None, f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
    # The restored experiment brings the callbacks pickled when it started; use this version's.
    tuner._local_tuner.get_run_config().callbacks = _callbacks(spec, quiet, lease, sweep_id)
    return tuner, None


def resume_sweep(sweep_dir: str | Location, quiet: bool = False, num_cpus: int | None = None,
                 force: bool = False, verbose: bool = False) -> SweepOutcome:
    """Continue a sweep killed at any moment: finished trials stay finished, running ones continue from their
    last epoch checkpoint, the Optuna study and ASHA's rungs carry on. When Tune's experiment cannot be restored,
    the sweep continues from its recorded results in a new experiment, running only the trials still missing."""
    from sweeps.folder import adopt
    from sweeps.teacher_phase import teacher_phase

    say = _say(quiet)
    spec = load_sweep_spec(sweep_dir)
    check_local_resources(spec)
    marker = adopt(spec.sweep_dir)
    experiment = int(marker.get("experiment", 0))
    with LeaseKeeper(spec.sweep_dir, force, say) as lease, _recorded(spec.sweep_dir, "resume") as record:
        init_ray(num_cpus, verbose)
        record.ray_started()
        teacher_phase(spec, say)
        _reconcile_study(spec, marker["sweep_id"], say, finished=False)
        tuner, why = _restore(spec, quiet, lease, experiment, marker["sweep_id"])
        if tuner is not None:
            say(f"resuming sweep {spec.name} from {spec.sweep_dir}")
            tuner.fit()
            _reconcile_study(spec, marker["sweep_id"], say, finished=True)
            return _outcome(spec.sweep_dir)
        recorded = _outcome(spec.sweep_dir)
        finished = sum(n for status, n in recorded.counts.items() if status in FINISHED)
        remaining = spec.budget.num_samples - finished
        if not recorded.counts:
            say(f"{spec.sweep_dir}: the sweep stopped before its first trial; starting its trials now")
        else:
            say(f"{spec.sweep_dir}: Tune's experiment cannot be restored ({why}); continuing from the {finished} "
                f"finished trial(s) in the results: {max(remaining, 0)} more in a new experiment")
            experiment = _next_experiment(spec, marker)
        _reconcile_study(spec, marker["sweep_id"], say, finished=True)
        if remaining > 0:
            budget = replace(spec.budget, num_samples=remaining)
            _tuner(replace(spec, budget=budget), quiet, lease, marker["sweep_id"], experiment).fit()
            _reconcile_study(spec, marker["sweep_id"], say, finished=True)
        else:
            _close_unfinished(spec)
    return _outcome(spec.sweep_dir)


def extend_sweep(sweep_dir: str | Location, num_samples: int, max_epochs: int | None = None, quiet: bool = False,
                 num_cpus: int | None = None, force: bool = False, verbose: bool = False) -> SweepOutcome:
    """Grow a finished sweep by ``num_samples`` trials (of up to ``max_epochs`` epochs, default: as before): a new
    Tune experiment in the same folder, on the same study (the sampler sees every earlier trial), with ASHA's rungs
    and the results tables carried on. Resumable like a run (``resume``).

    Raises:
        SweepFolderError: the sweep has not finished its budget yet (resume it first).
    """
    from sweeps.folder import adopt
    from sweeps.teacher_phase import teacher_phase

    say = _say(quiet)
    spec = load_sweep_spec(sweep_dir)
    recorded = _outcome(spec.sweep_dir)
    unfinished = sum(n for status, n in recorded.counts.items() if status not in FINISHED + ("interrupted",))
    finished = sum(n for status, n in recorded.counts.items() if status in FINISHED)
    if unfinished or finished < spec.budget.num_samples:
        raise SweepFolderError(f"{spec.sweep_dir} has not finished its {spec.budget.num_samples} trials "
                               f"({recorded.describe()}); `l2d-sweep resume {spec.sweep_dir}` first, then extend it")
    epochs = max_epochs or spec.budget.max_epochs
    grown = parse_spec({**spec.to_dict(), "budget": {**spec.to_dict()["budget"],
                                                     "num_samples": spec.budget.num_samples + num_samples,
                                                     "max_epochs": epochs,
                                                     "grace_period": min(spec.budget.grace_period, epochs)}},
                       f"{spec.sweep_dir / 'spec.yaml'} (extended)")
    check_local_resources(grown)
    marker = adopt(spec.sweep_dir)
    with LeaseKeeper(spec.sweep_dir, force, say) as lease, _recorded(spec.sweep_dir, "extend") as record:
        (grown.sweep_dir / "spec.yaml").write_text(yaml.safe_dump(grown.to_dict(), sort_keys=False))
        experiment = _next_experiment(grown, marker)
        init_ray(num_cpus, verbose)
        record.ray_started()
        teacher_phase(grown, say)
        _reconcile_study(grown, marker["sweep_id"], say, finished=True)
        say(f"extending sweep {grown.name}: {num_samples} more trial(s) of up to {epochs} epochs "
            f"({grown.budget.num_samples} in all); experiment {tune_dir_name(experiment)}")
        budget = replace(grown.budget, num_samples=num_samples)
        _tuner(replace(grown, budget=budget), quiet, lease, marker["sweep_id"], experiment).fit()
        _reconcile_study(grown, marker["sweep_id"], say, finished=True)
    return _outcome(grown.sweep_dir)


@contextlib.contextmanager
def _recorded(sweep_dir: Location, action: str):
    """A :class:`~sweeps.provenance.RunRecord` for the block: started now, ended with the sweep's outcome (or the
    error that stopped it)."""
    record = RunRecord(sweep_dir, action).start()
    try:
        yield record
    except BaseException as error:
        record.end(f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}")
        raise
    record.end(_outcome(sweep_dir).describe())


def _next_experiment(spec: SweepSpec, marker: dict) -> int:
    """Number the sweep's next Tune experiment and record it in the marker (what resume restores)."""
    experiment = int(marker.get("experiment", 0)) + 1
    _set_marker_experiment(spec.sweep_dir, experiment)
    marker["experiment"] = experiment
    return experiment


def _set_marker_experiment(sweep_dir: Location, experiment: int) -> None:
    import json

    from sweeps.folder import MARKER, read_marker

    marker = read_marker(sweep_dir) or {}
    (sweep_dir / MARKER).write_text(json.dumps({**marker, "experiment": experiment}, indent=2))


def _close_unfinished(spec: SweepSpec) -> None:
    """With nothing left to run, the trials still marked running were lost: mark them interrupted."""
    from sweeps.results import ResultsWriter

    writer = ResultsWriter(spec.sweep_dir, spec.budget.max_epochs)
    if writer.interrupt_unknown(set()):
        writer.write()


def print_leaderboard(results: SweepResults, out=sys.stdout, limit: int = 10) -> None:
    print(format_table(results.leaderboard(limit)), file=out)
