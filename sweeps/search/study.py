"""The sweep's Optuna study, kept in a real database: the search's memory across every experiment of the sweep (run,
resume, extend), seedable from other sweeps (warm start), browsable with optuna-dashboard.

(Over 400 lines for one reason: the study's whole life is here, storage, schema checks, reconcile and identity, so
every path that touches
study.db is read in one place.)

Where it lives (:class:`StudyStore`): the spec's ``study_storage`` (any SQLAlchemy URL, e.g.
``postgresql://user@host:5432/db``; the password comes from ``PGPASSWORD`` or ``~/.pgpass``, never from the spec),
else a SQLite file: ``<sweep>/study.db`` for a local sweep; for an ``s3://`` / ``gs://`` sweep a SQLite file in the
local cache, uploaded to ``<sweep>/study.db`` (atomically) after every trial end and downloaded again at resume.
The study is named ``<sweep name>-<sweep id>``.

Each Tune trial is one Optuna trial (:class:`sweeps.tune.searcher.StudySearcher`), with user attributes
``tune_trial_id``, ``teacher``,
``student``, ``method``, ``status`` (completed, stopped, failed, interrupted), ``epochs`` and ``best_epoch``.
Values: a completed trial's objectives at its best epoch (by the primary objective); a trial ASHA stopped is PRUNED
with its last value (single objective; with several it is COMPLETE with its values at its best epoch); a failed
one FAIL. A trial that a crash interrupted and the resumed experiment re-creates (same deterministic id) reuses
its Optuna trial, so no trial is in the study twice; :func:`reconcile` brings study and results tables back in
step after a crash (a trial finished in the tables but not yet told, a trial lost with its experiment).
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import optuna

from l2d.storage import Location, cache_dir
from sweeps.core.vocab import FINISHED, direction
from sweeps.folder.marker import MARKER, legacy_id, read_marker, trial_id, write_marker
from sweeps.results import OBJECTIVE_COLUMNS, SweepResults
from sweeps.search.space import encode
from sweeps.specs.stored import SweepStateError, load_sweep_spec, spec_digest

logger = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)


class StudyStore:
    """Where a sweep's study lives (see the module docstring)."""

    def __init__(self, sweep_dir: Location, url: str | None = None, reader: bool = False):
        self.sweep_dir = sweep_dir
        self.reader = reader
        self.remote_file: Location | None = None
        self.own = not url  # the sweep's own study.db (not a database the spec names)
        self.timeout = 60.0  # seconds a SQLite study waits for another process's lock
        if url:
            self.url = url
        elif sweep_dir.is_local:
            self.url = f"sqlite:///{Path(sweep_dir.path) / 'study.db'}"
        else:
            safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(sweep_dir))
            # A reader's copy is its own (this process's): it never replaces the file a driver has open.
            name = f"reader-{os.getpid()}-{uuid.uuid4().hex[:8]}" if reader else "driver"
            local = cache_dir() / "studies" / safe / name / "study.db"
            self.url = f"sqlite:///{local}"
            self.remote_file = sweep_dir / "study.db"
            if reader:
                atexit.register(shutil.rmtree, str(local.parent), True)

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
        """The study's storage (one per store object: every call returns the same connection pool).

        A reader's is read-only: the sweep's own SQLite file through a read-only connection (``mode=ro``: any
        write fails with "attempt to write a readonly database"), a remote sweep's study through this process's
        own copy, a PostgreSQL study in read-only transactions, a MySQL one in a read-only session. A read command
        and ``Sweep.study()`` cannot change the sweep's study."""
        if getattr(self, "_rdb", None) is None:
            if self.local_file is not None:
                connect = {"timeout": getattr(self, "timeout", 60.0)}
                if getattr(self, "reader", False) and self.remote_file is None:
                    if not self.local_file.is_file():
                        raise FileNotFoundError(f"{self.local_file}: no study database")
                    url = f"sqlite:///file:{self.local_file}?mode=ro&uri=true"  # the sweep's real file: read-only
                else:
                    self.local_file.parent.mkdir(parents=True, exist_ok=True)
                    url = self.url
                self._rdb = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": connect})
            else:
                engine: dict[str, Any] = {"pool_pre_ping": True}
                if getattr(self, "reader", False):
                    engine["connect_args"] = _read_only_session(self.url)
                self._rdb = optuna.storages.RDBStorage(self.url, engine_kwargs=engine)
        return self._rdb

    def close(self) -> None:
        """Drop the connection pool: the next :meth:`storage` opens the database again (after an upgrade, or after
        a damaged file was set aside)."""
        rdb = getattr(self, "_rdb", None)
        if rdb is not None:
            rdb.engine.dispose()
        self._rdb = None

    def __getstate__(self):  # pickled with the searcher: the connection pool stays behind
        state = dict(self.__dict__)
        state.pop("_rdb", None)
        return state

    def _stored_id(self, study: optuna.Study, number: int) -> int:
        storage = self.storage()
        return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)

    def set_user_attr(self, study: optuna.Study, number: int, key: str, value: Any) -> None:
        """A user attribute of trial ``number``, finished or not (Optuna's public storage API)."""
        self.storage().set_trial_user_attr(self._stored_id(study, number), key, value)

    def report(self, study: optuna.Study, number: int, step: int, value: float) -> bool:
        """Trial ``number``'s intermediate value at ``step`` when it is still running and has none there; whether
        it was recorded."""
        storage = self.storage()
        trial_id = self._stored_id(study, number)
        frozen = storage.get_trial(trial_id)
        if frozen.state != optuna.trial.TrialState.RUNNING or step in frozen.intermediate_values:
            return False
        storage.set_trial_intermediate_value(trial_id, step, value)
        return True

    def describe(self) -> str:
        """The URL without a password (for messages)."""
        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", self.url)


def _read_only_session(url: str) -> dict:
    """Connection arguments that make a database session read-only (for a reader): PostgreSQL's
    ``default_transaction_read_only``, MySQL's ``SET SESSION TRANSACTION READ ONLY``."""
    if url.startswith("postgresql"):
        return {"options": "-c default_transaction_read_only=on"}
    if url.startswith("mysql"):
        return {"init_command": "SET SESSION TRANSACTION READ ONLY"}
    return {}


def study_name(spec, sweep_id: str) -> str:
    return f"{spec.name}-{sweep_id}"


def directions(spec) -> list[str]:
    return [direction(mode) for _, mode in spec.objective_list]


_LOCK_TYPE = type(threading.Lock())


class _PicklableNSGAIISampler(optuna.samplers.NSGAIISampler):
    """NSGA-II that Tune can checkpoint. Optuna 5.1's genetic samplers hold a ``threading.Lock`` (``_thread_lock``),
    and Tune pickles the searcher, sampler included, into the sweep's checkpoint: "cannot pickle '_thread.lock'
    object". A lock only guards the sampler's caches within one process, so locks are left out of the pickle and
    new ones made on load."""

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_picklable_locks"] = [key for key, value in state.items() if isinstance(value, _LOCK_TYPE)]
        for key in state["_picklable_locks"]:
            del state[key]
        return state

    def __setstate__(self, state):
        state = dict(state)
        for key in state.pop("_picklable_locks", []):
            state[key] = threading.Lock()
        self.__dict__.update(state)


def build_sampler(spec):
    """TPE (multivariate, grouped, constant liar, seeded), NSGA-II (multi-objective) or random search."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # TPE's group= option
    searcher = spec.budget.searcher
    if searcher == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    if searcher == "nsga2":
        return _PicklableNSGAIISampler(seed=spec.seed, population_size=max(4, min(50, spec.budget.num_samples // 2)))
    startup = max(2, min(10, spec.budget.num_samples // 3))
    return optuna.samplers.TPESampler(
        multivariate=True, group=True, constant_liar=True, seed=spec.seed, n_startup_trials=startup
    )


class StudyStorageError(RuntimeError):
    """The study's database cannot be used as it is (named, with what to do); nothing was changed."""


class StudyPathError(StudyStorageError, ValueError):
    """The spec's ``study_storage`` names a file that holds something else: bad input (exit status 2)."""


def _sqlite_kind(path: Path) -> str:
    """What a SQLite study path holds: ``missing``, ``empty``, ``optuna`` (an Optuna study database), ``foreign`` (a
    SQLite database of something else), ``locked`` (another process holds it) or ``not-a-database``."""
    if not path.exists():
        return "missing"
    if path.stat().st_size == 0:
        return "empty"
    with open(path, "rb") as stream:
        if stream.read(16) != b"SQLite format 3\x00":
            return "not-a-database"

    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            connection.close()
    except sqlite3.OperationalError as error:
        if "locked" in str(error) or "busy" in str(error):
            return "locked"  # a healthy database another process holds: never "damaged"
        return "not-a-database"
    except sqlite3.DatabaseError:
        return "not-a-database"
    return "optuna" if {"studies", "alembic_version"} <= tables else "empty" if not tables else "foreign"


def check_study_storage(store: StudyStore) -> None:
    """Refuse, before anything is touched, a study path the spec names that holds something else.

    Raises:
        StudyPathError: ``study_storage`` names an existing file that is not an Optuna study database.
    """
    if store.own or store.local_file is None:
        return
    kind = _sqlite_kind(store.local_file)
    if kind in ("foreign", "not-a-database"):
        what = "a SQLite database of something else" if kind == "foreign" else "not a SQLite database"
        raise StudyPathError(
            f"study_storage {store.describe()}: {store.local_file} exists and is {what}; refusing "
            f"to write a study into it: name a new file or an Optuna study database"
        )


def check_study_version(store: StudyStore) -> None:
    """Refuse, before anything is written, a local study database that a newer Optuna wrote (this one must not touch
    it); an older schema is left for :func:`open_study` to upgrade.

    Raises:
        StudyStorageError: the schema is newer than this Optuna's.
    """
    if store.local_file is None or _sqlite_kind(store.local_file) != "optuna":
        return
    try:
        optuna.storages.RDBStorage(store.url, engine_kwargs={"connect_args": {"timeout": store.timeout}})
    except Exception as error:  # noqa: BLE001 - sqlalchemy and optuna raise many kinds; open_study sorts the rest
        if "pip install -U optuna" in str(error):
            raise StudyStorageError(
                f"study storage {store.describe()}: its schema is from a newer Optuna than this "
                f"one ({optuna.__version__}); upgrade Optuna (pip install -U optuna); nothing was "
                f"changed"
            ) from None


def _upgrade(store: StudyStore, error: Exception) -> None:
    """Optuna's own schema upgrade of the sweep's SQLite study, after a backup; another database: the command."""
    command = f"optuna storage upgrade --storage {store.describe()}"
    if not store.own or store.local_file is None:
        raise StudyStorageError(
            f"study storage {store.describe()}: its schema is from another Optuna version "
            f"({str(error).splitlines()[0][:160]}); upgrade it with `{command}` (back it up first)"
        )
    backup = store.local_file.with_name(
        f"{store.local_file.name}.backup-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    )
    shutil.copy2(store.local_file, backup)
    optuna.storages.RDBStorage(store.url, skip_compatibility_check=True).upgrade()
    logger.warning(
        "%s: the study's schema was from another Optuna version; backed it up as %s and upgraded it "
        "(Optuna's own upgrade)",
        store.local_file,
        backup.name,
    )


def open_study(spec, sweep_id: str, store: StudyStore, sampler=None) -> optuna.Study:
    """The sweep's study, created when missing. A schema from another Optuna version is upgraded (after a backup;
    for a database the spec names, the command is given instead); only the sweep's own ``study.db`` that is not a
    database at all is set aside (under a unique name) and started again from the results; a locked or unreadable
    database is an error that changes nothing."""
    check_study_storage(store)
    try:
        storage = store.storage()
    except Exception as error:  # noqa: BLE001 - sqlalchemy and optuna raise many kinds: each is sorted out below
        text = str(error)
        if "pip install -U optuna" in text:  # written by a newer Optuna: this one must not touch it
            raise StudyStorageError(
                f"study storage {store.describe()}: its schema is from a newer Optuna than this "
                f"one ({optuna.__version__}); upgrade Optuna (pip install -U optuna); nothing was "
                f"changed"
            ) from None
        if "optuna storage upgrade" in text:
            _upgrade(store, error)
            store.close()
            storage = store.storage()
        elif store.own and store.local_file is not None and _sqlite_kind(store.local_file) == "not-a-database":
            aside = store.local_file.with_name(
                f"{store.local_file.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
            )
            store.local_file.replace(aside)
            logger.warning(
                "%s: not a database (%s); set it aside as %s and starting the study again from the results",
                store.local_file,
                text.splitlines()[0][:200],
                aside.name,
            )
            store.close()
            storage = store.storage()
        else:
            raise StudyStorageError(
                f"study storage {store.describe()}: {text.splitlines()[0][:200]} (nothing was "
                f"changed; a locked database: is another process using it?)"
            ) from None
    study = optuna.create_study(
        storage=storage,
        study_name=study_name(spec, sweep_id),
        sampler=sampler,
        directions=directions(spec),
        load_if_exists=True,
    )
    names = [metric for metric, _ in spec.objective_list]
    if study.metric_names != names:
        study.set_metric_names(names)  # optuna-dashboard shows these instead of "Objective 0"
    return study


def row_values(spec, row: dict) -> list[float] | None:
    """A trials-table row's objective values (None when one is missing)."""
    values = [row.get(OBJECTIVE_COLUMNS[metric]) for metric, _ in spec.objective_list]
    return None if any(v is None for v in values) else [float(v) for v in values]


def _trial_state(row: dict):
    return {
        "completed": optuna.trial.TrialState.COMPLETE,
        "stopped": optuna.trial.TrialState.COMPLETE,
        "failed": optuna.trial.TrialState.FAIL,
    }.get(row["status"])


def add_recorded(
    study: optuna.Study,
    spec,
    rows: list[dict],
    attrs: dict | None = None,
    epochs: dict[str, dict[int, float]] | None = None,
) -> tuple[int, dict]:
    """Add finished trials-table rows to ``study`` as finished trials (those that fit ``spec``'s space); returns
    ``(added, {reason: skipped})``. ``epochs``: each trial's per-epoch value of the (single) objective, when known:
    they become the trial's intermediate values, and a stopped trial is added PRUNED with its last one, as the
    search told it when it ran."""
    added, skipped = 0, {}
    single = len(spec.objective_list) == 1
    for row in rows:
        state = _trial_state(row)
        values = row_values(spec, row)
        steps = (epochs or {}).get(row["trial_id"]) if single else None
        if steps and row["status"] == "stopped":
            state, values = optuna.trial.TrialState.PRUNED, [steps[max(steps)]]
        encoded = encode(spec, {k: v for k, v in row.items() if v is not None})  # sweeps.search.space
        reason = (
            "not finished"
            if state is None
            else "no value"
            if values is None and state != optuna.trial.TrialState.FAIL
            else "does not fit this space"
            if encoded is None
            else None
        )
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        params, dists = encoded
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                values=values if state != optuna.trial.TrialState.FAIL else None,
                params=params,
                distributions=dists,
                intermediate_values=dict(steps or {}),
                user_attrs={
                    "tune_trial_id": row["trial_id"],
                    "status": row["status"],
                    "teacher": row["teacher"],
                    "student": row["student"],
                    "method": row["method"],
                    "epochs": row.get("epochs_run"),
                    "best_epoch": row.get("best_epoch"),
                    **(attrs or {}),
                },
            )
        )
        added += 1
    return added, skipped


def reconcile(
    study: optuna.Study,
    store: StudyStore,
    spec,
    rows: list[dict],
    live: set[str] = frozenset(),
    fail_unknown: bool = True,
    epochs: dict[str, dict[int, float]] | None = None,
) -> dict[str, int]:
    """Bring the study in step with the results tables after a crash: a trial finished in the tables but still
    running in the study is told its outcome; one missing from the study is added; with ``fail_unknown``, a running
    study trial whose Tune trial is not ``live`` and not finished in the tables is failed as interrupted (without
    it such trials are left for the restored experiment to continue). Returns counts of each fix."""
    by_tune, orphans = {}, []
    for trial in study.get_trials(deepcopy=False):
        tune_id = trial.user_attrs.get("tune_trial_id")
        if tune_id and "warm_start_from" not in trial.user_attrs:
            by_tune.setdefault(tune_id, trial)
        elif not tune_id and trial.state == optuna.trial.TrialState.RUNNING:
            orphans.append(trial)  # asked, then the driver died before tagging it: no Tune trial is its
    fixed = {"told": 0, "added": 0, "interrupted": 0, "orphaned": 0}
    for trial in orphans if fail_unknown else ():
        store.set_user_attr(study, trial.number, "status", "orphaned")
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        fixed["orphaned"] += 1
    recorded = {row["trial_id"]: row for row in rows}
    missing = []
    for tune_id, row in recorded.items():
        trial = by_tune.get(tune_id)
        if trial is None:
            if row["status"] in FINISHED:
                missing.append(row)
            continue
        if trial.state == optuna.trial.TrialState.RUNNING and row["status"] in FINISHED:
            tell(study, store, trial.number, spec, row["status"], row_values(spec, row), row)
            fixed["told"] += 1
    fixed["added"], _ = add_recorded(study, spec, missing, epochs=epochs)
    for tune_id, trial in by_tune.items():
        if (
            fail_unknown
            and trial.state == optuna.trial.TrialState.RUNNING
            and tune_id not in live
            and recorded.get(tune_id, {}).get("status") not in FINISHED
        ):
            store.set_user_attr(study, trial.number, "status", "interrupted")
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            fixed["interrupted"] += 1
    return fixed


def tell(
    study: optuna.Study,
    store: StudyStore,
    number: int,
    spec,
    status: str,
    values: list[float] | None,
    row: dict | None = None,
):
    """Finish Optuna trial ``number``: completed -> COMPLETE with its values; stopped -> PRUNED with its last
    reported value (one objective) or COMPLETE with its values (several); failed -> FAIL."""
    frozen = study.get_trials(deepcopy=False)[number] if number < len(study.get_trials(deepcopy=False)) else None
    if frozen is not None and frozen.state.is_finished():
        return
    for key, value in {
        "status": status,
        **({k: row.get(k) for k in ("epochs_run", "best_epoch")} if row else {}),
    }.items():
        if value is not None:
            store.set_user_attr(study, number, key if key != "epochs_run" else "epochs", value)
    single = len(spec.objective_list) == 1
    if status == "failed" or values is None:
        study.tell(number, state=optuna.trial.TrialState.FAIL)
    elif status == "stopped" and single and frozen is not None and frozen.intermediate_values:
        study.tell(number, state=optuna.trial.TrialState.PRUNED)
    else:
        study.tell(number, values if not single else values[0], state=optuna.trial.TrialState.COMPLETE)


def sweep_identity(spec, repair: bool = False) -> dict:
    """The sweep's marker. One damaged or deleted is recovered: its id from the study (named ``<name>-<id>``),
    confirmed by the results (trial ids derive from it); a sweep from before markers gets the id its study was named
    by then. ``repair`` (a driver) writes the marker again, logged; a read command writes nothing.

    Raises:
        SweepStateError: the marker is damaged and nothing vouches for an id (named, with what to do).
    """
    marker = read_marker(spec.sweep_dir)
    if marker is not None and not marker.get("damaged"):
        return marker
    candidates = []
    store = StudyStore(spec.sweep_dir, spec.study_storage, reader=not repair)  # a reader never replaces a file
    if store.local_file is None or store.local_file.is_file():
        try:
            store.pull()
            candidates = [
                s.study_name.removeprefix(f"{spec.name}-")
                for s in optuna.get_all_study_summaries(store.storage(), include_best_trial=False)
                if s.study_name.startswith(f"{spec.name}-")
            ]
        except Exception as error:  # noqa: BLE001 - a missing or unreadable study: nothing to recover from there
            logger.debug("no study to recover the sweep id from: %s", error)
    if marker is None and not candidates:
        candidates = [legacy_id(spec.sweep_dir)]  # a sweep from before markers
    try:
        ids = set(SweepResults(spec.sweep_dir).trials.column("trial_id").to_pylist())
    except (FileNotFoundError, RuntimeError):
        ids = set()

    confirmed = [c for c in candidates if not ids or any(trial_id(c, k, 1) in ids for k in range(8))]
    if len(confirmed) != 1:
        raise SweepStateError(
            f"{spec.sweep_dir / MARKER}: {'damaged' if marker else 'missing'}, and "
            f"{'no study' if not confirmed else 'more than one study'} in {store.describe()} vouches "
            f"for the sweep's id ({', '.join(candidates) or 'none found'}); restore the marker from a "
            f"copy, or start the sweep again"
        )
    recovered = {"tool": "l2d-sweep", "format": 1, "sweep_id": confirmed[0], "spec_digest": spec_digest(spec)}
    if repair:
        write_marker(spec.sweep_dir, confirmed[0], spec_digest=recovered["spec_digest"], recovered=True)
        logger.warning(
            "%s: %s; its id %s recovered from the study and the results, and the marker written again",
            spec.sweep_dir / MARKER,
            "damaged" if marker else "missing",
            confirmed[0],
        )
    return recovered


def load_sweep_study(sweep_dir, read_only: bool = False) -> tuple[Any, optuna.Study, StudyStore]:
    """``(spec, study, store)`` of an existing sweep folder (the study downloaded first for a remote sweep, into a
    cache of this process's own for a read command). ``read_only``: for a read command (nothing is written)."""
    spec = load_sweep_spec(sweep_dir)
    store = StudyStore(spec.sweep_dir, spec.study_storage, reader=read_only)
    store.pull()
    marker = sweep_identity(spec, repair=not read_only)
    name = study_name(spec, marker["sweep_id"])
    try:
        study = optuna.load_study(study_name=name, storage=store.storage())
    except KeyError:
        raise FileNotFoundError(
            f"{spec.sweep_dir}: no study {name!r} in {store.describe()} (a sweep written before "
            f"studies were kept in a database has none; resume or extend it to start one)"
        ) from None
    return spec, study, store


def search_front(study: optuna.Study, warm_start: bool = False) -> list[str]:
    """The Tune trial ids of the study's Pareto front (its best trial, for one objective), warm-start trials left
    out; with ``warm_start``, the warm-start trials on the front instead (their ids in the sweep they came from)."""
    return sorted(
        t.user_attrs["tune_trial_id"]
        for t in study.best_trials
        if "tune_trial_id" in t.user_attrs and ("warm_start_from" in t.user_attrs) == warm_start
    )
