"""Sweep results as two Parquet tables, queryable with SQL (DuckDB).

``<sweep>/results/trials.parquet``: one row per trial.

| column | type | meaning |
|---|---|---|
| trial_id | string | Tune's trial id |
| status | string | completed (all epochs), stopped (by ASHA), failed, running, pending |
| error | string | the failure's message (null unless failed) |
| teacher, student, method | string | the sampled pairing and method |
| lr, lambda_mld, lambda_cd, lambda_id, lambda_kd, kd_temperature, lambda_mse, lambda_ps, lambda_rkd, lambda_pkt, lambda_hint (every weight of every method) | double | sampled or fixed hyperparameters (null when the method has none) |
| epochs_run | int64 | epochs reported |
| stopped_early | bool | ASHA stopped the trial before max_epochs |
| best_val_mAP, best_epoch, test_mAP_at_best | double, int64, double | the epoch with the best val mAP, and its test mAP |
| last_val_mAP, last_test_mAP | double | the last reported epoch |
| best_val_CF1, best_val_OF1 | double | at the best epoch |
| student_params | int64 | parameter count of the student |
| latency_ms | double | median forward latency of one image on the trial's device |
| images_per_s | double | mean training throughput |
| wall_time_s | double | sum of the epochs' train + eval time |

``<sweep>/results/epochs.parquet``: one row per trial and epoch: ``trial_id``, ``epoch`` and every metric the
workers report (``val_mAP``, ``val_loss``, ``val_<part>``, ``train_total``, ``train_<part>``, ``test_mAP``,
``test_CF1``, ``test_OF1``, ``images_per_s``, ``lr``, ...).

Both files are written to a temporary name and moved into place, so a reader never sees half a file.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from l2d.storage import Location
from sweeps.spec import SEARCHABLE

HPARAM_COLUMNS = SEARCHABLE
TRIAL_SCHEMA = pa.schema(
    [("trial_id", pa.string()), ("status", pa.string()), ("error", pa.string()), ("teacher", pa.string()),
     ("student", pa.string()), ("method", pa.string())]
    + [(name, pa.float64()) for name in HPARAM_COLUMNS]
    + [("epochs_run", pa.int64()), ("stopped_early", pa.bool_()), ("best_val_mAP", pa.float64()),
       ("best_epoch", pa.int64()), ("test_mAP_at_best", pa.float64()), ("last_val_mAP", pa.float64()),
       ("last_test_mAP", pa.float64()), ("best_val_CF1", pa.float64()), ("best_val_OF1", pa.float64()),
       ("student_params", pa.int64()), ("latency_ms", pa.float64()), ("images_per_s", pa.float64()),
       ("wall_time_s", pa.float64())]
)
#: Epoch-table columns that are not floats.
_EPOCH_FIXED = [("trial_id", pa.string()), ("epoch", pa.int64())]


def write_table(table: pa.Table, location: Location) -> None:
    """Write a Parquet file atomically (see :meth:`l2d.storage.Location.write_bytes`)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    location.write_bytes(buffer.getvalue())


def read_table(location: Location) -> pa.Table | None:
    """A Parquet file as a table, or None when it does not exist."""
    if not location.is_file():
        return None
    return pq.read_table(io.BytesIO(location.read_bytes()))


@dataclass
class TrialRecord:
    trial_id: str
    config: dict
    status: str = "pending"
    error: str | None = None


class ResultsWriter:
    """Accumulates trial states and epoch reports; writes both tables. Seeds itself from existing files, so a
    resumed sweep keeps the rows of trials that finished before the crash."""

    def __init__(self, sweep_dir: str | Location, max_epochs: int):
        self.sweep_dir = Location.parse(sweep_dir)
        self.max_epochs = max_epochs
        self.trials: dict[str, TrialRecord] = {}
        self.epochs: dict[str, dict[int, dict]] = {}  # trial id -> epoch -> row
        existing_epochs = read_table(self.epochs_file)
        if existing_epochs is not None:
            for row in existing_epochs.to_pylist():
                self.epochs.setdefault(row["trial_id"], {})[int(row["epoch"])] = {
                    k: v for k, v in row.items() if v is not None}
        existing_trials = read_table(self.trials_file)
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

    def forget_except(self, trial_ids: set[str]) -> list[str]:
        """Drop the trials (and their epochs) not in ``trial_ids``; return the dropped ids."""
        dropped = [t for t in self.trials if t not in trial_ids]
        for trial_id in dropped:
            del self.trials[trial_id]
        self.epochs = {trial_id: rows for trial_id, rows in self.epochs.items() if trial_id in self.trials}
        return dropped

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
                                      "wall_time_s")))
            if history:
                best = max(history, key=lambda r: r.get("val_mAP", -math.inf))
                last = history[-1]
                row.update(best_val_mAP=best.get("val_mAP"), best_epoch=best["epoch"],
                           test_mAP_at_best=best.get("test_mAP"), last_val_mAP=last.get("val_mAP"),
                           last_test_mAP=last.get("test_mAP"), best_val_CF1=best.get("val_CF1"),
                           best_val_OF1=best.get("val_OF1"),
                           student_params=int(last["student_params"]) if "student_params" in last else None,
                           latency_ms=last.get("latency_ms"),
                           images_per_s=sum(r.get("images_per_s", 0.0) for r in history) / len(history),
                           wall_time_s=sum(r.get("epoch_seconds", 0.0) for r in history))
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
        trials = read_table(self.sweep_dir / "results" / "trials.parquet")
        epochs = read_table(self.sweep_dir / "results" / "epochs.parquet")
        if trials is None or epochs is None:
            raise FileNotFoundError(f"{self.sweep_dir}: no results/trials.parquet and results/epochs.parquet "
                                    f"(is this a sweep folder? a sweep writes them after its first trial ends)")
        self.trials = trials
        self.epochs = epochs

    def sql(self, query: str) -> pa.Table:
        """Run DuckDB SQL with the views ``trials`` and ``epochs``."""
        import duckdb

        connection = duckdb.connect()
        try:
            connection.register("trials", self.trials)
            connection.register("epochs", self.epochs)
            relation = connection.sql(query)
            if relation is None:
                raise ValueError("the SQL statement returns no rows; use a SELECT")
            # DuckDB renamed arrow() to to_arrow_table() in 1.4.
            return relation.to_arrow_table() if hasattr(relation, "to_arrow_table") else relation.arrow()
        finally:
            connection.close()

    def leaderboard(self, limit: int = 10, metric: str = "best_val_mAP") -> pa.Table:
        """Trials by best val mAP, with the test mAP of that epoch beside it."""
        return self.sql(
            f"SELECT trial_id, status, teacher, student, method, round(best_val_mAP, 2) AS val_mAP, "
            f"round(test_mAP_at_best, 2) AS test_mAP, best_epoch, epochs_run, student_params, "
            f"round(lr, 6) AS lr, round(lambda_mld, 3) AS lambda_mld, round(lambda_cd, 3) AS lambda_cd, "
            f"round(lambda_id, 3) AS lambda_id, round(lambda_kd, 3) AS lambda_kd "
            f"FROM trials WHERE {metric} IS NOT NULL ORDER BY {metric} DESC LIMIT {int(limit)}")

    def pareto(self) -> pa.Table:
        """Trials on the val mAP vs student size Pareto front (no other trial is smaller and at least as good)."""
        return self.sql(
            "SELECT a.trial_id, a.student, a.method, a.student_params, round(a.best_val_mAP, 2) AS val_mAP, "
            "round(a.test_mAP_at_best, 2) AS test_mAP FROM trials a WHERE a.best_val_mAP IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM trials b WHERE b.best_val_mAP IS NOT NULL AND b.student_params <= a.student_params "
            "AND b.best_val_mAP >= a.best_val_mAP AND (b.student_params < a.student_params "
            "OR b.best_val_mAP > a.best_val_mAP)) ORDER BY a.student_params")


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
