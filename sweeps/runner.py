"""Run, resume and extend sweeps: the teacher phase, then student trials under Tune + Optuna (TPE) + ASHA (the
experiment itself is built by :mod:`sweeps.experiment`).

Layout of a sweep folder (``<storage>/<name>``, local or ``s3://`` / ``gs://``)::

    .l2d-sweep             the marker: only this tool writes it (sweeps.folder)
    lease.json             who drives the sweep now (sweeps.folder)
    spec.yaml              the validated spec, as run (its budget grown by each extend)
    study.db               the Optuna study (SQLite, unless the spec's study_storage names a database)
    searcher.pkl           the searcher's state, saved after every ask and tell (sweeps.searcher)
    run.json               every run, resume and extend: versions, commit, host, devices, times (sweeps.provenance)
    tune/, tune-<k>/       Ray Tune's experiments: the first run's, then one per extend (or lost state)
    train/trial-<id>/      each trial's epoch checkpoints and best/, its best epoch (sweeps.checkpoints)
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
import sys
from dataclasses import dataclass, replace
from typing import Callable

import yaml

from l2d.storage import Location
# Tune pickles the searcher and the callbacks into the experiment; sweeps written before these moved to their own
# modules name them here, so both names must keep resolving.
from sweeps.callback import SweepCallback  # noqa: F401
from sweeps.experiment import build_tuner, callbacks, check_local_resources, init_ray, trainable, \
    tune_dir_name  # noqa: F401 - init_ray and check_local_resources are imported from here too
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
        build_tuner(spec, quiet, lease, marker["sweep_id"], warm_started=warm > 0).fit()
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
        tuner = tune.Tuner.restore(storage_path, trainable=trainable(spec), resume_unfinished=True,
                                   resume_errored=False, restart_errored=False, storage_filesystem=filesystem)
    except Exception as error:  # noqa: BLE001 - a damaged pickle or state file raises anything
        return None, f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
    # The restored experiment brings the callbacks pickled when it started; use this version's.
    tuner._local_tuner.get_run_config().callbacks = callbacks(spec, quiet, lease, sweep_id)
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
            build_tuner(replace(spec, budget=budget), quiet, lease, marker["sweep_id"], experiment).fit()
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
        build_tuner(replace(grown, budget=budget), quiet, lease, marker["sweep_id"], experiment).fit()
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
