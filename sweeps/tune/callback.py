"""The driver's view of the trials: a Ray Tune callback that records every report into the results tables and
TensorBoard, and prints one progress line per event.

Every epoch report is written to ``results/`` (atomically) before its line is printed, so a driver killed at any
moment loses no row it announced; before each write the driver checks that it still holds the sweep's lease. On
its first step it reconciles the tables with Tune's trial states, and it never drops a recorded row: an unfinished
trial that no experiment continued ends as ``interrupted``. TensorBoard event files are written locally (under the
sweep folder, or under
the cache for a remote sweep, uploaded at the end). A new result column goes in :mod:`sweeps.results`; a new
per-trial side effect of the driver (a tracker, a lease renewal) goes here.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time

import pyarrow.fs as pafs
from ray.tune import Callback
from tensorboard.plugins.hparams import summary_v2 as hp
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries
from torch.utils.tensorboard.writer import FileWriter

from l2d.storage import Location, cache_dir
from sweeps.core.faults import failpoint
from sweeps.core.interrupt import watch_tune
from sweeps.core.progress import about, current
from sweeps.folder.checkpoints import HISTORY_KEY, prune
from sweeps.folder.trust import Signatures
from sweeps.results import OBJECTIVE_COLUMNS, KnownTrial, ResultsWriter
from sweeps.search.space import decode
from sweeps.specs import Range

logger = logging.getLogger(__name__)


def tensorboard_dir(sweep_dir: Location) -> Location:
    """Where the event files are written: ``<sweep>/tensorboard``, or a local staging folder for a remote sweep."""
    if sweep_dir.is_local:
        return sweep_dir / "tensorboard"
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(sweep_dir))
    return Location.parse(cache_dir() / "tensorboard" / safe)


def upload_tensorboard(sweep_dir: Location) -> None:
    """Copy a remote sweep's staged event files into ``<sweep>/tensorboard``."""
    local = tensorboard_dir(sweep_dir)
    if sweep_dir.is_local or not local.is_dir():
        return
    pafs.copy_files(local.path, (sweep_dir / "tensorboard").path, destination_filesystem=sweep_dir.filesystem)


def write_hparams_config(spec) -> None:
    """The sweep's HParams config at the top of its TensorBoard folder: every hyperparameter a trial can have, with
    its domain (the searched range, the pairings' teachers and students, the methods), and the metrics each trial
    logs when it ends; TensorBoard's HParams dashboard then filters and plots the trials by these. Rewritten by each
    driver (a grown or edited search space); the trials' own event files are in their subfolders."""
    hparams = [
        hp.HParam("teacher", hp.Discrete(sorted({p.teacher for p in spec.pairings}))),
        hp.HParam("student", hp.Discrete(sorted({s for p in spec.pairings for s in p.students}))),
        hp.HParam("method", hp.Discrete(sorted(spec.methods))),
    ]
    for name, value in sorted(spec.search_space.items()):
        domain = (
            hp.RealInterval(float(value.low), float(value.high))
            if isinstance(value, Range)
            else hp.Discrete([float(value)])
        )
        hparams.append(hp.HParam(name, domain))
    metrics = [
        hp.Metric("hparam/best_val_mAP", display_name="best val mAP"),
        hp.Metric("hparam/test_mAP_at_best", display_name="test mAP at the best epoch"),
    ]
    folder = tensorboard_dir(Location.parse(spec.sweep_dir))
    folder.makedirs()
    for old in folder.list():  # the previous driver's config (each trial's events are in its own subfolder)
        if old.name.startswith("events.out.tfevents.") and old.is_file():
            old.delete()
    writer = FileWriter(str(folder))
    writer.add_summary(hp.hparams_config_pb(hparams, metrics))
    writer.close()


def write_trial_hparams(board, hparams: dict, metrics: dict) -> None:
    """One trial's hyperparameters and final metrics as an HParams session in its own event files. Only the session
    (its start and end) and the metrics' scalars: not an experiment config of its own, which torch's ``add_hparams``
    also writes, and of which TensorBoard shows whichever it finds first, hiding every hyperparameter that trial did
    not have. The one config is the sweep's (:func:`write_hparams_config`)."""
    _, session_start, session_end = hparams_summaries(hparams, metrics)
    board.file_writer.add_summary(session_start)
    board.file_writer.add_summary(session_end)
    for name, value in metrics.items():
        board.add_scalar(name, value)
    board.flush()


def error_message(trial) -> str:
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


class SweepCallback(Callback):
    """Records every epoch report and trial end into the results tables and TensorBoard, and prints progress."""

    def __init__(
        self,
        sweep_dir: str | Location,
        max_epochs: int,
        metric: str,
        mode: str,
        quiet: bool = False,
        guard=None,
        tracker=None,
        exporter=None,
        keep: str = "best+last",
        tune_folder: str = "tune",
        total: int | None = None,
        concurrency: int = 1,
    ):
        self.sweep_dir = str(sweep_dir)
        self.max_epochs = max_epochs
        self.metric = metric
        self.mode = mode
        self.quiet = quiet
        self._writer = None
        self._boards: dict = {}
        # The collaborators the experiment hands over (sweeps.tune.experiment); none of them is pickled.
        self.guard = guard  # called before every write (the lease check)
        self.tracker = tracker  # an MLflow tracker (sweeps.tune.tracking)
        self.exporter = exporter  # (trial id, folder) -> writes the trial's best student there (sweeps.results.export)
        self.keep = keep  # what a finished trial keeps of its checkpoints (sweeps.folder.checkpoints.prune)
        self.tune_folder = tune_folder  # Tune's state of this experiment: signed as Tune saves it (sweeps.folder.trust)
        self._signatures = None
        self._reconciled = False
        self.total = total  # the sweep's trial budget: "(3/8)" and the time left in the progress lines
        self.concurrency = max(1, concurrency)
        self._epoch_seconds: list[float] = []  # the epochs this driver saw: what the time left is estimated from
        self._last_best = None  # (trial id, value) of the leader at the last report: a new best prints the state
        self._trial_started: dict[str, float] = {}  # trial id -> when this driver started it
        self._trial_walls: list[tuple[float, int]] = []  # (wall seconds, epochs) of the trials that ended here

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(
            _writer=None, _boards={}, guard=None, tracker=None, exporter=None, _reconciled=False, _signatures=None
        )
        return state

    def __setstate__(self, state):
        self.__dict__.update(
            {
                "guard": None,
                "tracker": None,
                "exporter": None,
                "keep": "best+last",
                "tune_folder": "tune",
                "_reconciled": False,
                "total": None,
                "concurrency": 1,
                "_epoch_seconds": [],
                "_last_best": None,
                "_trial_started": {},
                "_trial_walls": [],
                **state,
            }
        )
        self._signatures = None

    @property
    def location(self) -> Location:
        return Location.parse(self.sweep_dir)

    @property
    def writer(self) -> ResultsWriter:
        if self._writer is None:
            self._writer = ResultsWriter(self.location, self.max_epochs, self.metric, self.mode)
        return self._writer

    def _say(self, text: str) -> None:
        if not self.quiet:
            current().say(text)

    def _status(self, changed: bool) -> None:
        """The sweep's state line (live on a terminal; in a log printed only when ``changed``)."""
        if not self.quiet:
            current().status(self._summary(), changed)

    def _board(self, trial_id: str):
        if trial_id not in self._boards:
            self._boards[trial_id] = SummaryWriter(str(tensorboard_dir(self.location) / trial_id))
        return self._boards[trial_id]

    def _best(self) -> str:
        """``best val mAP 81.20 (test mAP 80.10) by <trial> <student> <method>``, or "" before the first score."""
        best = self.writer.leader()
        if best is None:
            return ""
        column = OBJECTIVE_COLUMNS[self.metric]
        name = self.metric.replace("_", " ")
        test = f" (test mAP {best['test_mAP_at_best']:.2f})" if best.get("test_mAP_at_best") is not None else ""
        value = f"{best[column]:.4g}" if self.metric == "val_loss" else f"{best[column]:.2f}"
        return f"best {name} {value}{test} by {best['trial_id']} {best['student']} {best['method']}"

    def _summary(self) -> str:
        """The state of the sweep: ``trials 2 completed, 1 running of 8 | epochs 7/24 | ~4 min left | best ...``."""
        counts = self.writer.counts()
        state = "trials " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none yet")
        if self.total:
            state += f" of {self.total}"
        done = sum(len(rows) for rows in self.writer.epochs.values())
        state += f" | epochs {done}" + (f"/{self.total * self.max_epochs}" if self.total else "")
        left = self._time_left()
        best = self._best()
        return " | ".join(part for part in (state, left, best) if part)

    def _time_left(self) -> str:
        """``~N min left``: the epochs still to run at the mean epoch time seen, over the concurrency. Trials not
        started are expected to run as many epochs as the finished ones did on average (ASHA stops most early);
        before any trial has finished that is every epoch, and the estimate says "at most"."""
        if not self.total or not (self._epoch_seconds or self._trial_walls):
            return ""
        writer = self.writer
        ended = [
            len(writer.epochs.get(t, {}))
            for t, r in writer.trials.items()
            if r.status not in ("running", "pending", "interrupted")
        ]
        per_trial = sum(ended) / len(ended) if ended else self.max_epochs
        remaining = max(0, self.total - len(writer.trials)) * per_trial
        for trial_id, record in writer.trials.items():
            if record.status == "running":
                remaining += max(0.0, min(self.max_epochs, per_trial) - len(writer.epochs.get(trial_id, {})))
        if remaining <= 0:
            return ""

        # Seconds per epoch: from the trials that ended under this driver when there are some (their wall time holds
        # what an epoch does not: a trial's start, its workers, its checkpoints), else from the epochs reported.
        walls = [(w, n) for w, n in self._trial_walls[-50:] if n > 0]
        recent = self._epoch_seconds[-50:]
        if walls:
            per_epoch = sum(w for w, _ in walls) / sum(n for _, n in walls)
        elif recent:
            per_epoch = sum(recent) / len(recent)
        else:
            return ""
        seconds = remaining * per_epoch / self.concurrency
        return f"{'' if ended else 'at most '}{about(seconds)} left"

    def on_step_begin(self, iteration, trials, **info):
        watch_tune()  # Tune's SIGINT handler is in place by now: a Ctrl-C it handles is recorded for the driver
        self._reconcile(trials)

    def on_step_end(self, iteration, trials, **info):
        # Tune saved its state (if it did) just before this: sign what changed, so that a resume may load it.
        if self.location.is_local:
            if self._signatures is None:
                self._signatures = Signatures(self.location)
            self._signatures.sign_folder(self.tune_folder)

    def _reconcile(self, trials) -> None:
        if self._reconciled:
            return
        self._reconciled = True
        added = self.writer.reconcile([known_trial(trial) for trial in trials])
        if added:
            self._say(f"rebuilt the rows of {len(added)} trial(s) from Tune's state: {', '.join(added)}")
            self._write()

    def on_trial_start(self, iteration, trials, trial, **info):
        config = decode(trial.config)
        record = self.writer.trials.get(trial.trial_id)
        if (
            record is not None
            and record.config
            and record.status in ("running", "pending", "interrupted")
            and not _same_config(record.config, config)
        ):
            # A trial lost in a crash whose id a resumed search gave to another configuration: keep its rows aside.
            moved = self.writer.set_aside_trial(trial.trial_id)
            self._say(
                f"trial {trial.trial_id}: the run lost in the crash had another configuration; its rows are "
                f"kept as {moved} (interrupted)"
            )
        self.writer.trial(trial.trial_id, config)
        self.writer.set_status(trial.trial_id, "running")
        self._trial_started[trial.trial_id] = time.time()
        self._write()
        if self.tracker is not None:
            self.tracker.start(trial.trial_id, config)
        count = f"({len(self.writer.trials)}/{self.total}) " if self.total else ""
        self._say(
            f"{count}trial {trial.trial_id} started: {config['teacher']} -> {config['student']}, {config['method']}, "
            + ", ".join(f"{k}={v:.3g}" for k, v in config.items() if isinstance(v, float))
        )
        self._status(changed=False)  # the live line agrees with the event above it

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "epoch" not in result:
            return
        config = decode(trial.config)
        for earlier in json.loads(result.get(HISTORY_KEY) or "[]"):
            if not self.writer.has_epoch(trial.trial_id, int(earlier["epoch"])):
                self.writer.record_epoch(trial.trial_id, config, earlier)
        self.writer.record_epoch(trial.trial_id, config, result)
        # Written at every report (a small table), before anything is printed: a driver killed at any moment
        # loses no epoch row that it announced.
        self._write()
        if isinstance(result.get("epoch_seconds"), (int, float)) and math.isfinite(result["epoch_seconds"]):
            self._epoch_seconds.append(float(result["epoch_seconds"]))
        board = self._board(trial.trial_id)
        epoch = int(result["epoch"])
        for name, value in result.items():
            if name.startswith(("val_", "train_", "test_")) or name in ("images_per_s", "lr"):
                if isinstance(value, (int, float)) and math.isfinite(value):
                    board.add_scalar(name.replace("_", "/", 1), value, epoch)
        board.flush()
        if self.tracker is not None:
            self.tracker.epoch(trial.trial_id, config, result)
        leader = self.writer.leader()
        best = (leader["trial_id"], leader.get(OBJECTIVE_COLUMNS[self.metric])) if leader is not None else None
        new_best = best is not None and best != self._last_best
        self._last_best = best
        self._say(
            f"trial {trial.trial_id} epoch {epoch}/{self.max_epochs}: val mAP {result.get('val_mAP', math.nan):.2f}"
            f", test mAP {result.get('test_mAP', math.nan):.2f}, {result.get('images_per_s', 0):.0f} img/s"
            + (" (new best)" if new_best and best[0] == trial.trial_id else "")
        )
        self._status(changed=new_best)
        failpoint(f"epoch-{epoch}")

    def _end(self, trial, error: str | None) -> None:
        config = decode(trial.config)
        self.writer.finish(trial.trial_id, config, error)
        record = self.writer.trials[trial.trial_id]
        row = self.writer.row(trial.trial_id)
        if row.get("best_val_mAP") is not None:
            hparams = {k: v for k, v in config.items() if isinstance(v, (int, float, str)) and v is not None}
            write_trial_hparams(
                self._board(trial.trial_id),
                hparams,
                {
                    "hparam/best_val_mAP": row["best_val_mAP"],
                    "hparam/test_mAP_at_best": row.get("test_mAP_at_best") or math.nan,
                },
            )
        message = f"trial {trial.trial_id} {record.status}" + (f": {error}" if error else "")
        if trial.trial_id in self._trial_started:
            self._trial_walls.append(
                (time.time() - self._trial_started.pop(trial.trial_id), len(self.writer.epochs.get(trial.trial_id, {})))
            )
        self._write()
        self._say(message)
        self._status(changed=True)
        board = self._boards.pop(trial.trial_id, None)  # a finished trial writes no more events: close its files
        if board is not None:
            board.close()
        failpoint("trial-end")
        prune(self.location / "train" / f"trial-{trial.trial_id}", record.status, self.keep)
        if self.tracker is not None:
            exporter = self.exporter
            self.tracker.finish(
                trial.trial_id,
                config,
                record.status,
                (lambda folder: exporter(trial.trial_id, folder)) if exporter else None,
            )

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, error_message(trial))

    def on_experiment_end(self, trials, **info):
        # Trial ids are deterministic (sweeps.search.space.SweepSearchGenerator), so a trial lost in a crash is
        # re-created under its own id by the resumed experiment; one that was not (another experiment's, after Tune's
        # state was lost) keeps its rows, marked interrupted.
        self._reconcile(trials)  # a restored experiment with nothing left to run takes no step
        lost = self.writer.interrupt_unknown({trial.trial_id for trial in trials})
        if lost:
            self._say(
                f"{len(lost)} unfinished trial(s) from before a crash were not continued (kept, interrupted): "
                f"{', '.join(lost)}"
            )
        if self.tracker is not None:  # a trial the experiment left unfinished (Ctrl-C, a lost lease): its run KILLED
            for trial in trials:
                record = self.writer.trials.get(trial.trial_id)
                if record is not None and record.status in ("running", "pending"):
                    self.tracker.finish(trial.trial_id, decode(trial.config), "interrupted", None)
        self._write()
        if self.guard is not None:
            self.guard()
        self.writer.publish()  # the compacted tables, whole, at every experiment's end
        for board in self._boards.values():
            board.close()
        self._boards = {}
        upload_tensorboard(self.location)

    def _write(self) -> None:
        if self.guard is not None:
            self.guard()
        self.writer.write()


def known_trial(trial) -> KnownTrial:
    """A Tune trial as the results tables know trials: its decoded config, state and error."""
    state = {"TERMINATED": "ended", "ERROR": "failed", "RUNNING": "running"}.get(trial.status, "pending")
    return KnownTrial(trial.trial_id, decode(trial.config), state, error_message(trial) if state == "failed" else None)


def _same_config(recorded: dict, config: dict) -> bool:
    """Whether a recorded trial's config is ``config`` (floats compared loosely: the tables store float64)."""
    keys = set(recorded) | set(config)
    for key in keys:
        a, b = recorded.get(key), config.get(key)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            if not math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12):
                return False
        elif a != b:
            return False
    return True
