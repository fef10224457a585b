"""Every use of a private Ray API, in one place. Written against Ray 2.60.0; each names the upstream issue that forces
it. ``tests/sweeps/test_fences.py`` checks each one against the installed Ray and fails loudly, naming the function
here, when an upgrade moves what it relies on (instead of a sweep failing, or silently misbehaving, later).

Optuna needs none: the study is reached through Optuna's public storage API (:class:`sweeps.search.study.StudyStore`).
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import Any, Iterator

from ray.tune.experiment.trial import Trial

#: The Ray version these fences were written against.
WRITTEN_FOR_RAY = "2.60.0"


# --- Tuner.restore takes no callbacks ------------------------------------------------------------------------------
# Ray issue 41364: a restored Tuner has no public way to reach its RunConfig, and Tuner.restore takes no callbacks;
# the restored experiment would run with the callbacks pickled when it started (an older version's, or none of this
# run's collaborators: the lease guard, the tracker).


def set_restored_callbacks(tuner, callbacks: list) -> None:
    """Give a restored :class:`ray.tune.Tuner` this run's callbacks."""
    tuner._local_tuner.get_run_config().callbacks = callbacks


def restored_search_and_scheduler(tuner) -> tuple:
    """The search algorithm and the scheduler a restored :class:`ray.tune.Tuner` unpickled (Tune saves them whole in
    its ``tuner.pkl``, with whatever paths they held when the experiment started)."""
    config = tuner._local_tuner._tune_config
    return config.search_alg, config.scheduler


# --- deterministic trial ids ------------------------------------------------------------------------------------
# Tune names trials with Trial.generate_id() (uuid4 since ray PR 29900) and lets no searcher choose: a trial created
# after Tune's last save and re-created by a resume would come back under a new id, beside a ghost of itself. The
# search generator swaps the id source for the one call that creates a trial (Tune's controller creates trials in
# one thread), and reads Tune's trial counter, saved with the experiment.


def trials_created(generator) -> int:
    """How many trials a :class:`ray.tune.search.SearchGenerator` has created (saved in Tune's experiment state)."""
    return generator._counter


@contextlib.contextmanager
def trial_id_source(trial_id: str) -> Iterator[None]:
    """Within the block, Tune's next trial gets ``trial_id``."""
    original = Trial.__dict__["generate_id"]
    Trial.generate_id = classmethod(lambda cls: trial_id)
    try:
        yield
    finally:
        Trial.generate_id = original


# --- ASHA's rungs ---------------------------------------------------------------------------------------------------
# Ray issue 30838: Tune does not save a scheduler's state when an experiment is restored, so ASHA would start with
# empty rungs and stop nothing until they refill. PersistentASHA saves and restores them itself, which needs the
# scheduler's brackets and their rungs (milestone -> {trial id: metric x mode sign}).


def asha_rungs(scheduler) -> list[list[tuple[float, dict]]]:
    """Per bracket, ``(milestone, {trial id: signed metric})`` from the highest milestone down (copies)."""
    return [[(float(m), dict(r)) for m, r in bracket._rungs] for bracket in scheduler._brackets]


def set_asha_rungs(scheduler, saved: list) -> None:
    """Load rungs saved by :func:`asha_rungs` into ``scheduler`` (milestones it does not have are left empty)."""
    for bracket, rungs in zip(scheduler._brackets, saved):
        by_milestone = {float(milestone): dict(recorded) for milestone, recorded in rungs}
        bracket._rungs = [(milestone, by_milestone.get(float(milestone), {})) for milestone, _ in bracket._rungs]


def asha_stopped(scheduler) -> int:
    return scheduler._num_stopped


def set_asha_stopped(scheduler, count: int) -> None:
    scheduler._num_stopped = count


def asha_settings(scheduler) -> dict[str, Any]:
    """The scheduler's metric, its mode's sign, time attribute and max_t (set by Tune at the experiment's start)."""
    return {
        "metric": scheduler._metric,
        "sign": scheduler._metric_op,
        "time_attr": scheduler._time_attr,
        "max_t": scheduler._max_t,
    }


def asha_bracket_of(scheduler, trial_id: str, default_first: bool = True):
    """The bracket a trial was assigned to (the first one, registered now, for a trial restored without
    ``on_trial_add``)."""
    if trial_id not in scheduler._trial_info and default_first:
        scheduler._trial_info[trial_id] = scheduler._brackets[0]
    return scheduler._trial_info.get(trial_id)


def forget_asha_trial(scheduler, trial_id: str) -> None:
    scheduler._trial_info.pop(trial_id, None)


def asha_record(scheduler, trial_id: str, time: float, signed_metric: float) -> None:
    """What ASHA records for a trial's result at ``time`` (its bracket's own bookkeeping), without a decision."""
    bracket = asha_bracket_of(scheduler, trial_id)
    bracket.on_result(SimpleNamespace(trial_id=trial_id), time, signed_metric)
