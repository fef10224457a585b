"""The sweep's Optuna study, kept in a real database: the search's memory across every experiment of the sweep (run,
resume, extend), seedable from other sweeps (warm start), browsable with optuna-dashboard.

Where it lives (:class:`StudyStore`): the spec's ``study_storage`` (any SQLAlchemy URL, e.g.
``postgresql://user@host:5432/db``; the password comes from ``PGPASSWORD`` or ``~/.pgpass``, never from the spec),
else a SQLite file: ``<sweep>/study.db`` for a local sweep; for an ``s3://`` / ``gs://`` sweep a SQLite file in the
local cache, uploaded to ``<sweep>/study.db`` (atomically) after every trial end and downloaded again at resume.
The study is named ``<sweep name>-<sweep id>``.

Each Tune trial is one Optuna trial (:class:`StudySearcher`), with user attributes ``tune_trial_id``, ``teacher``,
``student``, ``method``, ``status`` (completed, stopped, failed, interrupted), ``epochs`` and ``best_epoch``.
Values: a completed trial's objectives at its best epoch (by the primary objective); a trial ASHA stopped is PRUNED
with its last value (single objective; with several it is COMPLETE with its values at its best epoch); a failed
one FAIL. A trial that a crash interrupted and the resumed experiment re-creates (same deterministic id) reuses
its Optuna trial, so no trial is in the study twice; :func:`reconcile` brings study and results tables back in
step after a crash (a trial finished in the tables but not yet told, a trial lost with its experiment).
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import re
from pathlib import Path
from typing import Any

import optuna
from ray.tune.search import Searcher

from l2d.storage import Location, cache_dir
from sweeps.search import DefineByRunSpace, decode, first_points

logger = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)

#: Metrics an objective may name, and the trials-table column holding each at a trial's best epoch.
OBJECTIVE_COLUMNS = {"val_mAP": "best_val_mAP", "val_CF1": "best_val_CF1", "val_OF1": "best_val_OF1",
                     "val_loss": "best_val_loss", "latency_ms": "latency_ms", "student_params": "student_params"}
HISTORY_KEY = "history_before_resume"


class StudyStore:
    """Where a sweep's study lives (see the module docstring)."""

    def __init__(self, sweep_dir: Location, url: str | None = None):
        self.sweep_dir = sweep_dir
        self.remote_file: Location | None = None
        if url:
            self.url = url
        elif sweep_dir.is_local:
            self.url = f"sqlite:///{Path(sweep_dir.path) / 'study.db'}"
        else:
            safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(sweep_dir))
            local = cache_dir() / "studies" / safe / "study.db"
            self.url = f"sqlite:///{local}"
            self.remote_file = sweep_dir / "study.db"

    @property
    def local_file(self) -> Path | None:
        return Path(self.url.removeprefix("sqlite:///")) if self.url.startswith("sqlite:///") else None

    def pull(self) -> None:
        """For a remote sweep: the stored copy of the study onto this machine (when there is one)."""
        if self.remote_file is not None and self.remote_file.is_file():
            Location.parse(self.local_file).write_bytes(self.remote_file.read_bytes())

    def push(self) -> None:
        """For a remote sweep: this machine's study into the sweep folder (atomically)."""
        if self.remote_file is not None and self.local_file is not None and self.local_file.is_file():
            self.remote_file.write_bytes(self.local_file.read_bytes())

    def storage(self) -> optuna.storages.RDBStorage:
        if self.local_file is not None:
            self.local_file.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.RDBStorage(self.url, engine_kwargs={"connect_args": {"timeout": 60}})
        return optuna.storages.RDBStorage(self.url, engine_kwargs={"pool_pre_ping": True})

    def describe(self) -> str:
        """The URL without a password (for messages)."""
        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", self.url)


def study_name(spec, sweep_id: str) -> str:
    return f"{spec.name}-{sweep_id}"


def directions(spec) -> list[str]:
    return ["maximize" if mode == "max" else "minimize" for _, mode in spec.objective_list]


def build_sampler(spec):
    """TPE (multivariate, grouped, constant liar, seeded), NSGA-II (multi-objective) or random search."""
    import warnings

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # TPE's group= option
    searcher = spec.budget.searcher
    if searcher == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    if searcher == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=spec.seed, population_size=max(4, min(50, spec.budget.num_samples
                                                                                        // 2)))
    startup = max(2, min(10, spec.budget.num_samples // 3))
    return optuna.samplers.TPESampler(multivariate=True, group=True, constant_liar=True, seed=spec.seed,
                                      n_startup_trials=startup)


def open_study(spec, sweep_id: str, store: StudyStore, sampler=None) -> optuna.Study:
    """The sweep's study, created when missing (an unreadable SQLite file is set aside first, named in the log)."""
    try:
        storage = store.storage()
    except Exception as error:  # noqa: BLE001 - sqlalchemy raises DatabaseError and friends for a damaged file
        if store.local_file is None or not store.local_file.exists():
            raise RuntimeError(f"study storage {store.describe()}: {str(error).splitlines()[0]}") from None
        aside = store.local_file.with_name(f"{store.local_file.name}.corrupt")
        store.local_file.replace(aside)
        logger.warning("%s: unreadable study database (%s); set it aside as %s and starting it again from the "
                       "results", store.local_file, str(error).splitlines()[0][:200], aside.name)
        storage = store.storage()
    study = optuna.create_study(storage=storage, study_name=study_name(spec, sweep_id), sampler=sampler,
                                directions=directions(spec), load_if_exists=True)
    names = [metric for metric, _ in spec.objective_list]
    if study.metric_names != names:
        study.set_metric_names(names)  # optuna-dashboard shows these instead of "Objective 0"
    return study


def encode(spec, decoded: dict) -> tuple[dict, dict] | None:
    """A decoded trial config (teacher, student, method, weights, lr) as Optuna parameters and distributions of
    ``spec``'s space; None when it does not fit that space (another pairing or method, a value outside a range,
    a weight fixed to another value)."""
    from l2d.losses import METHODS
    from sweeps.spec import Range

    teachers = [p.teacher for p in spec.pairings]
    students = {p.teacher: list(p.students) for p in spec.pairings}
    teacher, student, method = decoded.get("teacher"), decoded.get("student"), decoded.get("method")
    if teacher not in teachers or student not in students[teacher] or method not in spec.methods:
        return None
    params = {"pairing": teacher, f"student@{teacher}": student, "method": method}
    dists = {"pairing": optuna.distributions.CategoricalDistribution(teachers),
             f"student@{teacher}": optuna.distributions.CategoricalDistribution(students[teacher]),
             "method": optuna.distributions.CategoricalDistribution(list(spec.methods))}
    for name in ("lr", *METHODS[method].defaults):
        searched = spec.search_space.get(name)
        value = decoded.get(name)
        if isinstance(searched, Range):
            if value is None or not searched.low <= float(value) <= searched.high:
                return None
            params[name] = float(value)
            dists[name] = optuna.distributions.FloatDistribution(searched.low, searched.high, log=searched.log)
        else:
            expected = searched if searched is not None else METHODS[method].defaults.get(name)
            if (expected is None) != (value is None) or (expected is not None and not math.isclose(
                    float(expected), float(value), rel_tol=1e-9)):
                return None
    return params, dists


def row_values(spec, row: dict) -> list[float] | None:
    """A trials-table row's objective values (None when one is missing)."""
    values = [row.get(OBJECTIVE_COLUMNS[metric]) for metric, _ in spec.objective_list]
    return None if any(v is None for v in values) else [float(v) for v in values]


def _trial_state(row: dict):
    return {"completed": optuna.trial.TrialState.COMPLETE, "stopped": optuna.trial.TrialState.COMPLETE,
            "failed": optuna.trial.TrialState.FAIL}.get(row["status"])


def add_recorded(study: optuna.Study, spec, rows: list[dict], attrs: dict | None = None) -> tuple[int, dict]:
    """Add finished trials-table rows to ``study`` as finished trials (those that fit ``spec``'s space); returns
    ``(added, {reason: skipped})``."""
    added, skipped = 0, {}
    for row in rows:
        state = _trial_state(row)
        values = row_values(spec, row)
        encoded = encode(spec, {k: v for k, v in row.items() if v is not None})
        reason = ("not finished" if state is None else "no value" if values is None and state !=
                  optuna.trial.TrialState.FAIL else "does not fit this space" if encoded is None else None)
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        params, dists = encoded
        study.add_trial(optuna.trial.create_trial(
            state=state, values=values if state == optuna.trial.TrialState.COMPLETE else None, params=params,
            distributions=dists, user_attrs={"tune_trial_id": row["trial_id"], "status": row["status"],
                                             "teacher": row["teacher"], "student": row["student"],
                                             "method": row["method"], "epochs": row.get("epochs_run"),
                                             "best_epoch": row.get("best_epoch"), **(attrs or {})}))
        added += 1
    return added, skipped


def reconcile(study: optuna.Study, spec, rows: list[dict], live: set[str] = frozenset(),
              fail_unknown: bool = True) -> dict[str, int]:
    """Bring the study in step with the results tables after a crash: a trial finished in the tables but still
    running in the study is told its outcome; one missing from the study is added; with ``fail_unknown``, a running
    study trial whose Tune trial is not ``live`` and not finished in the tables is failed as interrupted (without
    it such trials are left for the restored experiment to continue). Returns counts of each fix."""
    by_tune = {}
    for trial in study.get_trials(deepcopy=False):
        tune_id = trial.user_attrs.get("tune_trial_id")
        if tune_id and "warm_start_from" not in trial.user_attrs:
            by_tune.setdefault(tune_id, trial)
    fixed = {"told": 0, "added": 0, "interrupted": 0}
    recorded = {row["trial_id"]: row for row in rows}
    missing = []
    for tune_id, row in recorded.items():
        trial = by_tune.get(tune_id)
        if trial is None:
            if row["status"] in ("completed", "stopped", "failed"):
                missing.append(row)
            continue
        if trial.state == optuna.trial.TrialState.RUNNING and row["status"] in ("completed", "stopped", "failed"):
            tell(study, trial.number, spec, row["status"], row_values(spec, row), row)
            fixed["told"] += 1
    fixed["added"], _ = add_recorded(study, spec, missing)
    for tune_id, trial in by_tune.items():
        if fail_unknown and trial.state == optuna.trial.TrialState.RUNNING and tune_id not in live and \
                recorded.get(tune_id, {}).get("status") not in ("completed", "stopped", "failed"):
            _set_attr(study, trial.number, "status", "interrupted")
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            fixed["interrupted"] += 1
    return fixed


def _set_attr(study: optuna.Study, number: int, key: str, value: Any) -> None:
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    study._storage.set_trial_user_attr(trial_id, key, value)


def tell(study: optuna.Study, number: int, spec, status: str, values: list[float] | None, row: dict | None = None):
    """Finish Optuna trial ``number``: completed -> COMPLETE with its values; stopped -> PRUNED with its last
    reported value (one objective) or COMPLETE with its values (several); failed -> FAIL."""
    frozen = study.get_trials(deepcopy=False)[number] if number < len(study.get_trials(deepcopy=False)) else None
    if frozen is not None and frozen.state.is_finished():
        return
    for key, value in {"status": status, **({k: row.get(k) for k in ("epochs_run", "best_epoch")} if row else {})
                       }.items():
        if value is not None:
            _set_attr(study, number, key if key != "epochs_run" else "epochs", value)
    single = len(spec.objective_list) == 1
    if status == "failed" or values is None:
        study.tell(number, state=optuna.trial.TrialState.FAIL)
    elif status == "stopped" and single and frozen is not None and frozen.intermediate_values:
        study.tell(number, state=optuna.trial.TrialState.PRUNED)
    else:
        study.tell(number, values if not single else values[0], state=optuna.trial.TrialState.COMPLETE)


class StudySearcher(Searcher):
    """Ray Tune's searcher over the sweep's study: Tune asks, the study answers and remembers (see the module
    docstring). Picklable: the study is reopened from its store when needed; the sampler (with its random state)
    and the map of Tune trial ids to Optuna trials travel with Tune's searcher state."""

    def __init__(self, spec, sweep_id: str, store: StudyStore, warm_started: bool = False):
        super().__init__(metric=spec.metric, mode=spec.mode)
        self.spec = spec
        self.sweep_id = sweep_id
        self.store = store
        self.space = DefineByRunSpace(spec)
        self.objectives = list(spec.objective_list)
        self.max_epochs = spec.budget.max_epochs
        self.sampler = build_sampler(spec)
        self.numbers: dict[str, int] = {}  # Tune trial id -> Optuna trial number
        self.best: dict[str, dict] = {}  # Tune trial id -> {"epoch", "values"} at its best epoch so far
        self.reported: dict[str, list[int]] = {}
        self.warm_started = warm_started
        self._study: optuna.Study | None = None

    @property
    def state_file(self) -> Location:
        """``<sweep>/searcher.pkl``: the sampler (its random state included) and the trial maps, written after every
        ask and tell, so that a resume continues the exact draw sequence (Tune's own copy is only saved every few
        seconds)."""
        return self.store.sweep_dir / "searcher.pkl"

    def _state(self) -> dict:
        return {"numbers": self.numbers, "best": self.best, "reported": self.reported, "sampler": self.sampler}

    def _persist(self) -> None:
        self.state_file.write_bytes(pickle.dumps(self._state()))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_study"] = None
        return state

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            self.store.pull()
            self._study = open_study(self.spec, self.sweep_id, self.store, self.sampler)
            if not self._study.get_trials(deepcopy=False) and not self.warm_started:
                for point in first_points(self.spec):
                    self._study.enqueue_trial(point)
        return self._study

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def _trial_of(self, trial_id: str):
        """The study's trial of a Tune trial id (any state; warm-start trials are another sweep's)."""
        for trial in self.study.get_trials(deepcopy=False):
            if trial.user_attrs.get("tune_trial_id") == trial_id and "warm_start_from" not in trial.user_attrs:
                return trial
        return None

    def suggest(self, trial_id: str) -> dict | None:
        study = self.study
        existing = self._trial_of(trial_id)
        if existing is not None:
            # Tune re-created a trial its last saved state did not hold yet (same deterministic id): the same
            # parameters, the same Optuna trial; a finished one closes at once from its checkpoint.
            params, number = dict(existing.params), existing.number
        else:
            trial = study.ask()
            self.space(trial)
            params, number = dict(trial.params), trial.number
            decoded = decode(params)
            for key, value in {"tune_trial_id": trial_id, "teacher": decoded["teacher"],
                               "student": decoded["student"], "method": decoded["method"], "status": "running",
                               "sweep_id": self.sweep_id}.items():
                trial.set_user_attr(key, value)
        constants = self.space(optuna.trial.FixedTrial(params))
        self.numbers[trial_id] = number
        self._persist()
        return {**params, **constants}

    def _number(self, trial_id: str) -> int | None:
        if trial_id not in self.numbers:
            found = self._trial_of(trial_id)
            if found is not None:
                self.numbers[trial_id] = found.number
        return self.numbers.get(trial_id)

    def _observe(self, trial_id: str, result: dict) -> None:
        """Update the trial's best epoch from a result (and the epochs a resumed trial replays)."""
        rows = json.loads(result.get(HISTORY_KEY) or "[]") + [result]
        primary, mode = self.objectives[0]
        for row in rows:
            if "epoch" not in row or any(row.get(metric) is None for metric, _ in self.objectives):
                continue
            values = [float(row[metric]) for metric, _ in self.objectives]
            best = self.best.get(trial_id)
            better = best is None or (values[0] > best["values"][0] if mode == "max" else values[0] < best["values"][0])
            if better:
                self.best[trial_id] = {"epoch": int(row["epoch"]), "values": values}

    def _report(self, trial_id: str, number: int, result: dict) -> None:
        """Record the epoch's value as an intermediate value of the Optuna trial (one objective only: Optuna keeps
        none for several)."""
        metric = self.objectives[0][0]
        if len(self.objectives) != 1 or result.get(metric) is None or "epoch" not in result:
            return
        epoch = int(result["epoch"])
        steps = self.reported.setdefault(trial_id, [])
        if epoch in steps:
            return
        storage = self.study._storage
        stored_id = storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)
        frozen = storage.get_trial(stored_id)
        if frozen.state == optuna.trial.TrialState.RUNNING and epoch not in frozen.intermediate_values:
            storage.set_trial_intermediate_value(stored_id, epoch, float(result[metric]))
        steps.append(epoch)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        number = self._number(trial_id)
        if number is None or "epoch" not in result:
            return
        self._observe(trial_id, result)
        self._report(trial_id, number, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        number = self._number(trial_id)
        if number is None:
            return
        if result:
            # Tune hands the result that made ASHA stop a trial to on_trial_complete only: report it here.
            self._observe(trial_id, result)
            self._report(trial_id, number, result)
        best = self.best.get(trial_id)
        epochs = int(result["epoch"]) if result and "epoch" in result else 0
        status = "failed" if error or best is None else "completed" if epochs >= self.max_epochs else "stopped"
        row = {"epochs_run": epochs, "best_epoch": best["epoch"] if best else None}
        tell(self.study, number, self.spec, status, best["values"] if best else None, row)
        self._persist()
        self.store.push()

    def save(self, checkpoint_path: str) -> None:
        """Tune's searcher state: the map of trials and the sampler (with its random state); the study is in its
        database already."""
        with open(checkpoint_path, "wb") as stream:
            pickle.dump(self._state(), stream)

    def restore(self, checkpoint_path: str) -> None:
        """Tune's saved state, or the newer ``searcher.pkl`` of the sweep folder when it is readable."""
        with open(checkpoint_path, "rb") as stream:
            state = pickle.load(stream)
        if self.state_file.is_file():
            try:
                newer = pickle.loads(self.state_file.read_bytes())
                if len(newer["numbers"]) >= len(state["numbers"]):
                    state = newer
            except Exception as error:  # noqa: BLE001 - a damaged pickle: Tune's copy is the fallback
                logger.warning("%s: unreadable searcher state (%s); using Tune's saved copy", self.state_file,
                               str(error).splitlines()[0][:200] if str(error) else type(error).__name__)
        self.numbers, self.best, self.reported = state["numbers"], state["best"], state["reported"]
        self.sampler = state["sampler"]
        self._study = None


def load_sweep_study(sweep_dir) -> tuple[Any, optuna.Study, StudyStore]:
    """``(spec, study, store)`` of an existing sweep folder (the study downloaded first for a remote sweep)."""
    from sweeps.folder import adopt
    from sweeps.runner import load_sweep_spec

    spec = load_sweep_spec(sweep_dir)
    store = StudyStore(spec.sweep_dir, spec.study_storage)
    store.pull()
    name = study_name(spec, adopt(spec.sweep_dir)["sweep_id"])
    try:
        study = optuna.load_study(study_name=name, storage=store.storage())
    except KeyError:
        raise FileNotFoundError(f"{spec.sweep_dir}: no study {name!r} in {store.describe()} (a sweep written before "
                                f"studies were kept in a database has none; resume or extend it to start one)") from None
    return spec, study, store


def search_front(study: optuna.Study) -> list[str]:
    """The Tune trial ids of the study's Pareto front (its best trial, for one objective), warm-start trials left
    out."""
    return sorted(t.user_attrs["tune_trial_id"] for t in study.best_trials
                  if "tune_trial_id" in t.user_attrs and "warm_start_from" not in t.user_attrs)
