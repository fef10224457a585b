"""ASHA whose rung records survive a crash.

Ray Tune does not save a scheduler's state when an experiment is restored (ray issue 30838): a resumed sweep
would start ASHA with empty rungs and stop nothing until they refill. :class:`PersistentASHA` writes its rungs
(milestone -> {trial id: metric}) to a JSON file in the sweep folder after every change, atomically, and reads
them back the first time it is used after a restore. Trial ids survive a Tune restore, so the records stay
meaningful.
"""

from __future__ import annotations

import json
import logging

from ray.tune.schedulers import ASHAScheduler

from l2d.storage import Location

logger = logging.getLogger(__name__)


class PersistentASHA(ASHAScheduler):
    """``ASHAScheduler`` plus a JSON file of its rungs at ``state_uri`` (a local path or a URI)."""

    def __init__(self, state_uri: str | Location, **kwargs):
        super().__init__(**kwargs)
        self.state_uri = str(state_uri)  # a string: pickled by Tune, and by sweeps written before Location existed
        self._loaded = False

    # Tune pickles the scheduler at the start of a run and unpickles that copy on restore: the rungs in the
    # pickle are stale, so the first use reloads them from the JSON file.
    def __setstate__(self, state):
        self.__dict__.update(state)
        self._loaded = False

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        location = Location.parse(self.state_uri)
        if not location.is_file():
            return
        state = json.loads(location.read_text())
        for bracket, saved in zip(self._brackets, state["brackets"]):
            rungs = {float(milestone): recorded for milestone, recorded in saved}
            bracket._rungs = [(milestone, dict(rungs.get(float(milestone), {}))) for milestone, _ in bracket._rungs]
        self._num_stopped = state.get("num_stopped", 0)
        logger.info("ASHA rungs restored from %s (%d records)", self.state_uri, self.num_records())

    def num_records(self) -> int:
        return sum(len(recorded) for bracket in self._brackets for _, recorded in bracket._rungs)

    def rungs(self) -> list[list[tuple[float, dict]]]:
        """Per bracket, ``(milestone, {trial id: metric * mode sign})`` from the highest milestone down."""
        return [[(float(m), dict(r)) for m, r in bracket._rungs] for bracket in self._brackets]

    def _save(self) -> None:
        Location.parse(self.state_uri).write_text(json.dumps({"brackets": self.rungs(),
                                                               "num_stopped": self._num_stopped}))

    def on_trial_add(self, tune_controller, trial):
        self._ensure_loaded()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        self._ensure_loaded()
        if trial.trial_id not in self._trial_info:  # a trial restored without on_trial_add
            self._trial_info[trial.trial_id] = self._brackets[0]
        before = self.num_records()
        action = super().on_trial_result(tune_controller, trial, result)
        if self.num_records() != before:
            self._save()
        return action

    def on_trial_complete(self, tune_controller, trial, result):
        self._ensure_loaded()
        if trial.trial_id not in self._trial_info:
            self._trial_info[trial.trial_id] = self._brackets[0]
        before = self.num_records()
        super().on_trial_complete(tune_controller, trial, result)
        if self.num_records() != before:
            self._save()

    def on_trial_remove(self, tune_controller, trial):
        self._trial_info.pop(trial.trial_id, None)
