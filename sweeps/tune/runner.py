"""The drivers: run, resume, extend and run-or-resume a sweep, all through one lifecycle (:func:`_drive`): check what
can be checked before anything is written, take the sweep's lease, record the driver in ``run.json``, start Ray, run
the teacher phase, run the experiment, reconcile the study with the results, and release the lease, whatever happens.
The command line, the benchmarks and the Python API call these functions and nothing below them.

Layout of a sweep folder (``<storage>/<name>``, local or ``s3://`` / ``gs://``)::

    .l2d-sweep             the marker: only this tool writes it (sweeps.folder.marker)
    lease.json             who drives the sweep now (sweeps.folder.marker)
    spec.yaml              the validated spec, as run (its budget grown by each extend)
    study.db               the Optuna study (SQLite, unless the spec's study_storage names a database)
    searcher.pkl           the searcher's state, saved after every ask and tell (sweeps.tune.searcher)
    run.json               every run, resume and extend: versions, commit, host, devices, times
    (sweeps.folder.provenance) tune/, tune-<k>/       Ray Tune's experiments: the first run's, then one per extend (or
    lost state) train/trial-<id>/      each trial's epoch checkpoints and best/, its best epoch
    (sweeps.folder.checkpoints) asha.json              ASHA's rung records (Tune does not persist scheduler state)
    results/               the trials and epochs tables (sweeps.results)
    tensorboard/           per-trial scalars and the HParams view (sweeps.tune.callback)

Every state file can be lost or damaged without losing a recorded result: Tune's experiment is restored when it
can be, and otherwise the sweep continues from its results tables and checkpoints in a new experiment (the trials
still to run, under new ids); a damaged results table, rung file, checkpoint, teacher or study database is rebuilt
or set aside where it is read, with a warning naming it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Callable

import yaml
from ray import tune

from l2d.data import check_declared
from l2d.storage import Location
from sweeps.core.interrupt import Interrupts, SweepInterrupted, after_error, after_fit
from sweeps.core.interrupt import current as current_interrupts
from sweeps.core.progress import current, opened
from sweeps.core.vocab import SCORED
from sweeps.folder.lease import LeaseError, LeaseKeeper
from sweeps.folder.marker import SweepFolderError, prepare_new, update_marker, write_marker
from sweeps.folder.provenance import RunRecord
from sweeps.folder.trust import Signatures
from sweeps.results import CorruptResultsError, ResultsWriter, SweepOutcome, SweepResults, outcome
from sweeps.results.confirm import pending, plan
from sweeps.results.teachers import write_teachers
from sweeps.search.study import (
    StudyStore,
    add_recorded,
    build_sampler,
    check_study_storage,
    check_study_version,
    open_study,
    reconcile,
    sweep_identity,
)
from sweeps.specs import SweepSpec, check_adopted_teachers, with_overrides
from sweeps.specs.stored import load_sweep_spec, spec_digest, sweep_exists
from sweeps.tune._fences import restored_search_and_scheduler, set_restored_callbacks
from sweeps.tune.experiment import (
    build_confirm_tuner,
    build_tuner,
    callbacks,
    check_local_resources,
    init_ray,
    trainable,
    tune_dir_name,
)
from sweeps.tune.scheduler import PersistentASHA
from sweeps.tune.searcher import StudySearcher
from sweeps.tune.teacher_phase import teacher_phase
from sweeps.tune.tracking import check_tracking

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriverOptions:
    """How a driver behaves (the same for run, resume and extend).

    Attributes:
        quiet: no progress lines.
        verbose: Ray workers' logs and Tune's own output.
        num_cpus: the CPUs of a local cluster (default: this machine's).
        force: take a lease another driver seems to hold (when that driver is gone).
        trust: load Tune's state and the searcher's pickles even when this user's key did not sign them (a folder the
            user vouches for); without it such a sweep continues from its results and checkpoints.
    """

    quiet: bool = False
    verbose: bool = False
    num_cpus: int | None = None
    force: bool = False
    trust: bool = False  # load the folder's pickles even when this user's key did not sign them (sweeps.folder.trust)

    def say(self) -> Callable[[str], None]:
        """The driver's message lines: through the progress view (:mod:`sweeps.core.progress`), so that on a terminal
        they scroll above its live line."""
        return (lambda text: None) if self.quiet else (lambda text: current().say(text, stamp=False))


def run_sweep(spec: SweepSpec, new: bool = False, **options) -> SweepOutcome:
    """Start the sweep of ``spec``. Refuses when its folder already holds a sweep, unless ``new`` (start over), and
    a folder that is not a sweep. Nothing is written before every check has passed; a sweep that fails before its
    first trial (a dataset it cannot read, say) leaves no folder behind."""
    driver = DriverOptions(**options)
    say = driver.say()
    if spec.warm_start:
        SweepResults(spec.warm_start)  # the sweep it starts from must be there: a one-line error before anything

    def prepare():
        prepare_new(spec.sweep_dir, new, say, driver.force)
        return write_marker(spec.sweep_dir, spec_digest=spec_digest(spec))

    def body(lease, marker):
        warm = _warm_start(spec, marker["sweep_id"], say) if spec.warm_start else 0
        say(
            f"sweep {spec.sweep_dir.name}: {spec.budget.num_samples} trials of up to {spec.budget.max_epochs} epochs"
            f"{spec.selection_cost()}, {spec.resources.max_concurrent_trials} at a time; folder {spec.sweep_dir}"
        )
        _fit(build_tuner(spec, driver.quiet, lease, marker["sweep_id"], warm_started=warm > 0))
        _confirm(spec, driver, lease, marker["sweep_id"], say)

    return _drive(spec, "run", driver, prepare, body, write_spec=True, new_folder=True)


def resume_sweep(sweep_dir: str | Location, **options) -> SweepOutcome:
    """Continue a sweep killed at any moment: finished trials stay finished, running ones continue from their
    last epoch checkpoint, the Optuna study and ASHA's rungs carry on. When Tune's experiment cannot be restored,
    the sweep continues from its recorded results in a new experiment, running only the trials still missing."""
    driver = DriverOptions(**options)
    say = driver.say()
    spec = load_sweep_spec(sweep_dir, driver=True)

    def body(lease, marker):
        if not _search_done(spec):
            search(lease, marker)
        _confirm(spec, driver, lease, marker["sweep_id"], say)

    def search(lease, marker):
        experiment = int(marker.get("experiment", 0))
        _reconcile_study(spec, marker["sweep_id"], say, finished=False)
        tuner, why = _restore(spec, driver.quiet, lease, experiment, marker["sweep_id"], driver.trust)
        if tuner is not None:
            say(f"resuming sweep {spec.sweep_dir.name} from {spec.sweep_dir}")
            _fit(tuner)
            return
        recorded = outcome(spec.sweep_dir)
        remaining = spec.budget.num_samples - recorded.finished
        if not recorded.counts:
            say(f"{spec.sweep_dir}: the sweep stopped before its first trial; starting its trials now")
        else:
            say(
                f"{spec.sweep_dir}: Tune's experiment is not restored ({why}); continuing from the "
                f"{recorded.finished} finished trial(s) in the results: {max(remaining, 0)} more in a new experiment"
            )
            experiment = _next_experiment(spec, marker)
        _reconcile_study(spec, marker["sweep_id"], say, finished=True)
        if remaining > 0:
            budget = replace(spec.budget, num_samples=remaining)
            _fit(
                build_tuner(
                    replace(spec, budget=budget),
                    driver.quiet,
                    lease,
                    marker["sweep_id"],
                    experiment,
                    total_trials=spec.budget.num_samples,
                )
            )
        else:
            _close_unfinished(spec)

    def settled(marker) -> bool:
        """A sweep whose every trial has finished needs no Ray: its results are opened (rebuilt when damaged, said
        so), the study reconciled, and that is all."""
        writer = ResultsWriter(spec.sweep_dir, spec.budget.max_epochs, spec.metric, spec.mode)  # rebuilds damage
        recorded = outcome(spec.sweep_dir)
        if (
            recorded.unfinished
            or recorded.finished < spec.budget.num_samples
            or _confirm_pending(spec, marker["sweep_id"])
        ):
            return False
        # A driver killed before or inside its last rewrite of the compacted pair: it is written now, whole.
        published = writer.manifest.published.get("generation")
        if published != writer.manifest.generation or not (
            writer.trials_file.is_file() and writer.epochs_file.is_file()
        ):
            writer.publish()
        say(f"{spec.sweep_dir}: every trial has finished ({recorded.describe()}); nothing to run")
        return True

    return _drive(spec, "resume", driver, lambda: sweep_identity(spec, repair=True), body, settled=settled)


def extend_sweep(sweep_dir: str | Location, num_samples: int, max_epochs: int | None = None, **options) -> SweepOutcome:
    """Grow a finished sweep by ``num_samples`` trials (of up to ``max_epochs`` epochs, default: as before): a new
    Tune experiment in the same folder, on the same study (the sampler sees every earlier trial), with ASHA's rungs
    and the results tables carried on. Resumable like a run (``resume``).

    Raises:
        SweepFolderError: the sweep has not finished its budget yet (resume it first).
    """
    driver = DriverOptions(**options)
    say = driver.say()
    spec, grown = _finished_spec(
        sweep_dir,
        "extend",
        lambda spec: {"budget.num_samples": spec.budget.num_samples + num_samples, "budget.max_epochs": max_epochs},
    )

    def body(lease, marker):
        update_marker(grown.sweep_dir, spec_digest=spec_digest(grown))  # its spec grows by this tool's hand
        experiment = _next_experiment(grown, marker)
        _reconcile_study(grown, marker["sweep_id"], say, finished=True)
        say(
            f"extending sweep {grown.sweep_dir.name}: {num_samples} more trial(s) of up to "
            f"{grown.budget.max_epochs} epochs "
            f"({grown.budget.num_samples} in all); experiment {tune_dir_name(experiment)}"
        )
        budget = replace(grown.budget, num_samples=num_samples)
        _fit(
            build_tuner(
                replace(grown, budget=budget),
                driver.quiet,
                lease,
                marker["sweep_id"],
                experiment,
                total_trials=grown.budget.num_samples,
            )
        )
        _confirm(grown, driver, lease, marker["sweep_id"], say)

    return _drive(grown, "extend", driver, lambda: sweep_identity(spec, repair=True), body, write_spec=True)


def confirm_sweep(
    sweep_dir: str | Location,
    top: int = 2,
    seeds: int = 3,
    baseline: str | None = "bce",
    per_method: bool = False,
    **options,
) -> SweepOutcome:
    """Confirm a finished sweep's verdict (:mod:`sweeps.results.confirm`): its ``top`` best configurations (or the best
    of each method) and ``baseline`` rerun on ``seeds`` fresh seeds, paired by seed. The stored spec gains
    ``budget.confirm``; runs already made for the same configurations and seeds are kept. Resumable (``resume``).

    Raises:
        SweepFolderError: the search has not finished its budget yet (resume it first).
        SpecError: a value ``budget.confirm`` does not allow.
    """
    driver = DriverOptions(**options)
    say = driver.say()
    stage = {"top": top, "seeds": seeds, "baseline": baseline, "per_method": per_method}
    spec, confirmed = _finished_spec(sweep_dir, "confirm", lambda spec: {"budget.confirm": stage})

    def body(lease, marker):
        update_marker(confirmed.sweep_dir, spec_digest=spec_digest(confirmed))  # its spec changes by this tool's hand
        if not _confirm(confirmed, driver, lease, marker["sweep_id"], say):
            say(f"{confirmed.sweep_dir}: every confirmation run has finished; nothing to run")

    return _drive(confirmed, "confirm", driver, lambda: sweep_identity(spec, repair=True), body, write_spec=True)


def _finished_spec(sweep_dir: str | Location, verb: str, changes) -> tuple[SweepSpec, SweepSpec]:
    """``(stored, changed)``: the stored spec of a sweep whose search has finished its budget, and that spec with
    ``changes(stored)`` applied and validated (what ``extend`` and ``confirm`` run and store).

    Raises:
        SweepFolderError: the search has not finished (resume it first).
        SpecError: a change the spec does not allow.
    """
    spec = load_sweep_spec(sweep_dir, driver=True)
    recorded = outcome(spec.sweep_dir)
    if recorded.unfinished or recorded.finished < spec.budget.num_samples:
        raise SweepFolderError(
            f"{spec.sweep_dir} has not finished its {spec.budget.num_samples} trials "
            f"({recorded.describe()}); `l2d-sweep resume {spec.sweep_dir}` first, then {verb} it"
        )
    return spec, with_overrides(spec, f"{spec.sweep_dir / 'spec.yaml'} ({verb})", **changes(spec))


def _search_done(spec: SweepSpec) -> bool:
    """Whether the search has finished its budget (every trial ended, none running or pending)."""
    recorded = outcome(spec.sweep_dir)
    return not recorded.unfinished and recorded.finished >= spec.budget.num_samples


def _confirmation_runs(spec: SweepSpec, sweep_id: str):
    """``(plan, recorded rows, runs still to make)`` of the spec's confirmation stage (no plan and no runs: the spec
    asks for none, or no search trial has a value yet)."""
    try:
        rows = SweepResults(spec.sweep_dir).trials.to_pylist()
    except FileNotFoundError:
        rows = []
    found = plan(spec, rows)
    return found, rows, pending(found, sweep_id, rows) if found is not None else []


def _confirm_pending(spec: SweepSpec, sweep_id: str) -> bool:
    """Whether the spec's confirmation stage has runs still to make."""
    return bool(_confirmation_runs(spec, sweep_id)[2])


def _confirm(spec: SweepSpec, driver: DriverOptions, lease, sweep_id: str, say) -> bool:
    """Run the confirmation stage's unfinished runs (:mod:`sweeps.results.confirm`), when the spec asks for one; whether
    there were any."""
    if spec.budget.confirm is None:
        return False
    found, rows, todo = _confirmation_runs(spec, sweep_id)
    if found is None:
        say("confirmation: no search trial has a value to confirm; nothing to run")
        return False
    if not todo:
        return False
    runs = len(found.candidates) * len(found.seeds)
    say(
        f"confirmation: {len(found.candidates)} configuration(s) ("
        + ", ".join(c.label for c in found.candidates)
        + f") on seeds {', '.join(map(str, found.seeds))}: {len(todo)} run(s) of {spec.budget.max_epochs} epochs"
        + (f" ({runs - len(todo)} of {runs} already finished)" if len(todo) < runs else "")
    )
    total = len({r["trial_id"] for r in rows} | {trial_id for trial_id, _ in todo})
    _fit(build_confirm_tuner(spec, driver.quiet, lease, sweep_id, todo, total))
    return True


def run_or_resume(spec: SweepSpec, **options) -> SweepOutcome:
    """:func:`resume_sweep` when ``spec``'s folder holds a sweep started with this very spec, :func:`run_sweep` when
    it holds none (an idempotent entry point: job submission, benchmarks).

    Raises:
        SweepFolderError: the folder's sweep was started with another spec (each difference named).
    """
    if not sweep_exists(spec.sweep_dir):
        return run_sweep(spec, **options)
    changed = spec_differences(load_sweep_spec(spec.sweep_dir).to_dict(), spec.to_dict())
    if changed:
        raise SweepFolderError(
            f"--or-resume: {spec.sweep_dir} was started with another spec ({'; '.join(changed)}); "
            f"resume it as it is (without the changes), start another sweep (--name), or grow it "
            f"with `l2d-sweep extend`"
        )
    DriverOptions(**options).say()(f"{spec.sweep_dir} exists: resuming it (--or-resume)")
    return resume_sweep(spec.sweep_dir, **options)


def spec_differences(stored: dict, given: dict, prefix: str = "") -> list[str]:
    """``field: stored X, given Y`` for every leaf that differs between two spec dicts."""
    lines = []
    for key in sorted(set(stored) | set(given), key=str):
        a, b = stored.get(key), given.get(key)
        where = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            lines += spec_differences(a, b, f"{where}.")
        elif a != b:
            lines.append(f"{where}: stored {a!r}, given {b!r}")
    return lines


# --- the lifecycle ---------------------------------------------------------------------------------------------------


def _drive(
    spec: SweepSpec,
    action: str,
    driver: DriverOptions,
    prepare: Callable[[], dict],
    body,
    write_spec: bool = False,
    new_folder: bool = False,
    settled: Callable[[dict], bool] | None = None,
) -> SweepOutcome:
    """One driver's life: checks, the folder (``prepare`` returns its marker), the lease, the record, Ray, the teacher
    phase, ``body(lease, marker)``, the study reconciled; the lease released and the record closed whatever happens.
    ``settled(marker)``, when given and true, says there is nothing to run: no Ray, no teacher phase, no body.
    A new folder (``run``) that fails before its first trial is deleted again: it holds only what this call wrote.
    Everything it prints goes through one progress view (:mod:`sweeps.core.progress`), live on a terminal."""
    with opened(driver.quiet), Interrupts():
        return _drive_in_view(spec, action, driver, prepare, body, write_spec, new_folder, settled)


def check_data(spec: SweepSpec, say: Callable[[str], None] = print) -> None:
    """A declared dataset (``format: manifest`` or ``coco``) loaded and checked before anything is written or any Ray
    process starts: a missing image, a label outside the class list, an empty split, an image in two splits are a
    one-line error (:class:`l2d.data.DatasetError`, exit 2); a class without a positive in train is said. An adopted
    teacher (``teacher_epochs`` 0) whose checkpoint names classes that are not the dataset's is refused here too."""
    manifest = check_declared(spec.dataset.name, spec.dataset.root, dict(spec.dataset.options))
    if manifest is not None:
        sizes = ", ".join(f"{split} {len(manifest.splits[split][0])}" for split in ("train", "val", "test"))
        say(f"dataset {manifest.name}: {len(manifest.class_names)} classes, {sizes} images")
        for warning in manifest.warnings:
            say(f"warning: dataset: {warning}")
        check_adopted_teachers(spec, list(manifest.class_names))


def _fit(tuner) -> None:
    """``tuner.fit()``, and :class:`sweeps.core.interrupt.SweepInterrupted` when a signal stopped it (Tune returns
    normally after its graceful stop: without this a Ctrl-C would read as the sweep's end)."""
    try:
        tuner.fit()
    except Exception as error:  # re-raised, as SweepInterrupted when a signal came first
        after_error(error)
        raise
    after_fit()


def _drive_in_view(spec, action, driver, prepare, body, write_spec, new_folder, settled) -> SweepOutcome:
    say = driver.say()
    check_local_resources(spec)
    check_tracking(spec)
    check_data(spec, say)
    study_store = StudyStore(spec.sweep_dir, spec.study_storage, reader=True)
    check_study_storage(study_store)  # a foreign file: refused, nothing touched
    check_study_version(study_store)  # a newer Optuna's: refused, nothing touched
    marker = prepare()
    lease = LeaseKeeper(spec.sweep_dir, driver.force, say).acquire()
    record = RunRecord(spec.sweep_dir, action)
    started = False
    try:
        if write_spec:
            (spec.sweep_dir / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
        record.start()
        if settled is not None and settled(marker):
            started = True
        else:
            view = current()
            view.status("starting Ray", changed=False)
            init_ray(driver.num_cpus, driver.verbose)
            interrupts = current_interrupts()
            if interrupts is not None:
                interrupts.reinstall()  # Ray's core worker took SIGTERM over
            record.ray_started()
            view.status("teacher phase", changed=False)
            cards = teacher_phase(spec, say)
            if cards:  # what `results` sets beside the students trained alone
                write_teachers(spec.sweep_dir, cards)
            view.status(f"trials: none started of {spec.budget.num_samples}", changed=False)
            started = True
            body(lease, marker)
        if lease.failure:  # Tune stopped on the SIGINT the lease's renewal sent it: this driver did not finish
            raise LeaseError(lease.failure)
        _reconcile_study(spec, marker["sweep_id"], say, finished=True)
        _sign_tune_state(spec)
    except BaseException as error:
        if started or not new_folder:
            record.end(f"LeaseError: {lease.failure}" if lease.failure else _ended_by(error))
        if started and isinstance(error, SweepInterrupted):
            _sign_tune_state(spec)  # Tune saved its state on the way out, after the callback's last signature
        lease.release()
        if new_folder and not started:
            spec.sweep_dir.delete()
            if isinstance(error, KeyboardInterrupt):
                error.folder_deleted = True  # nothing to resume: the command line says to run it again
        raise
    result = outcome(spec.sweep_dir)
    record.end(result.describe())
    lease.release()
    return result


def _ended_by(error: BaseException) -> str:
    """run.json's outcome of a driver that raised ``error``: ``interrupted (SIGINT)`` for a signal (what ``status``
    and ``list`` read), else the error's type and first line."""
    if isinstance(error, SweepInterrupted):
        return str(error)
    if isinstance(error, KeyboardInterrupt):
        return "interrupted (a second signal: stopped at once)"
    return f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"


def _warm_start(spec: SweepSpec, sweep_id: str, say) -> int:
    """Seed the new sweep's study with the finished trials of the sweep at ``spec.warm_start`` that fit this space;
    returns how many. The other sweep must exist (a one-line error otherwise, before Ray starts)."""
    source = SweepResults(spec.warm_start)
    rows = [r for r in source.search_rows() if r["status"] in SCORED]
    store = StudyStore(spec.sweep_dir, spec.study_storage)
    study = open_study(spec, sweep_id, store, build_sampler(spec))
    added, skipped = add_recorded(study, spec, rows, {"warm_start_from": spec.warm_start})
    store.push()
    reasons = ", ".join(f"{n} {why}" for why, n in skipped.items())
    say(
        f"warm start: {added} finished trial(s) of {spec.warm_start} in the study"
        + (f"; {sum(skipped.values())} skipped ({reasons})" if skipped else "")
    )
    return added


def _reconcile_study(spec: SweepSpec, sweep_id: str, say, finished: bool) -> None:
    """Bring the study in step with the results tables (see :func:`sweeps.search.study.reconcile`); ``finished``: no
    trial of the current experiment runs any more, so a study trial still running was lost."""
    try:
        results = SweepResults(spec.sweep_dir)
        rows = results.search_rows()
        searched = {r["trial_id"] for r in rows}
        metric = spec.objective_list[0][0]
        epochs: dict[str, dict[int, float]] = {}
        if metric in results.epochs.column_names:
            for row in results.epochs.select(["trial_id", "epoch", metric]).to_pylist():
                if row[metric] is not None and row["trial_id"] in searched:
                    epochs.setdefault(row["trial_id"], {})[int(row["epoch"])] = float(row[metric])
    except FileNotFoundError:
        rows, epochs = [], {}
    except CorruptResultsError as error:  # the driver's callback rebuilds the table; reconcile after the run
        logger.warning("%s; the study is reconciled once the table is rebuilt", error)
        return
    store = StudyStore(spec.sweep_dir, spec.study_storage)
    store.pull()
    study = open_study(spec, sweep_id, store, build_sampler(spec))
    fixed = reconcile(study, store, spec, rows, live=set(), fail_unknown=finished, epochs=epochs)
    store.push()
    if any(fixed.values()):
        say("study reconciled with the results: " + ", ".join(f"{n} {what}" for what, n in fixed.items() if n))


def _sign_tune_state(spec: SweepSpec) -> None:
    """Sign the state every Tune experiment of the sweep left (its last save happens after the callbacks' last
    step), so that the next resume may load it."""
    signatures = Signatures(spec.sweep_dir)
    for entry in spec.sweep_dir.list():
        if entry.name == "tune" or entry.name.startswith("tune-"):
            signatures.sign_folder(entry.name)


def _restore(spec: SweepSpec, quiet: bool, lease: LeaseKeeper, experiment: int, sweep_id: str, trust: bool = False):
    """Tune's experiment of ``spec``, restored with this version's trainable and callbacks; None when it cannot be,
    or when its files are not signed by this user's key (unless ``trust``): loading them would run any code a
    planted pickle names."""
    folder = tune_dir_name(experiment)
    storage_path, filesystem = (spec.sweep_dir / folder).ray_storage
    if not tune.Tuner.can_restore(storage_path, storage_filesystem=filesystem):
        return None, "no experiment state"
    unsigned = Signatures(spec.sweep_dir).unsigned(folder)
    if unsigned and not trust:
        return None, (
            f"{len(unsigned)} of its files are not signed by this user's key ({unsigned[0]}...): they could "
            f"run any code; pass --trust to load them if you vouch for this folder"
        )
    try:
        tuner = tune.Tuner.restore(
            storage_path,
            trainable=trainable(spec),
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
            storage_filesystem=filesystem,
        )
    except Exception as error:  # noqa: BLE001 - a damaged pickle or state file raises anything
        return None, f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
    set_restored_callbacks(tuner, callbacks(spec, quiet, lease, sweep_id, experiment))
    if not _relocate(tuner, spec, trust):
        return None, "its search algorithm is not this version's study searcher"
    return tuner, None


def _relocate(tuner, spec: SweepSpec, trust: bool) -> bool:
    """Point what Tune unpickled at this folder: the searcher's study and state, ASHA's rung file. They hold the
    paths of the folder the experiment began in, and a copied or moved sweep must never write there. False when the
    experiment holds no searcher of this version (then it is not restored)."""
    search, scheduler = restored_search_and_scheduler(tuner)
    while search is not None and not isinstance(search, StudySearcher):
        search = getattr(search, "searcher", None)  # Tune's SearchGenerator and ConcurrencyLimiter wrap it
    if search is None:  # an experiment of an older version: the sweep continues from its results instead
        return False
    search.relocate(spec, trusted=trust)
    if isinstance(scheduler, PersistentASHA):
        scheduler.state_uri = str(spec.sweep_dir / "asha.json")
    return True


def _next_experiment(spec: SweepSpec, marker: dict) -> int:
    """Number the sweep's next Tune experiment and record it in the marker (what resume restores)."""
    experiment = int(marker.get("experiment", 0)) + 1
    update_marker(spec.sweep_dir, experiment=experiment, sweep_id=marker["sweep_id"])
    marker["experiment"] = experiment
    return experiment


def _close_unfinished(spec: SweepSpec) -> None:
    """With nothing left to run, the trials still marked running were lost: mark them interrupted."""
    writer = ResultsWriter(spec.sweep_dir, spec.budget.max_epochs)
    if writer.interrupt_unknown(set()):
        writer.write()
