"""The driver's side of the results: trial records and epoch rows in memory, each report appended as a segment
(:mod:`sweeps.results.store`), and a rebuild that loses no value any source still holds.

(Over 400 lines for one reason: the rebuild reads every source of rows, and keeping it beside the writer it feeds
keeps the one rule, no recorded value lost, in one file.)

When a driver opens a sweep, it reads the current generation. If a results file is missing or damaged, it rebuilds
from every source there is, keeping the most of each:

1. the readable segments (named by the manifest or not: a crash may have left the newest unnamed) and the compacted
   ``trials.parquet`` / ``epochs.parquet``;
2. each trial's checkpoints' ``history.json`` (its epochs up to the newest checkpoint) and ``best/history.json``
   (up to its best epoch, kept after pruning);
3. Tune's own per-trial ``result.json`` logs (every report Tune recorded);
4. the trial rows found in 1: their configuration, state and error, and their summaries (best, epochs run...), which
   are kept as they were when the epochs behind them cannot all be found again.

Damaged files are set aside (``<name>.corrupt-<time>``), the recovered tables become the next generation, and the
driver says in one line what it rebuilt and what it could not recover.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from l2d.storage import Location
from sweeps.core.vocab import better
from sweeps.results.schema import (
    CONFIG_COLUMNS,
    EPOCH_SUMMARY,
    OBJECTIVE_COLUMNS,
    epoch_metrics,
    epochs_table,
    trial_row,
    trials_table,
)
from sweeps.results.store import (
    EPOCHS_FILE,
    TRIALS_FILE,
    CorruptResultsError,
    Manifest,
    ResultsStore,
    columns_digest,
    generation_of,
    read_table,
)

# Loaded late, inside the functions that use them: sweeps.folder.checkpoints (not needed when the command line starts).

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KnownTrial:
    """A trial as the experiment knows it (what the driver's callback reads off Tune's trials): its decoded config,
    ``state`` (``ended``, ``failed``, ``running`` or ``pending``) and a failure's message."""

    trial_id: str
    config: dict
    state: str
    error: str | None = None


@dataclass
class TrialRecord:
    trial_id: str
    config: dict
    status: str = "pending"
    error: str | None = None
    kept: dict = field(default_factory=dict)  # a recorded row's summary, kept while its epochs are not all known


class ResultsWriter:
    """Accumulates trial states and epoch reports; appends what changed as a segment at every :meth:`write`. Seeds
    itself from the sweep's results (rebuilding them when damaged), so a resumed sweep keeps every recorded row."""

    def __init__(self, sweep_dir: str | Location, max_epochs: int, metric: str = "val_mAP", mode: str = "max"):
        self.sweep_dir = Location.parse(sweep_dir)
        self.max_epochs = max_epochs
        self.metric, self.mode = metric, mode
        self.store = ResultsStore(self.sweep_dir)
        self.trials: dict[str, TrialRecord] = {}
        self.epochs: dict[str, dict[int, dict]] = {}  # trial id -> epoch -> row
        self._rows: dict[str, dict] = {}  # trial id -> its row (kept current: the summary line reads it)
        self._dirty_trials: set[str] = set()
        self._new_epochs: list[tuple[str, int]] = []
        self.rebuilt: str | None = None  # what a rebuild said, when one happened
        self._replaced = False

        self._column = OBJECTIVE_COLUMNS.get(metric, "best_val_mAP")
        self._leader: str | None = None  # the best trial by the metric (kept as reports come: no scan per report)
        self._rescan = True
        self._changed: set[str] = set()  # trials changed since the leader was last looked for
        self._counts: dict[str, int] = {}  # trials by status, kept as trials change (None below: count them all)
        self._counted: dict[str, str] = {}
        self._count_dirty: set[str] | None = None
        self.manifest = self._open()

    # --- opening -----------------------------------------------------------------------------------------------------

    def _open(self) -> Manifest:
        try:
            manifest = self.store.read_manifest()
            generation = self.store.read()
        except CorruptResultsError as error:
            return self._rebuild(str(error))
        if generation.trials is None and generation.epochs is None:
            return manifest or Manifest()  # a new sweep
        if generation.trials is None or generation.epochs is None:
            missing = TRIALS_FILE if generation.trials is None else EPOCHS_FILE
            return self._rebuild(f"{self.store.folder / missing}: missing beside its sibling")
        self._load(generation.trials.to_pylist(), generation.epochs.to_pylist())
        if manifest is None:  # a sweep from before manifests: its two tables become the first generation
            manifest = Manifest()
            self.store.replace_all(manifest, *self.tables())
            self.publish(manifest)
            logger.info("%s: results migrated to segments and a manifest", self.store.folder)
        problems = self.store.check_published(manifest)
        if problems:  # the generation is whole: the compacted pair is rewritten from it
            for name in (TRIALS_FILE, EPOCHS_FILE):
                self._set_aside_if_damaged(self.store.folder / name)
            self.publish(manifest)
            self.rebuilt = f"{'; '.join(problems)}; rewrote the compacted tables from the results' segments"
            logger.warning("%s", self.rebuilt)
        return manifest

    @staticmethod
    def _set_aside_if_damaged(location: Location) -> None:
        try:
            if read_table(location) is not None:
                return
        except CorruptResultsError:
            pass
        if location.is_file():
            location.move(location.parent / f"{location.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")

    def _load(self, trial_rows: list[dict], epoch_rows: list[dict]) -> None:
        for row in epoch_rows:
            self.epochs.setdefault(row["trial_id"], {})[int(row["epoch"])] = {
                k: v for k, v in row.items() if v is not None
            }
        for row in trial_rows:
            config = {k: row.get(k) for k in CONFIG_COLUMNS if row.get(k) is not None}
            if config.get("stage") == "search":  # a search trial's config has no stage (its row says search)
                del config["stage"]
            record = TrialRecord(row["trial_id"], config, row.get("status") or "pending", row.get("error"))
            if (row.get("epochs_run") or 0) > len(self.epochs.get(row["trial_id"], {})):
                record.kept = {k: row.get(k) for k in EPOCH_SUMMARY}
            self.trials[row["trial_id"]] = record
        self._rows = {}
        self._count_dirty = None

    def _rebuild(self, why: str) -> Manifest:
        """Recover both tables from every source (see the module docstring), set damaged files aside, and make the
        recovered tables the next generation."""
        sources: dict[str, int] = {}
        trial_rows, epoch_rows, damaged_rows, damaged = self._stored_rows()
        self._load(trial_rows, epoch_rows)
        sources["results files"] = sum(len(rows) for rows in self.epochs.values())
        # Then each other source, in order of trust: it adds the epochs still missing, and the values a row lacks
        # (a results file that lost a column comes last: what it still holds fills what nothing else has).
        damaged_epochs: dict[str, dict[int, dict]] = {}
        for row in damaged_rows:
            damaged_epochs.setdefault(row["trial_id"], {})[int(row["epoch"])] = {
                k: v for k, v in row.items() if v is not None
            }
        for source, found in (
            ("checkpoints", _checkpoint_rows(self.sweep_dir)),
            ("Tune's logs", _tune_rows(self.sweep_dir)),
            ("damaged results files", damaged_epochs),
        ):
            added = 0
            for trial_id, rows in found.items():
                for epoch, row in rows.items():
                    known = self.epochs.setdefault(trial_id, {})
                    if epoch not in known:
                        known[epoch] = dict(row)
                        added += 1
                    else:
                        for key, value in row.items():
                            known[epoch].setdefault(key, value)
            sources[source] = added
        self._rows = {}
        for trial_id, rows in self.epochs.items():  # a trial known only by its epochs: its record from Tune later
            record = self.trials.setdefault(trial_id, TrialRecord(trial_id, {}, "running"))
            if record.kept and len(rows) >= (record.kept.get("epochs_run") or 0):
                record.kept = {}
        self._count_dirty = None
        for location in damaged:
            aside = location.parent / f"{location.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
            location.move(aside)
        kept = sorted(t for t, r in self.trials.items() if r.kept)
        self.rebuilt = (
            f"{why}; rebuilt the results: {sum(len(r) for r in self.epochs.values())} epoch rows of "
            f"{len(self.trials)} trials ("
            + ", ".join(f"{n} from {s}" for s, n in sources.items())
            + ")"
            + (f"; set aside {len(damaged)} damaged file(s)" if damaged else "")
            + (
                f"; kept the recorded summaries of {len(kept)} trial(s) whose epochs could not all be "
                f"recovered ({', '.join(kept[:8])})"
                if kept
                else ""
            )
        )
        logger.warning("%s", self.rebuilt)
        manifest = Manifest()
        try:
            previous = self.store.read_manifest()
        except CorruptResultsError:
            previous = None
        old_files = [f for f in self.store.segment_files()]
        generations = [int(f.name[1:10]) for f in old_files if f.name[1:10].isdigit()]
        manifest.generation = max([previous.generation if previous else 0, *generations])
        manifest.reports = previous.reports if previous else 0
        self.store.replace_all(manifest, *self.tables())  # newer than every file there: a later rebuild prefers it
        manifest.garbage.append({"files": [f"segments/{f.name}" for f in old_files], "after": manifest.generation + 16})
        self.publish(manifest)
        return manifest

    def _stored_rows(self) -> tuple[list[dict], list[dict], list[dict], list[Location]]:
        """Rows of every readable results file, oldest first (later rows win): trial rows, epoch rows, the epoch rows
        of files that lost a column (trusted least), and the files that are damaged."""
        found: list[tuple[int, str, list[dict]]] = []  # (generation, kind, rows)
        damaged = []
        try:
            manifest = self.store.read_manifest()
        except CorruptResultsError:
            manifest = None
            damaged.append(self.store.manifest_file)
        expected = {name: digest for s in (manifest.segments if manifest else []) for name, digest in s.columns.items()}
        expected.update((manifest.published.get("columns") or {}) if manifest else {})
        candidates = [self.store.folder / TRIALS_FILE, self.store.folder / EPOCHS_FILE, *self.store.segment_files()]
        for location in candidates:
            name = location.name if location.parent == self.store.folder else f"segments/{location.name}"
            try:
                table = read_table(location)
            except CorruptResultsError:
                damaged.append(location)
                continue
            if table is None:
                continue
            kind = "trials" if location.name.endswith(TRIALS_FILE) else "epochs"
            required = ("trial_id", "status") if kind == "trials" else ("trial_id", "epoch")
            holes = any(c not in table.column_names for c in required) or (
                name in expected and columns_digest(table) != expected[name]
            )
            if holes:
                damaged.append(location)  # a column lost: its rows may have holes; the other sources fill them
                if any(c not in table.column_names for c in required):
                    continue
            generation = (
                generation_of(table)
                if location.parent == self.store.folder
                else int(location.name[1:10])
                if location.name[1:10].isdigit()
                else 0
            )
            found.append((generation, "damaged " + kind if holes else kind, table.to_pylist()))
        found.sort(key=lambda item: item[0])
        trial_rows = [row for _, kind, rows in found if kind.endswith("trials") for row in rows]
        epoch_rows = [row for _, kind, rows in found if kind == "epochs" for row in rows]
        damaged_rows = [row for _, kind, rows in found if kind == "damaged epochs" for row in rows]
        valid = [r for r in epoch_rows if r.get("trial_id") and r.get("epoch") is not None]
        return (
            [r for r in trial_rows if r.get("trial_id")],
            valid,
            [r for r in damaged_rows if r.get("trial_id") and r.get("epoch") is not None],
            damaged,
        )

    # --- recording ---------------------------------------------------------------------------------------------------

    @property
    def trials_file(self) -> Location:
        return self.store.folder / TRIALS_FILE

    @property
    def epochs_file(self) -> Location:
        return self.store.folder / EPOCHS_FILE

    def _touch(self, trial_id: str) -> None:
        self._dirty_trials.add(trial_id)
        self._changed.add(trial_id)
        if self._count_dirty is not None:
            self._count_dirty.add(trial_id)
        self._rows.pop(trial_id, None)
        if trial_id == self._leader:
            self._rescan = True  # the leader changed: it may have fallen behind another (a rebuild, a set-aside)

    def trial(self, trial_id: str, config: dict) -> TrialRecord:
        record = self.trials.get(trial_id)
        if record is None:
            record = self.trials[trial_id] = TrialRecord(trial_id, dict(config))
            self._touch(trial_id)
        return record

    def set_status(self, trial_id: str, status: str) -> None:
        self.trials[trial_id].status = status
        self._touch(trial_id)

    def record_epoch(self, trial_id: str, config: dict, result: dict) -> None:
        record = self.trial(trial_id, config)
        if record.status == "pending":
            record.status = "running"
        metrics = epoch_metrics(result)
        epoch = int(metrics.pop("epoch"))
        self.epochs.setdefault(trial_id, {})[epoch] = {"trial_id": trial_id, "epoch": epoch, **metrics}
        self._new_epochs.append((trial_id, epoch))
        self._touch(trial_id)

    def has_epoch(self, trial_id: str, epoch: int) -> bool:
        return epoch in self.epochs.get(trial_id, {})

    def finish(self, trial_id: str, config: dict, error: str | None = None) -> None:
        record = self.trial(trial_id, config)
        if error is not None:
            record.status, record.error = "failed", error
        else:
            last = max(self.epochs.get(trial_id, {}), default=0)
            if record.kept:
                last = max(last, record.kept.get("epochs_run") or 0)
            record.status = "completed" if last >= self.max_epochs else "stopped"
        self._touch(trial_id)

    def interrupt_unknown(self, trial_ids: set[str]) -> list[str]:
        """Mark ``interrupted`` every unfinished trial not in ``trial_ids`` (a run lost in a crash that no experiment
        continued); its rows are kept. Returns their ids."""
        lost = [
            t for t, record in self.trials.items() if t not in trial_ids and record.status in ("running", "pending")
        ]
        for trial_id in lost:
            self.set_status(trial_id, "interrupted")
        return lost

    def set_aside_trial(self, trial_id: str) -> str:
        """Keep an unfinished trial's rows under ``<id>-lost`` (status ``interrupted``), freeing its id; returns the new
        id. For a trial whose id a resumed experiment gave to another configuration."""
        new_id = f"{trial_id}-lost"
        record = self.trials.pop(trial_id)
        record.trial_id, record.status = new_id, "interrupted"
        self.trials[new_id] = record
        rows = self.epochs.pop(trial_id, {})
        self.epochs[new_id] = {epoch: {**row, "trial_id": new_id} for epoch, row in rows.items()}
        self._rows.pop(trial_id, None)
        self._rows.pop(new_id, None)
        self._replaced = True  # the old id's rows are in earlier segments: the next write replaces them all
        self._count_dirty = None
        return new_id

    def reconcile(self, known: list[KnownTrial]) -> list[str]:
        """Add the trials the experiment knows and the tables lack (a file lost or set aside, a kill between Tune's
        save and ours), with their states; returns their ids."""
        added = []
        for trial in known:
            record = self.trials.get(trial.trial_id)
            if record is not None and record.config:
                continue
            record = self.trial(trial.trial_id, trial.config)
            record.config = dict(trial.config)
            added.append(trial.trial_id)
            if trial.state == "ended":
                self.finish(trial.trial_id, trial.config)
            elif trial.state == "failed":
                self.finish(trial.trial_id, trial.config, trial.error or "unknown error")
            elif trial.state == "running" or self.epochs.get(trial.trial_id):
                self.set_status(trial.trial_id, "running")
            self._touch(trial.trial_id)
        return added

    # --- rows and writing ------------------------------------------------------------------------------------------

    def row(self, trial_id: str) -> dict:
        """A trial's row (cached until the trial changes)."""
        if trial_id not in self._rows:
            record = self.trials[trial_id]
            history = [row for _, row in sorted(self.epochs.get(trial_id, {}).items())]
            row = trial_row(trial_id, record.status, record.error, record.config, history, self.metric, self.mode)
            if record.kept and len(history) < (record.kept.get("epochs_run") or 0):
                row.update({k: v for k, v in record.kept.items() if k != "stopped_early"})
            self._rows[trial_id] = row
        return self._rows[trial_id]

    def trial_rows(self) -> list[dict]:
        return [self.row(trial_id) for trial_id in self.trials]

    def counts(self) -> dict[str, int]:
        """Trials by status (kept up to date from the trials that changed: no scan of every trial per report)."""
        if self._count_dirty is None:
            self._counts, self._counted = {}, {}
            dirty = list(self.trials)
        else:
            dirty = self._count_dirty
        for trial_id in dirty:
            old = self._counted.pop(trial_id, None)
            if old is not None:
                self._counts[old] -= 1
                if not self._counts[old]:
                    del self._counts[old]
            record = self.trials.get(trial_id)
            if record is not None:
                self._counted[trial_id] = record.status
                self._counts[record.status] = self._counts.get(record.status, 0) + 1
        self._count_dirty = set()
        return dict(self._counts)

    def leader(self) -> dict | None:
        """The row of the best trial by the writer's metric (None: no trial has a value yet). Kept up to date from
        the trials that changed since it was last asked for: no scan of the whole table per report."""
        column = self._column
        if self._rescan or self._leader not in self.trials:
            self._leader, self._rescan = None, False
            candidates = list(self.trials)
        else:
            candidates = [t for t in self._changed if t in self.trials]
        self._changed = set()
        best = self.row(self._leader) if self._leader else None
        for trial_id in candidates:
            row = self.row(trial_id)
            if row.get("stage") != "search":  # a confirmation rerun is not a trial of the search
                continue
            if row.get(column) is not None and (best is None or better(row[column], best[column], self.mode)):
                best, self._leader = row, trial_id
        return best

    def tables(self):
        epoch_rows = [row for trial_id in sorted(self.epochs) for _, row in sorted(self.epochs[trial_id].items())]
        return trials_table(self.trial_rows()), epochs_table(epoch_rows)

    def write(self) -> None:
        """Append what changed since the last write as a segment: a new generation (a few small files, whatever the
        size of the sweep); now and then the compacted pair is rewritten too."""
        if self._replaced:  # a trial's rows moved: its old rows must not come back
            self._replaced = False
            self.store.replace_all(self.manifest, *self.tables())
        elif self._dirty_trials or self._new_epochs:
            trials = (
                trials_table([self.row(t) for t in sorted(self._dirty_trials) if t in self.trials])
                if self._dirty_trials
                else None
            )
            epochs = (
                epochs_table([self.epochs[t][e] for t, e in self._new_epochs if e in self.epochs.get(t, {})])
                if self._new_epochs
                else None
            )
            self.store.append(self.manifest, trials, epochs)
        self._dirty_trials, self._new_epochs = set(), []
        if ResultsStore.publish_due(self.manifest):
            self.publish()

    def publish(self, manifest: Manifest | None = None) -> None:
        """Rewrite the compacted ``trials.parquet`` / ``epochs.parquet`` now (and the manifest that records it)."""
        manifest = manifest or self.manifest
        self.store.publish(manifest, *self.tables())
        self.store.manifest_file.write_text(manifest.to_json())


def _checkpoint_rows(sweep_dir: Location) -> dict[str, dict[int, dict]]:
    """Every epoch row that the trials' checkpoints remember: the newest readable checkpoint's history, and the best
    epoch's history (kept when ``keep`` pruned the rest)."""
    from sweeps.folder.checkpoints import BEST, HISTORY_FILE, checkpoint_folders

    epochs: dict[str, dict[int, dict]] = {}
    train = sweep_dir / "train"
    for run_dir in train.list() if train.is_dir() else []:
        if not run_dir.name.startswith("trial-"):
            continue
        trial_id = run_dir.name.removeprefix("trial-")
        folders = checkpoint_folders(run_dir)[:1] + ([run_dir / BEST] if (run_dir / BEST).is_dir() else [])
        for folder in folders:
            try:
                history = json.loads((folder / HISTORY_FILE).read_text())
            except (ValueError, OSError, UnicodeDecodeError):
                continue
            for row in history if isinstance(history, list) else []:
                if isinstance(row, dict) and "epoch" in row:
                    epoch = int(row["epoch"])
                    epochs.setdefault(trial_id, {}).setdefault(
                        epoch,
                        {
                            "trial_id": trial_id,
                            "epoch": epoch,
                            **{k: v for k, v in epoch_metrics(row).items() if k != "epoch"},
                        },
                    )
    return epochs


def _tune_rows(sweep_dir: Location) -> dict[str, dict[int, dict]]:
    """Every report Tune logged (``tune*/**/result.json``, one JSON object per line), as epoch rows."""
    epochs: dict[str, dict[int, dict]] = {}
    if not sweep_dir.is_local:
        return epochs  # Tune writes its logs on the driver's disk and syncs them; the checkpoints cover remote sweeps

    for path in Path(sweep_dir.path).glob("tune*/*/result.json"):
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        for line in lines:
            try:
                result = json.loads(line)
            except ValueError:
                continue
            if not isinstance(result, dict) or "epoch" not in result or "trial_id" not in result:
                continue
            trial_id, epoch = str(result["trial_id"]), int(result["epoch"])
            metrics = {k: v for k, v in epoch_metrics(result).items() if k != "epoch"}
            epochs.setdefault(trial_id, {})[epoch] = {"trial_id": trial_id, "epoch": epoch, **metrics}
    return epochs
