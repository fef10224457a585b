"""Ray Tune's searcher over a sweep's Optuna study (:mod:`sweeps.search.study`): Tune asks for a configuration, the
study samples it (define-by-run, :mod:`sweeps.search.space`) and remembers every trial's outcome; the searcher's state
(the sampler with its random state, Tune ids to Optuna trials) travels in Tune's experiment and is also saved beside it
after every ask and tell (``searcher.pkl``).
"""

from __future__ import annotations

import json
import logging
import pickle

import optuna
from ray.tune.search import ConcurrencyLimiter, Searcher, SearchGenerator

from l2d.storage import Location
from sweeps.core.vocab import better
from sweeps.folder.checkpoints import HISTORY_KEY
from sweeps.folder.marker import trial_id as planned_trial_id
from sweeps.folder.trust import Signatures
from sweeps.search.space import DefineByRunSpace, decode, first_points
from sweeps.search.study import StudyStore, build_sampler, open_study, tell
from sweeps.tune import _fences

logger = logging.getLogger(__name__)


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
        data = pickle.dumps(self._state())
        self.state_file.write_bytes(data)
        Signatures(self.store.sweep_dir).sign(self.state_file.name, data)  # what resume may load back

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

    def relocate(self, spec, trusted: bool = False) -> None:
        """After Tune unpickled this searcher from an experiment (resume): read and write the study and the state
        of the sweep folder ``spec`` reads from, which may not be where the experiment began (a copied or moved
        sweep); ``trusted``: load ``searcher.pkl`` even when this user's key did not sign it (``--trust``)."""
        self.spec = spec
        self.store = StudyStore(spec.sweep_dir, spec.study_storage)
        self.trusted = trusted
        self._study = None

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
            # Tagged once its parameters are drawn (a tagged trial is one a restored Tune trial can take up); a
            # driver killed before this leaves an untagged running trial, which the final reconcile fails as
            # orphaned (sweeps.search.study.reconcile).
            for key, value in {
                "tune_trial_id": trial_id,
                "teacher": decoded["teacher"],
                "student": decoded["student"],
                "method": decoded["method"],
                "status": "running",
                "sweep_id": self.sweep_id,
            }.items():
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
            if better(values[0], best["values"][0] if best else None, mode):
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
        self.store.report(self.study, number, epoch, float(result[metric]))
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
        tell(self.study, self.store, number, self.spec, status, best["values"] if best else None, row)
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

        data = self.state_file.read_bytes() if self.state_file.is_file() else None
        trusted = getattr(self, "trusted", False)
        if data is not None and not trusted and not Signatures(self.store.sweep_dir).check(self.state_file.name, data):
            logger.warning(
                "%s: not signed by this user's key; not loaded (Tune's copy, checked with the experiment, is used)",
                self.state_file,
            )
            data = None
        if data is not None:
            try:
                newer = pickle.loads(data)
                if len(newer["numbers"]) >= len(state["numbers"]):
                    state = newer
            except Exception as error:  # noqa: BLE001 - a damaged pickle: Tune's copy is the fallback
                logger.warning(
                    "%s: unreadable searcher state (%s); using Tune's saved copy",
                    self.state_file,
                    str(error).splitlines()[0][:200] if str(error) else type(error).__name__,
                )
        self.numbers, self.best, self.reported = state["numbers"], state["best"], state["reported"]
        self.sampler = state["sampler"]
        self._study = None


class SweepSearchGenerator(SearchGenerator):
    """Tune's search generator, but trial ids derive from the sweep id, the experiment and Tune's trial counter
    (saved with the experiment): a trial started after Tune's last save and re-created by a resume keeps its id,
    so it finds its own checkpoints and result rows instead of leaving a ghost beside a copy of itself."""

    def __init__(self, searcher, sweep_id: str, experiment: int):
        super().__init__(searcher)
        self.sweep_id = sweep_id
        self.experiment = experiment

    def create_trial_if_possible(self, experiment_spec):
        planned = planned_trial_id(self.sweep_id, self.experiment, _fences.trials_created(self) + 1)
        with _fences.trial_id_source(planned):
            return super().create_trial_if_possible(experiment_spec)


def build_search(spec, sweep_id: str, experiment: int = 0, warm_started: bool = False) -> SweepSearchGenerator:
    """The search algorithm of a sweep: a :class:`StudySearcher` over the sweep's study (in its database) under
    Tune's concurrency limit, with deterministic trial ids (see :class:`SweepSearchGenerator`)."""
    searcher = StudySearcher(spec, sweep_id, StudyStore(spec.sweep_dir, spec.study_storage), warm_started)
    limited = ConcurrencyLimiter(searcher, max_concurrent=spec.resources.max_concurrent_trials)
    return SweepSearchGenerator(limited, sweep_id, experiment)


class FixedRuns(Searcher):
    """Hands out a fixed list of ``(trial id, config)`` runs in order (the confirmation stage's,
    :mod:`sweeps.results.confirm`), then says the search is finished. No study: confirmation runs are not samples of the
    search space."""

    def __init__(self, runs: list[tuple[str, dict]], metric: str, mode: str):
        super().__init__(metric=metric, mode=mode)
        self.runs = list(runs)
        self.given = 0

    def next_id(self) -> str | None:
        """The id of the run :meth:`suggest` hands out next (None: every run is out)."""
        return self.runs[self.given][0] if self.given < len(self.runs) else None

    def suggest(self, trial_id: str) -> dict | str:
        if self.given >= len(self.runs):
            return Searcher.FINISHED
        _, config = self.runs[self.given]
        self.given += 1
        return dict(config)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as stream:
            pickle.dump({"given": self.given}, stream)

    def restore(self, checkpoint_path: str) -> None:  # never restored: a resumed stage plans its runs again
        with open(checkpoint_path, "rb") as stream:
            self.given = pickle.load(stream)["given"]


class FixedRunsGenerator(SearchGenerator):
    """Tune's search generator over :class:`FixedRuns` (under a concurrency limit): each trial gets the id its run
    was planned under (a configuration and a seed), not Tune's random one."""

    def __init__(self, runs: FixedRuns, max_concurrent: int):
        super().__init__(ConcurrencyLimiter(runs, max_concurrent=max_concurrent))
        self.fixed = runs

    def create_trial_if_possible(self, experiment_spec):
        planned = self.fixed.next_id()
        if planned is None:
            return super().create_trial_if_possible(experiment_spec)  # Tune learns the search is finished
        with _fences.trial_id_source(planned):
            return super().create_trial_if_possible(experiment_spec)
