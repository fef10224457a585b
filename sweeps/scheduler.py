"""ASHA whose rung records survive a crash.

Ray Tune does not save a scheduler's state when an experiment is restored (ray issue 30838): a resumed sweep
would start ASHA with empty rungs and stop nothing until they refill. :class:`PersistentASHA` writes its rungs
(milestone -> {trial id: metric}) to a JSON file in the sweep folder after every change, atomically, and reads
them back the first time it is used after a restore. Trial ids survive a Tune restore, so the records stay
meaningful. Its stop decisions are saved too (``stopped``: trial id -> epoch): a trial that ASHA stopped moments
before a crash, before Tune recorded it, would otherwise be restored as running and train on; instead it closes
itself from its checkpoint (:func:`stopped_at`, read by the trial). An unreadable rung file is set aside and the
rungs are rebuilt from ``results/epochs.parquet`` (each trial's metric at the first epoch that reached each
milestone: what ASHA recorded), with a warning naming it.
"""

from __future__ import annotations

import json
import logging
import time
from types import SimpleNamespace

from ray.tune.schedulers import ASHAScheduler

from l2d.storage import Location

logger = logging.getLogger(__name__)


class PersistentASHA(ASHAScheduler):
    """``ASHAScheduler`` plus a JSON file of its rungs at ``state_uri`` (a local path or a URI)."""

    def __init__(self, state_uri: str | Location, **kwargs):
        super().__init__(**kwargs)
        self.state_uri = str(state_uri)  # a string: pickled by Tune, and by sweeps written before Location existed
        self._loaded = False
        self._stopped: dict[str, int] = {}

    # Tune pickles the scheduler at the start of a run and unpickles that copy on restore: the rungs in the
    # pickle are stale, so the first use reloads them from the JSON file.
    def __setstate__(self, state):
        self.__dict__.update({"_stopped": {}, **state})
        self._loaded = False

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        location = Location.parse(self.state_uri)
        if not location.is_file():
            return
        try:
            state = json.loads(location.read_text())
            for bracket, saved in zip(self._brackets, state["brackets"]):
                rungs = {float(milestone): dict(recorded) for milestone, recorded in saved}
                bracket._rungs = [(milestone, rungs.get(float(milestone), {})) for milestone, _ in bracket._rungs]
            self._num_stopped = int(state.get("num_stopped", 0))
            self._stopped = {str(k): int(v) for k, v in state.get("stopped", {}).items()}
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
            aside = location.parent / f"{location.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
            location.move(aside)
            self._rebuild()
            logger.warning("%s: unreadable ASHA state (%s); set it aside as %s and rebuilt %d rung records from "
                           "results/epochs.parquet", location, error, aside.name, self.num_records())
            self._save()
            return
        logger.info("ASHA rungs restored from %s (%d records)", self.state_uri, self.num_records())

    def _rebuild(self) -> None:
        """The rungs as ASHA filled them: each trial's epochs, in order, through the bracket's own bookkeeping."""
        from sweeps.results import CorruptResultsError, read_table

        for bracket in self._brackets:
            bracket._rungs = [(milestone, {}) for milestone, _ in bracket._rungs]
        try:
            table = read_table(Location.parse(self.state_uri).parent / "results" / "epochs.parquet")
        except CorruptResultsError:
            table = None
        if table is None or self._metric not in table.column_names:
            return
        rows = sorted((r for r in table.to_pylist() if r.get(self._metric) is not None),
                      key=lambda r: (r["trial_id"], r["epoch"]))
        for row in rows:
            bracket = self._trial_info.get(row["trial_id"], self._brackets[0])
            bracket.on_result(SimpleNamespace(trial_id=row["trial_id"]), row["epoch"],
                              self._metric_op * row[self._metric])

    def num_records(self) -> int:
        return sum(len(recorded) for bracket in self._brackets for _, recorded in bracket._rungs)

    def rungs(self) -> list[list[tuple[float, dict]]]:
        """Per bracket, ``(milestone, {trial id: metric * mode sign})`` from the highest milestone down."""
        return [[(float(m), dict(r)) for m, r in bracket._rungs] for bracket in self._brackets]

    def _save(self) -> None:
        Location.parse(self.state_uri).write_text(json.dumps({"brackets": self.rungs(), "num_stopped": self._num_stopped,
                                                               "stopped": self._stopped}))

    def on_trial_add(self, tune_controller, trial):
        self._ensure_loaded()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        self._ensure_loaded()
        if trial.trial_id not in self._trial_info:  # a trial restored without on_trial_add
            self._trial_info[trial.trial_id] = self._brackets[0]
        before = self.num_records()
        action = super().on_trial_result(tune_controller, trial, result)
        if action == self.STOP and result.get(self._time_attr, self._max_t) < self._max_t:
            self._stopped[trial.trial_id] = int(result[self._time_attr])
            self._save()
        elif self.num_records() != before:
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


def stopped_at(state_file: Location, trial_id: str) -> int | None:
    """The epoch at which ASHA stopped ``trial_id``, as saved in its state file (None: not stopped, or unreadable)."""
    try:
        return json.loads(state_file.read_text()).get("stopped", {}).get(trial_id)
    except (OSError, ValueError, AttributeError, UnicodeDecodeError):
        return None
