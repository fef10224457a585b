"""Run and resume sweeps: teacher phase, then student trials under Tune + Optuna (TPE) + ASHA.

Layout of a sweep folder (``<storage>/<name>``, local or ``s3://`` / ``gs://``)::

    spec.yaml              the validated spec, as run
    tune/                  Ray Tune's experiment (trial states, the Optuna searcher's state)
    train/trial-<id>/      each trial's Ray Train run and its last two epoch checkpoints
    asha.json              ASHA's rung records (Tune does not persist scheduler state)
    results/               trials.parquet and epochs.parquet
    tensorboard/           per-trial scalars and the HParams view

Teachers live beside the sweeps, in ``<storage>/teachers`` (shared by every sweep of that storage).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict
from typing import Callable

import pyarrow.fs as pafs
import yaml
from ray.tune import Callback

from sweeps.results import ResultsWriter, SweepResults, filesystem_for, format_table
from sweeps.spec import Range, SweepSpec, parse_spec
from sweeps.trial import HISTORY_KEY

logger = logging.getLogger(__name__)


class SweepExistsError(ValueError):
    """``run`` was asked to start a sweep whose folder already holds one."""


class SweepNotFoundError(FileNotFoundError):
    """``resume`` was given a folder without a sweep."""


# --- the search space ---------------------------------------------------------------------------------------------

class DefineByRunSpace:
    """Optuna define-by-run space: pairing -> student, method -> that method's weights (a picklable callable).

    Param names: ``pairing`` (the teacher), ``student@<teacher>`` (conditional on the pairing), ``method``, and
    the searched hyperparameters of the chosen method (and ``lr``). Fixed values come back as constants.
    """

    def __init__(self, spec: SweepSpec):
        self.pairings = [(p.teacher, list(p.students)) for p in spec.pairings]
        self.methods = list(spec.methods)
        self.search_space = {k: asdict(v) if isinstance(v, Range) else v for k, v in spec.search_space.items()}

    def __call__(self, trial) -> dict:
        from l2d.losses import METHODS

        teacher = trial.suggest_categorical("pairing", [t for t, _ in self.pairings])
        trial.suggest_categorical(f"student@{teacher}", dict(self.pairings)[teacher])
        method = trial.suggest_categorical("method", self.methods)
        constants = {}
        for name in ("lr", *METHODS[method].defaults):
            value = self.search_space.get(name)
            if isinstance(value, dict):
                trial.suggest_float(name, value["low"], value["high"], log=value["log"])
            elif value is not None:
                constants[name] = value
            elif name != "lr":
                constants[name] = METHODS[method].defaults[name]
        return constants


def first_points(spec: SweepSpec) -> list[dict]:
    """The official L2D weights (or the first method's defaults) on the first pairing, evaluated first."""
    from l2d.losses import METHODS

    method = "l2d" if "l2d" in spec.methods else spec.methods[0]
    teacher, students = spec.pairings[0].teacher, spec.pairings[0].students
    point = {"pairing": teacher, f"student@{teacher}": students[0], "method": method}
    for name, value in METHODS[method].defaults.items():
        searched = spec.search_space.get(name)
        if isinstance(searched, Range) and searched.low <= value <= searched.high:
            point[name] = value
    return [point]


# --- teacher phase -----------------------------------------------------------------------------------------------

def teacher_keys(spec: SweepSpec) -> dict[str, dict]:
    from l2d.data import DATASETS

    info = DATASETS[spec.dataset.name]
    recipe = {"epochs": spec.budget.teacher_epochs or info.teacher_epochs, "batch_size": spec.recipe.batch_size,
              "lr": info.lr, "weight_decay": spec.recipe.weight_decay, "pct_start": spec.recipe.pct_start}
    return {pairing.teacher: {
        "dataset": spec.dataset.name, "backbone": pairing.teacher,
        "image_size": spec.dataset.image_size or info.image_size, "embed_dim": spec.recipe.embed_dim or info.embed_dim,
        "recipe": recipe, "seed": spec.seed, "dataset_options": dict(spec.dataset.options)}
        for pairing in spec.pairings}


def _ensure_teacher(key: dict, store_uri: str, data_root: str | None) -> dict:
    """Ray task: load the teacher of ``key`` from the store, or train and store it. Returns its card."""
    import torch

    from l2d.teachers import TeacherKey, TeacherStore, train_teacher

    teacher_key = TeacherKey(**key)
    store = TeacherStore(store_uri)
    card = store.card(teacher_key)
    if card is not None:
        return {**card, "trained_now": False}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    _, card, trained = store.get_or_train(teacher_key, 0, lambda: train_teacher(teacher_key, data_root, device))
    return {**card, "trained_now": trained}


def teacher_phase(spec: SweepSpec, keys: dict[str, dict], store_uri: str, say: Callable[[str], None]) -> dict:
    """Every teacher the spec can pick, fetched or trained, in parallel across the cluster (one Ray task each)."""
    import ray

    from l2d.losses import METHODS

    if not any(METHODS[m].needs_teacher for m in spec.methods):
        return {}
    task = ray.remote(_ensure_teacher).options(num_cpus=spec.resources.cpus_per_worker,
                                                num_gpus=spec.resources.gpus_per_worker, max_retries=1)
    say(f"teacher phase: {len(keys)} teacher(s) from the store {store_uri} (trained there when missing)")
    refs = {teacher: task.remote(key, store_uri, spec.dataset.root) for teacher, key in keys.items()}
    cards = {}
    for teacher, ref in refs.items():
        card = ray.get(ref)
        cards[teacher] = card
        say(f"  teacher {teacher}: {'trained' if card['trained_now'] else 'loaded'}, val mAP {card['val_mAP']:.2f}, "
            f"test mAP {card['test_mAP']:.2f}, {card['parameters']:,} parameters")
    return cards


# --- progress, results and TensorBoard (a Tune callback in the driver) -------------------------------------------

class SweepCallback(Callback):
    """Records every epoch report and trial end into the results tables and TensorBoard, and prints progress."""

    def __init__(self, sweep_dir: str, max_epochs: int, metric: str, mode: str, quiet: bool = False):
        self.sweep_dir = sweep_dir
        self.max_epochs = max_epochs
        self.metric = metric
        self.mode = mode
        self.quiet = quiet
        self._writer = None
        self._boards: dict = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_writer"], state["_boards"] = None, {}
        return state

    @property
    def writer(self) -> ResultsWriter:
        if self._writer is None:
            self._writer = ResultsWriter(self.sweep_dir, self.max_epochs)
        return self._writer

    def _say(self, text: str) -> None:
        if not self.quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def _board(self, trial_id: str):
        if trial_id not in self._boards:
            from torch.utils.tensorboard import SummaryWriter

            self._boards[trial_id] = SummaryWriter(_local_tensorboard_dir(self.sweep_dir, trial_id))
        return self._boards[trial_id]

    def _summary(self) -> str:
        counts: dict[str, int] = {}
        for record in self.writer.trials.values():
            counts[record.status] = counts.get(record.status, 0) + 1
        rows = self.writer.trial_rows()
        scored = [r for r in rows if r["best_val_mAP"] is not None] if rows else []
        best = max(scored, key=lambda r: r["best_val_mAP"], default=None)
        state = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        if best is None:
            return state
        return (f"{state}; best val mAP {best['best_val_mAP']:.2f} (test {best['test_mAP_at_best']:.2f}) by "
                f"{best['trial_id']} {best['student']} {best['method']}")

    def on_trial_start(self, iteration, trials, trial, **info):
        from sweeps.trial import normalize_config

        config = normalize_config(trial.config)
        self.writer.trial(trial.trial_id, config).status = "running"
        self._write()
        self._say(f"trial {trial.trial_id} started: {config['teacher']} -> {config['student']}, {config['method']}, "
                  + ", ".join(f"{k}={v:.3g}" for k, v in config.items() if isinstance(v, float)))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from sweeps.trial import normalize_config

        if "epoch" not in result:
            return
        config = normalize_config(trial.config)
        for earlier in json.loads(result.get(HISTORY_KEY) or "[]"):
            if not self.writer.has_epoch(trial.trial_id, int(earlier["epoch"])):
                self.writer.record_epoch(trial.trial_id, config, earlier)
        self.writer.record_epoch(trial.trial_id, config, result)
        # Written at every report (a small table), before anything is printed: a driver killed at any moment
        # loses no epoch row that it announced.
        self._write()
        board = self._board(trial.trial_id)
        epoch = int(result["epoch"])
        for name, value in result.items():
            if name.startswith(("val_", "train_", "test_")) or name in ("images_per_s", "lr"):
                if isinstance(value, (int, float)) and math.isfinite(value):
                    board.add_scalar(name.replace("_", "/", 1), value, epoch)
        board.flush()
        self._say(f"trial {trial.trial_id} epoch {epoch}/{self.max_epochs}: val mAP {result.get('val_mAP', math.nan):.2f}"
                  f", test mAP {result.get('test_mAP', math.nan):.2f}, {result.get('images_per_s', 0):.0f} img/s | "
                  f"{self._summary()}")

    def _end(self, trial, error: str | None) -> None:
        from sweeps.trial import normalize_config

        config = normalize_config(trial.config)
        self.writer.finish(trial.trial_id, config, error)
        record = self.writer.trials[trial.trial_id]
        row = next(r for r in self.writer.trial_rows() if r["trial_id"] == trial.trial_id)
        if row.get("best_val_mAP") is not None:
            hparams = {k: v for k, v in config.items() if isinstance(v, (int, float, str)) and v is not None}
            board = self._board(trial.trial_id)
            board.add_hparams(hparams, {"hparam/best_val_mAP": row["best_val_mAP"],
                                        "hparam/test_mAP_at_best": row.get("test_mAP_at_best") or math.nan},
                              run_name=".")
            board.flush()
        message = f"trial {trial.trial_id} {record.status}" + (f": {error}" if error else "")
        self._say(f"{message} | {self._summary()}")
        self._write()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, _error_message(trial))

    def on_experiment_end(self, trials, **info):
        # A trial started moments before a crash, after Tune's last save of its state, is unknown to the resumed
        # experiment (which ran another in its place): drop its rows so every row is a trial Tune ran.
        ghosts = self.writer.forget_except({trial.trial_id for trial in trials})
        if ghosts:
            self._say(f"dropped {len(ghosts)} trial(s) lost in the crash before Tune saved them: {', '.join(ghosts)}")
        self._write()
        for board in self._boards.values():
            board.close()
        self._boards = {}
        _upload_tensorboard(self.sweep_dir)

    def _write(self) -> None:
        self.writer.write()


def _local_tensorboard_dir(sweep_dir: str, trial_id: str) -> str:
    """TensorBoard files are written locally (under the sweep folder when it is local) and uploaded at the end."""
    if "://" in sweep_dir:
        from l2d.data.mosaic import default_cache_dir

        safe = sweep_dir.replace("://", "_").replace("/", "_")
        return str(default_cache_dir() / "tensorboard" / safe / trial_id)
    return os.path.join(sweep_dir, "tensorboard", trial_id)


def _upload_tensorboard(sweep_dir: str) -> None:
    if "://" not in sweep_dir:
        return
    local = os.path.dirname(_local_tensorboard_dir(sweep_dir, "x"))
    if os.path.isdir(local):
        filesystem, path = filesystem_for(sweep_dir)
        pafs.copy_files(local, f"{path}/tensorboard", destination_filesystem=filesystem)


def _error_message(trial) -> str:
    """The most useful line of a failed trial's error (the engine's own message when there is one)."""
    text = ""
    try:
        error = trial.get_error()
        text = str(error) if error is not None else ""
    except Exception:  # noqa: BLE001 - Tune's error plumbing varies; fall back to the error file
        pass
    if not text and getattr(trial, "error_file", None) and os.path.exists(trial.error_file):
        with open(trial.error_file) as stream:
            text = stream.read()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for marker in ("NonFiniteLossError", "Error:", "Exception:"):
        for line in reversed(lines):
            if marker in line:
                return line[:500]
    return (lines[-1] if lines else "unknown error")[:500]


# --- run / resume ------------------------------------------------------------------------------------------------

def _exists(uri: str) -> bool:
    filesystem, path = filesystem_for(uri)
    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def _delete_dir(uri: str) -> None:
    filesystem, path = filesystem_for(uri)
    if filesystem.get_file_info(path).type == pafs.FileType.Directory:
        filesystem.delete_dir(path)


def _write_text(uri: str, text: str) -> None:
    filesystem, path = filesystem_for(uri)
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    tmp = f"{path}.tmp"
    with filesystem.open_output_stream(tmp) as stream:
        stream.write(text.encode())
    filesystem.move(tmp, path)


def _read_text(uri: str) -> str:
    filesystem, path = filesystem_for(uri)
    with filesystem.open_input_stream(path) as stream:
        return stream.read().decode()


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
    else:
        # One logical CPU more than the cores: each trial's driver holds 0.01 CPU while it only waits on its
        # workers, and without the headroom a worker asking for every core could never be placed beside it.
        cpus = (num_cpus or os.cpu_count() or 1) + 1
        return ray.init(num_cpus=cpus, dashboard_host="127.0.0.1", log_to_driver=False)


def trial_context(spec: SweepSpec, keys: dict[str, dict]) -> dict:
    """Everything a trial needs besides its sampled config (plain data, shipped to every worker)."""
    from l2d.data import DATASETS
    from l2d.losses import METHODS

    info = DATASETS[spec.dataset.name]
    return {
        "sweep_dir": spec.sweep_dir,
        "dataset": {"name": spec.dataset.name, "root": spec.dataset.root, "options": dict(spec.dataset.options)},
        "image_size": spec.dataset.image_size or info.image_size,
        "embed_dim": spec.recipe.embed_dim or info.embed_dim,
        "recipe": {"batch_size": spec.recipe.batch_size, "weight_decay": spec.recipe.weight_decay,
                   "pct_start": spec.recipe.pct_start, "num_workers": spec.recipe.num_workers},
        "max_epochs": spec.budget.max_epochs,
        "default_lr": info.lr,
        "seed": spec.seed,
        "teacher_store": f"{spec.storage.rstrip('/')}/teachers",
        "teacher_keys": keys,
        "needs_teacher": {name: method.needs_teacher for name, method in METHODS.items()},
        "workers_per_trial": spec.resources.workers_per_trial,
        "cpus_per_worker": spec.resources.cpus_per_worker,
        "gpus_per_worker": spec.resources.gpus_per_worker,
        "max_failures": spec.resources.max_failures,
        "trainer": spec.trainer,
    }


def _trainable(spec: SweepSpec, context: dict):
    from ray import tune

    from sweeps.trial import run_trial

    trainable = tune.with_parameters(run_trial, context=context)
    if spec.trainer == "in-process":
        # The trial trains itself: it holds the worker's resources.
        resources = {"cpu": spec.resources.cpus_per_worker}
        if spec.resources.gpus_per_worker:
            resources["gpu"] = spec.resources.gpus_per_worker
        return tune.with_resources(trainable, resources)
    # The trial only drives a TorchTrainer: a sliver of a CPU, so that the workers get the real ones.
    return tune.with_resources(trainable, {"cpu": 0.01})


def _tuner(spec: SweepSpec, context: dict, quiet: bool):
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from sweeps.scheduler import PersistentASHA

    if spec.budget.searcher == "random":
        sampler = optuna.samplers.RandomSampler(seed=spec.seed)
        points = []
    else:
        startup = max(2, min(10, spec.budget.num_samples // 3))
        sampler = optuna.samplers.TPESampler(multivariate=True, group=True, constant_liar=True, seed=spec.seed,
                                             n_startup_trials=startup)
        points = first_points(spec)
    search = OptunaSearch(space=DefineByRunSpace(spec), metric=spec.metric, mode=spec.mode, sampler=sampler,
                          points_to_evaluate=points)
    if spec.budget.scheduler == "asha":
        scheduler = PersistentASHA(f"{spec.sweep_dir}/asha.json", time_attr="epoch", max_t=spec.budget.max_epochs,
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
    return tune.Tuner(
        _trainable(spec, context),
        tune_config=tune.TuneConfig(search_alg=search, scheduler=scheduler, num_samples=spec.budget.num_samples,
                                    max_concurrent_trials=spec.resources.max_concurrent_trials, metric=spec.metric,
                                    mode=spec.mode, reuse_actors=spec.trainer == "in-process"),
        run_config=tune.RunConfig(name="tune", storage_path=spec.sweep_dir, verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=retries),
                                  callbacks=[SweepCallback(spec.sweep_dir, spec.budget.max_epochs, spec.metric,
                                                           spec.mode, quiet)]),
    )


def sweep_exists(sweep_dir: str) -> bool:
    """Whether ``sweep_dir`` holds a sweep (its spec.yaml)."""
    return _exists(f"{sweep_dir.rstrip('/')}/spec.yaml")


def run_sweep(spec: SweepSpec, new: bool = False, quiet: bool = False, num_cpus: int | None = None) -> SweepResults:
    """Start the sweep of ``spec``. Refuses when its folder already holds a sweep, unless ``new`` (start over)."""
    say = (lambda text: None) if quiet else (lambda text: print(text, flush=True))
    if sweep_exists(spec.sweep_dir):
        if not new:
            raise SweepExistsError(f"a sweep already exists at {spec.sweep_dir}; continue it with "
                                   f"`l2d-sweep resume {spec.sweep_dir}`, or pass --new to delete it and start over")
        say(f"--new: deleting the previous sweep at {spec.sweep_dir}")
        _delete_dir(spec.sweep_dir)
    init_ray(num_cpus)
    keys = teacher_keys(spec)
    _write_text(f"{spec.sweep_dir}/spec.yaml", yaml.safe_dump(spec.to_dict(), sort_keys=False))
    teacher_phase(spec, keys, f"{spec.storage.rstrip('/')}/teachers", say)
    say(f"sweep {spec.name}: {spec.budget.num_samples} trials of up to {spec.budget.max_epochs} epochs, "
        f"{spec.resources.max_concurrent_trials} at a time; folder {spec.sweep_dir}")
    _tuner(spec, trial_context(spec, keys), quiet).fit()
    return SweepResults(spec.sweep_dir)


def load_sweep_spec(sweep_dir: str) -> SweepSpec:
    uri = f"{sweep_dir.rstrip('/')}/spec.yaml"
    if not _exists(uri):
        raise SweepNotFoundError(f"{sweep_dir}: no sweep here (spec.yaml missing); start one with `l2d-sweep run SPEC`")
    return parse_spec(yaml.safe_load(_read_text(uri)), uri)


def resume_sweep(sweep_dir: str, quiet: bool = False, num_cpus: int | None = None) -> SweepResults:
    """Continue a sweep killed at any moment: finished trials stay finished, running ones continue from their
    last epoch checkpoint, the Optuna study and ASHA's rungs carry on."""
    from ray import tune

    say = (lambda text: None) if quiet else (lambda text: print(text, flush=True))
    sweep_dir = sweep_dir.rstrip("/")
    if "://" not in sweep_dir:
        sweep_dir = os.path.abspath(sweep_dir)
    spec = load_sweep_spec(sweep_dir)
    if spec.sweep_dir != sweep_dir:  # the folder moved: follow it
        spec = parse_spec({**spec.to_dict(), "storage": sweep_dir.rsplit("/", 1)[0]}, f"{sweep_dir}/spec.yaml")
    init_ray(num_cpus)
    keys = teacher_keys(spec)
    tune_dir = f"{sweep_dir}/tune"
    if not tune.Tuner.can_restore(tune_dir):
        say(f"{sweep_dir}: the sweep stopped before its first trial; starting its trials now")
        teacher_phase(spec, keys, f"{spec.storage.rstrip('/')}/teachers", say)
        _tuner(spec, trial_context(spec, keys), quiet).fit()
        return SweepResults(sweep_dir)
    teacher_phase(spec, keys, f"{spec.storage.rstrip('/')}/teachers", say)
    say(f"resuming sweep {spec.name} from {sweep_dir}")
    tuner = tune.Tuner.restore(tune_dir, trainable=_trainable(spec, trial_context(spec, keys)),
                               resume_unfinished=True, resume_errored=False, restart_errored=False)
    tuner.fit()
    return SweepResults(sweep_dir)


def print_leaderboard(results: SweepResults, out=sys.stdout, limit: int = 10) -> None:
    print(format_table(results.leaderboard(limit)), file=out)
