"""The full-rewrite results writer of commit ee4ade0 (before issue 21), kept as the baseline of
``benchmarks/driver_scale.py``: every report rebuilds both tables from Python dicts and rewrites ``trials.parquet`` and
``epochs.parquet`` whole, and the progress line scans every trial row (``counts``/``leader``/``row`` below do what
that version's callback did at each report). Its recording methods are that version's (its metric filter and float
conversion now the schema's own, which are the same code); it writes through
today's storage layer (one PUT per file on S3), so the comparison isolates the writer's design.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from l2d.storage import Location
from sweeps.results.schema import EPOCH_FIXED, HPARAM_COLUMNS, OBJECTIVE_COLUMNS, TRIAL_SCHEMA, epoch_metrics
from sweeps.results.schema import as_float as _float


def write_table(table: pa.Table, location: Location) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    location.write_bytes(buffer.getvalue())


@dataclass
class TrialRecord:
    trial_id: str
    config: dict
    status: str = "pending"
    error: str | None = None


class FullRewriteWriter:
    def __init__(self, sweep_dir: str | Location, max_epochs: int, metric: str = "val_mAP", mode: str = "max"):
        self.sweep_dir = Location.parse(sweep_dir)
        self.max_epochs = max_epochs
        self.metric, self.mode = metric, mode
        self.trials: dict[str, TrialRecord] = {}
        self.epochs: dict[str, dict[int, dict]] = {}

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

    def set_status(self, trial_id: str, status: str) -> None:
        self.trials[trial_id].status = status

    def record_epoch(self, trial_id: str, config: dict, result: dict) -> None:
        record = self.trial(trial_id, config)
        if record.status == "pending":
            record.status = "running"
        metrics = epoch_metrics(result)  # that version's own filter, now shared with the schema
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

    def trial_rows(self) -> list[dict]:
        rows = []
        for trial_id, record in self.trials.items():
            history = [row for _, row in sorted(self.epochs.get(trial_id, {}).items())]
            row = {
                "trial_id": trial_id,
                "status": record.status,
                "error": record.error,
                "teacher": record.config.get("teacher"),
                "student": record.config.get("student"),
                "method": record.config.get("method"),
            }
            row.update({name: _float(record.config.get(name)) for name in HPARAM_COLUMNS})
            row["epochs_run"] = len(history)
            row["stopped_early"] = record.status == "stopped"
            if history:
                sign = 1.0 if self.mode == "max" else -1.0
                best = max(history, key=lambda r: sign * r.get(self.metric, -sign * math.inf))
                last = history[-1]
                row.update(
                    best_val_mAP=best.get("val_mAP"),
                    best_epoch=best["epoch"],
                    test_mAP_at_best=best.get("test_mAP"),
                    last_val_mAP=last.get("val_mAP"),
                    last_test_mAP=last.get("test_mAP"),
                    best_val_CF1=best.get("val_CF1"),
                    best_val_OF1=best.get("val_OF1"),
                    student_params=int(last["student_params"]) if "student_params" in last else None,
                    latency_ms=last.get("latency_ms"),
                    images_per_s=sum(r.get("images_per_s", 0.0) for r in history) / len(history),
                    wall_time_s=sum(r.get("epoch_seconds", 0.0) for r in history),
                    test_CF1_at_best=best.get("test_CF1"),
                    test_OF1_at_best=best.get("test_OF1"),
                    test_paper_CF1_at_best=best.get("test_paper_CF1"),
                    test_paper_OF1_at_best=best.get("test_paper_OF1"),
                    best_val_loss=best.get("val_loss"),
                )
            rows.append(row)
        return rows

    def tables(self) -> tuple[pa.Table, pa.Table]:
        trials = pa.Table.from_pylist(self.trial_rows(), schema=TRIAL_SCHEMA)
        epoch_rows = [row for trial_id in sorted(self.epochs) for _, row in sorted(self.epochs[trial_id].items())]
        metric_names = sorted({k for row in epoch_rows for k in row} - {"trial_id", "epoch"})
        schema = pa.schema(EPOCH_FIXED + [(name, pa.float64()) for name in metric_names])
        return trials, pa.Table.from_pylist(epoch_rows, schema=schema)

    def write(self) -> None:
        trials, epochs = self.tables()
        write_table(epochs, self.epochs_file)
        write_table(trials, self.trials_file)

    # --- what that version's callback computed from the rows at each report ----------------------------------------

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self.trials.values():
            counts[record.status] = counts.get(record.status, 0) + 1
        return counts

    def leader(self) -> dict | None:
        column = OBJECTIVE_COLUMNS[self.metric]
        scored = [r for r in self.trial_rows() if r.get(column) is not None]
        sign = 1.0 if self.mode == "max" else -1.0
        return max(scored, key=lambda r: sign * r[column], default=None)

    def row(self, trial_id: str) -> dict:
        return next(r for r in self.trial_rows() if r["trial_id"] == trial_id)

    def publish(self) -> None:
        self.write()

    def interrupt_unknown(self, trial_ids: set[str]) -> list[str]:
        return []
