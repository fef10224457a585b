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

from ray.tune.schedulers import ASHAScheduler

from l2d.storage import Location
from sweeps.results import read_epochs
from sweeps.tune import _fences

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
            _fences.set_asha_rungs(self, state["brackets"])
            _fences.set_asha_stopped(self, int(state.get("num_stopped", 0)))
            self._stopped = {str(k): int(v) for k, v in state.get("stopped", {}).items()}
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
            aside = location.parent / f"{location.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
            location.move(aside)
            self._rebuild()
            logger.warning(
                "%s: unreadable ASHA state (%s); set it aside as %s and rebuilt %d rung records from "
                "results/epochs.parquet",
                location,
                error,
                aside.name,
                self.num_records(),
            )
            self._save()
            return
        logger.info("ASHA rungs restored from %s (%d records)", self.state_uri, self.num_records())

    def _rebuild(self) -> None:
        """The rungs as ASHA filled them: each trial's epochs, in order, through the bracket's own bookkeeping."""
        _fences.set_asha_rungs(self, [[] for _ in self.rungs()])
        settings = _fences.asha_settings(self)
        rows = read_epochs(Location.parse(self.state_uri).parent, settings["metric"])
        for row in sorted(rows, key=lambda r: (r["trial_id"], r["epoch"])):
            _fences.asha_record(self, row["trial_id"], row["epoch"], settings["sign"] * row[settings["metric"]])

    def num_records(self) -> int:
        return sum(len(recorded) for bracket in self.rungs() for _, recorded in bracket)

    def rungs(self) -> list[list[tuple[float, dict]]]:
        """Per bracket, ``(milestone, {trial id: metric * mode sign})`` from the highest milestone down."""
        return _fences.asha_rungs(self)

    def _save(self) -> None:
        Location.parse(self.state_uri).write_text(
            json.dumps({"brackets": self.rungs(), "num_stopped": _fences.asha_stopped(self), "stopped": self._stopped})
        )

    def on_trial_add(self, tune_controller, trial):
        self._ensure_loaded()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        self._ensure_loaded()
        _fences.asha_bracket_of(self, trial.trial_id)  # a trial restored without on_trial_add gets the first one
        before = self.num_records()
        action = super().on_trial_result(tune_controller, trial, result)
        settings = _fences.asha_settings(self)
        if action == self.STOP and result.get(settings["time_attr"], settings["max_t"]) < settings["max_t"]:
            self._stopped[trial.trial_id] = int(result[settings["time_attr"]])
            self._save()
        elif self.num_records() != before:
            self._save()
        return action

    def on_trial_complete(self, tune_controller, trial, result):
        self._ensure_loaded()
        _fences.asha_bracket_of(self, trial.trial_id)
        before = self.num_records()
        super().on_trial_complete(tune_controller, trial, result)
        if self.num_records() != before:
            self._save()

    def on_trial_remove(self, tune_controller, trial):
        _fences.forget_asha_trial(self, trial.trial_id)


def stopped_at(state_file: Location, trial_id: str) -> int | None:
    """The epoch at which ASHA stopped ``trial_id``, as saved in its state file (None: not stopped, or unreadable)."""
    try:
        return json.loads(state_file.read_text()).get("stopped", {}).get(trial_id)
    except (OSError, ValueError, AttributeError, UnicodeDecodeError):
        return None
