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
import uuid

import pyarrow.fs as pafs
from ray.tune.schedulers import ASHAScheduler

from sweeps.results import filesystem_for

logger = logging.getLogger(__name__)


class PersistentASHA(ASHAScheduler):
    """``ASHAScheduler`` plus a JSON file of its rungs at ``state_uri`` (a local path or a pyarrow URI)."""

    def __init__(self, state_uri: str, **kwargs):
        super().__init__(**kwargs)
        self.state_uri = state_uri
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
        filesystem, path = filesystem_for(self.state_uri)
        if filesystem.get_file_info(path).type != pafs.FileType.File:
            return
        with filesystem.open_input_stream(path) as stream:
            state = json.loads(stream.read().decode())
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
        filesystem, path = filesystem_for(self.state_uri)
        data = json.dumps({"brackets": self.rungs(), "num_stopped": self._num_stopped}).encode()
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with filesystem.open_output_stream(tmp) as stream:
            stream.write(data)
        filesystem.move(tmp, path)

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
