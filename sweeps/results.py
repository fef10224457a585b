"""Sweep results as two Parquet tables, queryable with SQL (DuckDB).

(Over 450 lines for one reason: the tables' schema, their writer and their reader are one contract, documented
once below and kept in step in one file.)

``<sweep>/results/trials.parquet``: one row per trial.

| column | type | meaning |
|---|---|---|
| trial_id | string | Tune's trial id |
| status | string | completed (all epochs), stopped (by ASHA), failed, running, pending, interrupted (its run was lost in a crash and not continued) |
| error | string | the failure's message (null unless failed) |
| teacher, student, method | string | the sampled pairing and method |
| lr, lambda_mld, lambda_cd, lambda_id, lambda_kd, kd_temperature, lambda_mse, lambda_ps, lambda_rkd, lambda_pkt, lambda_hint (every weight of every method) | double | sampled or fixed hyperparameters (null when the method has none) |
| epochs_run | int64 | epochs reported |
| stopped_early | bool | ASHA stopped the trial before max_epochs |
| best_val_mAP, best_epoch, test_mAP_at_best | double, int64, double | the best epoch by the spec's metric (val mAP unless the spec says otherwise), its val mAP and test mAP |
| last_val_mAP, last_test_mAP | double | the last reported epoch |
| best_val_CF1, best_val_OF1, best_val_loss | double | at the best epoch |
| student_params | int64 | parameter count of the student |
| latency_ms | double | median forward latency of one image on the trial's device |
| images_per_s | double | mean training throughput |
| wall_time_s | double | sum of the epochs' train + eval time |
| test_CF1_at_best, test_OF1_at_best | double | test CF1 / OF1 (threshold 0.5) at the best epoch |
| test_paper_CF1_at_best, test_paper_OF1_at_best | double | the official code's CF1 / OF1 (l2d.metrics.paper_f1), test split, best epoch: the F1 the paper reports |

``<sweep>/results/epochs.parquet``: one row per trial and epoch: ``trial_id``, ``epoch`` and every metric the
workers report (``val_mAP``, ``val_loss``, ``val_<part>``, ``train_total``, ``train_<part>``, ``test_mAP``,
``test_CF1``, ``test_OF1``, ``images_per_s``, ``lr``, ...).

Both files are written to a temporary name and moved into place, so a reader never sees half a file. A file that
cannot be read anyway (a disk fault, a hand edit) is set aside as ``<name>.corrupt-<time>`` when a driver opens
the sweep: the epochs are rebuilt from the trials' checkpoint histories, and the trial rows from the epochs and
Tune's own trial states (:meth:`ResultsWriter.reconcile`). Readers (``results``, ``status``) refuse it with a
one-line error naming the file.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from l2d.storage import Location
from sweeps._faults import failpoint
from sweeps.spec import SEARCHABLE

logger = logging.getLogger(__name__)

HPARAM_COLUMNS = SEARCHABLE
TRIAL_SCHEMA = pa.schema(
    [("trial_id", pa.string()), ("status", pa.string()), ("error", pa.string()), ("teacher", pa.string()),
     ("student", pa.string()), ("method", pa.string())]
    + [(name, pa.float64()) for name in HPARAM_COLUMNS]
    + [("epochs_run", pa.int64()), ("stopped_early", pa.bool_()), ("best_val_mAP", pa.float64()),
       ("best_epoch", pa.int64()), ("test_mAP_at_best", pa.float64()), ("last_val_mAP", pa.float64()),
       ("last_test_mAP", pa.float64()), ("best_val_CF1", pa.float64()), ("best_val_OF1", pa.float64()),
       ("student_params", pa.int64()), ("latency_ms", pa.float64()), ("images_per_s", pa.float64()),
       ("wall_time_s", pa.float64()), ("test_CF1_at_best", pa.float64()), ("test_OF1_at_best", pa.float64()),
       ("test_paper_CF1_at_best", pa.float64()), ("test_paper_OF1_at_best", pa.float64()),
       ("best_val_loss", pa.float64())]
)
#: Each objective a spec may name, and the trials-table column holding it at a trial's best epoch.
OBJECTIVE_COLUMNS = {"val_mAP": "best_val_mAP", "val_CF1": "best_val_CF1", "val_OF1": "best_val_OF1",
                     "val_loss": "best_val_loss", "latency_ms": "latency_ms", "student_params": "student_params"}
#: Epoch-table columns that are not floats.
_EPOCH_FIXED = [("trial_id", pa.string()), ("epoch", pa.int64())]


def write_table(table: pa.Table, location: Location) -> None:
    """Write a Parquet file atomically (see :meth:`l2d.storage.Location.write_bytes`)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    location.write_bytes(buffer.getvalue())


class CorruptResultsError(RuntimeError):
    """A results file cannot be read; the message names it and how to repair it."""


def read_table(location: Location) -> pa.Table | None:
    """A Parquet file as a table, or None when it does not exist.

    Raises:
        CorruptResultsError: the file exists but is not a readable Parquet file.
    """
    if not location.is_file():
        return None
    try:
        return pq.read_table(io.BytesIO(location.read_bytes()))
    except (pa.ArrowException, OSError) as error:
        raise CorruptResultsError(f"{location}: unreadable Parquet file ({str(error).splitlines()[0][:200]}); "
                                  f"`l2d-sweep resume` rebuilds it from the checkpoints and Tune's state") from None


def _set_aside(location: Location) -> Location:
    aside = location.parent / f"{location.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
    location.move(aside)
    return aside


def epochs_from_checkpoints(sweep_dir: Location) -> dict[str, dict[int, dict]]:
    """Every epoch row that the trials' newest readable checkpoints remember (their history files)."""
    from sweeps.checkpoints import HISTORY_FILE, checkpoint_folders

    epochs: dict[str, dict[int, dict]] = {}
    for run_dir in (sweep_dir / "train").list():
        if not run_dir.name.startswith("trial-"):
            continue
        trial_id = run_dir.name.removeprefix("trial-")
        for folder in checkpoint_folders(run_dir):
            try:
                history = json.loads((folder / HISTORY_FILE).read_text())
            except (ValueError, OSError):
                continue
            for row in history:
                epoch = int(row["epoch"])
                epochs.setdefault(trial_id, {})[epoch] = {
                    "trial_id": trial_id, "epoch": epoch,
                    **{k: float(v) for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))}}
            break
    return epochs


@dataclass
class TrialRecord:
    trial_id: str
    config: dict
    status: str = "pending"
    error: str | None = None


class ResultsWriter:
    """Accumulates trial states and epoch reports; writes both tables. Seeds itself from existing files, so a
    resumed sweep keeps the rows of trials that finished before the crash."""

    def __init__(self, sweep_dir: str | Location, max_epochs: int, metric: str = "val_mAP", mode: str = "max"):
        self.sweep_dir = Location.parse(sweep_dir)
        self.max_epochs = max_epochs
        self.metric, self.mode = metric, mode
        self.trials: dict[str, TrialRecord] = {}
        self.epochs: dict[str, dict[int, dict]] = {}  # trial id -> epoch -> row
        try:
            existing_epochs = read_table(self.epochs_file)
        except CorruptResultsError as error:
            aside = _set_aside(self.epochs_file)
            existing_epochs = None
            self.epochs = epochs_from_checkpoints(self.sweep_dir)
            logger.warning("%s; set it aside as %s and rebuilt %d epoch rows from the trials' checkpoints", error,
                           aside.name, sum(len(rows) for rows in self.epochs.values()))
        if existing_epochs is not None:
            for row in existing_epochs.to_pylist():
                self.epochs.setdefault(row["trial_id"], {})[int(row["epoch"])] = {
                    k: v for k, v in row.items() if v is not None}
        try:
            existing_trials = read_table(self.trials_file)
        except CorruptResultsError as error:
            aside = _set_aside(self.trials_file)
            existing_trials = None
            logger.warning("%s; set it aside as %s; the trial rows are rebuilt from the epochs and Tune's trial "
                           "states", error, aside.name)
        if existing_trials is not None:
            for row in existing_trials.to_pylist():
                # .get: a table written before a column existed (a method added since) lacks it.
                config = {k: row.get(k) for k in ("teacher", "student", "method", *HPARAM_COLUMNS)
                          if row.get(k) is not None}
                self.trials[row["trial_id"]] = TrialRecord(row["trial_id"], config, row["status"], row["error"])

    @property
    def trials_file(self) -> Location:
        return self.sweep_dir / "results" / "trials.parquet"

    @property
    def epochs_file(self) -> Location:
        return self.sweep_dir / "results" / "epochs.parquet"

    def trial(self, trial_id: str, config: dict) -> TrialRecord:
        record = self.trials.get(trial_id)
        if record is None:
            record = self.trials[trial_id] = TrialRecord(trial_id, dict(config))
        return record

    def record_epoch(self, trial_id: str, config: dict, result: dict) -> None:
        record = self.trial(trial_id, config)
        if record.status == "pending":
            record.status = "running"
        metrics = {k: float(v) for k, v in result.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in _TUNE_KEYS}
        epoch = int(metrics.pop("epoch"))
        self.epochs.setdefault(trial_id, {})[epoch] = {"trial_id": trial_id, "epoch": epoch, **metrics}

    def has_epoch(self, trial_id: str, epoch: int) -> bool:
        return epoch in self.epochs.get(trial_id, {})

    def finish(self, trial_id: str, config: dict, error: str | None = None) -> None:
        record = self.trial(trial_id, config)
        if error is not None:
            record.status, record.error = "failed", error
            return
        last = max(self.epochs.get(trial_id, {}), default=0)
        record.status = "completed" if last >= self.max_epochs else "stopped"

    def interrupt_unknown(self, trial_ids: set[str]) -> list[str]:
        """Mark ``interrupted`` every unfinished trial not in ``trial_ids`` (a run lost in a crash that no experiment
        continued); its rows are kept. Returns their ids."""
        lost = [t for t, record in self.trials.items()
                if t not in trial_ids and record.status in ("running", "pending")]
        for trial_id in lost:
            self.trials[trial_id].status = "interrupted"
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
        return new_id

    def reconcile(self, tune_trials) -> list[str]:
        """Add the trials Tune knows and the tables lack (a file lost or set aside, a kill between Tune's save and
        ours), with their states; returns their ids."""
        from sweeps.search import decode

        added = []
        for trial in tune_trials:
            record = self.trials.get(trial.trial_id)
            if record is not None and record.config:
                continue
            config = decode(trial.config)
            record = self.trial(trial.trial_id, config)
            record.config = dict(config)
            added.append(trial.trial_id)
            if trial.status == "TERMINATED":
                self.finish(trial.trial_id, config)
            elif trial.status == "ERROR":
                from sweeps.callback import error_message

                self.finish(trial.trial_id, config, error_message(trial))
            elif trial.status == "RUNNING" or self.epochs.get(trial.trial_id):
                record.status = "running"
        return added

    def trial_rows(self) -> list[dict]:
        rows = []
        for trial_id, record in self.trials.items():
            history = [row for _, row in sorted(self.epochs.get(trial_id, {}).items())]
            row = {"trial_id": trial_id, "status": record.status, "error": record.error,
                   "teacher": record.config.get("teacher"), "student": record.config.get("student"),
                   "method": record.config.get("method")}
            row.update({name: _float(record.config.get(name)) for name in HPARAM_COLUMNS})
            row["epochs_run"] = len(history)
            row["stopped_early"] = record.status == "stopped"
            row.update(dict.fromkeys(("best_val_mAP", "best_epoch", "test_mAP_at_best", "last_val_mAP", "last_test_mAP",
                                      "best_val_CF1", "best_val_OF1", "student_params", "latency_ms", "images_per_s",
                                      "wall_time_s", "test_CF1_at_best", "test_OF1_at_best", "test_paper_CF1_at_best",
                                      "test_paper_OF1_at_best", "best_val_loss")))
            if history:
                sign = 1.0 if self.mode == "max" else -1.0
                best = max(history, key=lambda r: sign * r.get(self.metric, -sign * math.inf))
                last = history[-1]
                row.update(best_val_mAP=best.get("val_mAP"), best_epoch=best["epoch"],
                           test_mAP_at_best=best.get("test_mAP"), last_val_mAP=last.get("val_mAP"),
                           last_test_mAP=last.get("test_mAP"), best_val_CF1=best.get("val_CF1"),
                           best_val_OF1=best.get("val_OF1"),
                           student_params=int(last["student_params"]) if "student_params" in last else None,
                           latency_ms=last.get("latency_ms"),
                           images_per_s=sum(r.get("images_per_s", 0.0) for r in history) / len(history),
                           wall_time_s=sum(r.get("epoch_seconds", 0.0) for r in history),
                           test_CF1_at_best=best.get("test_CF1"), test_OF1_at_best=best.get("test_OF1"),
                           test_paper_CF1_at_best=best.get("test_paper_CF1"),
                           test_paper_OF1_at_best=best.get("test_paper_OF1"), best_val_loss=best.get("val_loss"))
            rows.append(row)
        return rows

    def tables(self) -> tuple[pa.Table, pa.Table]:
        trials = pa.Table.from_pylist(self.trial_rows(), schema=TRIAL_SCHEMA)
        epoch_rows = [row for trial_id in sorted(self.epochs) for _, row in sorted(self.epochs[trial_id].items())]
        metric_names = sorted({k for row in epoch_rows for k in row} - {"trial_id", "epoch"})
        schema = pa.schema(_EPOCH_FIXED + [(name, pa.float64()) for name in metric_names])
        epochs = pa.Table.from_pylist(epoch_rows, schema=schema)
        return trials, epochs

    def write(self) -> None:
        trials, epochs = self.tables()
        write_table(epochs, self.epochs_file)
        failpoint("results-write")
        write_table(trials, self.trials_file)


#: Keys Tune adds to every result; not metrics of ours.
_TUNE_KEYS = {"training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "pid", "time_since_restore",
              "iterations_since_restore", "timesteps_total", "episodes_total", "timesteps_since_restore", "done",
              "date", "hostname", "node_ip", "config", "trial_id", "experiment_tag", "checkpoint_dir_name",
              "should_checkpoint"}


def _float(value) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# --- reading -----------------------------------------------------------------------------------------------------

class SweepResults:
    """The results of a sweep folder: ``trials`` and ``epochs`` as Arrow tables, and SQL over them."""

    def __init__(self, sweep_dir: str | Location):
        self.sweep_dir = Location.parse(sweep_dir, "sweep folder")
        if not self.sweep_dir.is_dir():
            raise FileNotFoundError(f"{self.sweep_dir}: no such sweep folder")
        trials = read_table(self.sweep_dir / "results" / "trials.parquet")
        epochs = read_table(self.sweep_dir / "results" / "epochs.parquet")
        if trials is None or epochs is None:
            raise FileNotFoundError(f"{self.sweep_dir}: no results/trials.parquet and results/epochs.parquet "
                                    f"(is this a sweep folder? a sweep writes them after its first trial ends)")
        self.trials = trials
        self.epochs = epochs
        self._objectives: list[tuple[str, str]] | None = None

    def sql(self, query: str) -> pa.Table:
        """Run DuckDB SQL over the views ``trials`` and ``epochs``, read-only: the two tables are registered from
        memory, then DuckDB's access to files, extensions and the network is switched off and its configuration
        locked, so a query cannot read or write anything else (``COPY ... TO``, ``read_csv``, ``ATTACH`` fail).

        Raises:
            ValueError: a statement that returns no rows, or one DuckDB refuses (the first line of its message).
        """
        import duckdb

        connection = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False,
                                                        "autoload_known_extensions": False})
        try:
            connection.register("trials", self.trials)
            connection.register("epochs", self.epochs)
            connection.execute("SET enable_external_access = false")
            connection.execute("SET lock_configuration = true")
            try:
                relation = connection.sql(query)
                if relation is None:
                    raise ValueError("the SQL statement returns no rows; use a SELECT")
                # DuckDB renamed arrow() to to_arrow_table() in 1.4.
                return relation.to_arrow_table() if hasattr(relation, "to_arrow_table") else relation.arrow()
            except duckdb.Error as error:
                raise ValueError(f"SQL error: {str(error).splitlines()[0]}") from None
        finally:
            connection.close()

    @property
    def objectives(self) -> list[tuple[str, str]]:
        """The sweep's objectives from its stored spec (val mAP, max, for a folder without one)."""
        if self._objectives is None:
            import yaml

            spec = self.sweep_dir / "spec.yaml"
            data = yaml.safe_load(spec.read_text()) if spec.is_file() else {}
            data = data if isinstance(data, dict) else {}
            raw = data.get("objectives") or [{"metric": data.get("metric", "val_mAP"),
                                               "mode": data.get("mode", "min" if data.get("metric") == "val_loss"
                                                                else "max")}]
            self._objectives = [(o["metric"], o.get("mode", "max")) for o in raw]
        return self._objectives

    def leaderboard(self, limit: int = 10, columns: list[str] | None = None) -> pa.Table:
        """Trials ranked by the spec's primary objective at their best epoch, with the test mAP of that epoch, the
        other objectives, the paper's F1 where measured, and every hyperparameter the sweep's trials have (or
        ``columns``, any of the trials table's)."""
        metric, mode = self.objectives[0]
        rank = OBJECTIVE_COLUMNS[metric]
        present = {name for name in self.trials.column_names
                   if self.trials.column(name).null_count < self.trials.num_rows}
        if columns:
            unknown = [c for c in columns if c not in self.trials.column_names]
            if unknown:
                raise ValueError(f"unknown column {unknown[0]!r}; the trials table has: "
                                 f"{', '.join(self.trials.column_names)}")
            chosen = list(dict.fromkeys(["trial_id", *columns]))
        else:
            objectives = [OBJECTIVE_COLUMNS[m] for m, _ in self.objectives]
            chosen = ["trial_id", "status", "teacher", "student", "method", *objectives, "test_mAP_at_best",
                      *[c for c in ("test_paper_CF1_at_best", "test_paper_OF1_at_best") if c in present],
                      "best_epoch", "epochs_run", *[c for c in ("student_params",) if c not in objectives],
                      *[c for c in HPARAM_COLUMNS if c in present]]
            chosen = list(dict.fromkeys(chosen))

        def shown(name: str) -> str:
            if name in HPARAM_COLUMNS:
                return f"round({name}, 6) AS {name}" if name == "lr" else f"round({name}, 3) AS {name}"
            if name.startswith(("best_val_", "test_")):
                alias = {"best_val_mAP": "val_mAP", "test_mAP_at_best": "test_mAP"}.get(name, name)
                return f"round({name}, 2) AS {alias}"
            return name

        order = "DESC" if mode == "max" else "ASC"
        return self.sql(f"SELECT {', '.join(shown(c) for c in chosen)} FROM trials WHERE {rank} IS NOT NULL "
                        f"ORDER BY {rank} {order}, trial_id LIMIT {int(limit)}")

    def pareto(self) -> pa.Table:
        """The non-dominated finished trials: over the spec's objectives when it has several, else val mAP against
        student size (no other trial is at least as good on every one and better on one)."""
        objectives = self.objectives if len(self.objectives) > 1 else [("val_mAP", "max"), ("student_params", "min")]
        columns = [OBJECTIVE_COLUMNS[m] for m, _ in objectives]
        rows = [r for r in self.trials.to_pylist() if r["status"] in ("completed", "stopped")
                and all(r.get(c) is not None for c in columns)]
        signs = [1.0 if mode == "max" else -1.0 for _, mode in objectives]
        points = {r["trial_id"]: [s * r[c] for s, c in zip(signs, columns)] for r in rows}

        def dominated(point):
            return any(all(o >= p for o, p in zip(other, point)) and any(o > p for o, p in zip(other, point))
                       for other in points.values())

        front = sorted(t for t, point in points.items() if not dominated(point))
        if not front:
            return self.sql("SELECT trial_id FROM trials LIMIT 0")
        ids = ", ".join(f"'{t}'" for t in front)
        shown = ", ".join(f"round({c}, 4) AS {c}" if c != "student_params" else c for c in columns)
        extra = "" if "student_params" in columns else ", student_params"
        return self.sql(f"SELECT trial_id, student, method, {shown}{extra}, round(test_mAP_at_best, 2) AS test_mAP "
                        f"FROM trials WHERE trial_id IN ({ids}) ORDER BY {columns[-1]}")


def format_table(table: pa.Table, fmt: str = "table") -> str:
    """Render an Arrow table as an aligned text table, CSV or JSON lines."""
    rows = table.to_pylist()
    if fmt == "json":
        import json

        return "\n".join(json.dumps(row, default=str) for row in rows)
    names = table.column_names
    if fmt == "csv":
        import csv

        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(names)
        for row in rows:
            writer.writerow(["" if row[n] is None else row[n] for n in names])
        return out.getvalue().rstrip("\n")

    def show(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e-2 or abs(value) >= 1e5 else f"{value:.2f}".rstrip("0").rstrip(".")
        return str(value)

    cells = [[show(row[n]) for n in names] for row in rows]
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths)) for cell in cells]
    return "\n".join(lines) + f"\n({len(rows)} row{'s' if len(rows) != 1 else ''})"
