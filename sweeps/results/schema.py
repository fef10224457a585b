"""The two results tables' schema, and how a trial's row follows from its record and its epoch rows: one list of
columns (:data:`TRIAL_COLUMNS`) gives the Parquet schema, the row builder and the documentation's table.

``trials`` (one row per trial) and ``epochs`` (one row per trial and epoch: ``trial_id``, ``epoch`` and every number
the workers report: ``val_mAP``, ``val_loss``, ``val_<part>``, ``train_total``, ``train_<part>``,
``train_grad_share_<part>``, ``test_mAP``, ``test_CF1``, ``test_OF1``, ``images_per_s``, ``lr``, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyarrow as pa

from sweeps.core.vocab import sign
from sweeps.specs import SEARCHABLE

HPARAM_COLUMNS = SEARCHABLE


@dataclass(frozen=True)
class Column:
    """A trials-table column: its type, what it means, and where its value comes from: ``epoch`` rows (``at`` the
    ``best`` or ``last`` epoch, ``key`` its metric) or the trial's ``record``."""

    name: str
    type: pa.DataType
    meaning: str
    at: str = ""  # best | last | "" (computed)
    key: str = ""


_STR, _F64, _I64 = pa.string(), pa.float64(), pa.int64()
#: The trials table, in order: identity and configuration, then what its epochs say.
TRIAL_COLUMNS: tuple[Column, ...] = (
    Column("trial_id", _STR, "the trial's id (deterministic: sweep id, experiment, trial counter)"),
    Column(
        "status",
        _STR,
        "completed (all epochs), stopped (by ASHA), failed, running, pending, interrupted (its run "
        "was lost in a crash and not continued)",
    ),
    Column("error", _STR, "the failure's message (null unless failed)"),
    Column("teacher", _STR, "the sampled teacher"),
    Column("student", _STR, "the sampled student"),
    Column("method", _STR, "the sampled method"),
    Column("stage", _STR, "search (a trial of the search), or confirm (a rerun on a fresh seed: budget.confirm)"),
    Column("seed", _I64, "a confirmation run's student seed (null for a search trial: every one uses the spec's seed)"),
    Column("confirms", _STR, "the search trial a confirmation run reruns the configuration of (null: the baseline)"),
    *(
        Column(name, _F64, "a sampled or fixed hyperparameter (null when the method has none)")
        for name in HPARAM_COLUMNS
    ),
    Column("epochs_run", _I64, "epochs reported"),
    Column("stopped_early", pa.bool_(), "ASHA stopped the trial before max_epochs"),
    Column("best_val_mAP", _F64, "val mAP at the best epoch (by the spec's metric)", "best", "val_mAP"),
    Column("best_epoch", _I64, "the best epoch by the spec's metric", "best", "epoch"),
    Column("test_mAP_at_best", _F64, "test mAP at the best epoch", "best", "test_mAP"),
    Column("last_val_mAP", _F64, "val mAP at the last reported epoch", "last", "val_mAP"),
    Column("last_test_mAP", _F64, "test mAP at the last reported epoch", "last", "test_mAP"),
    Column("best_val_CF1", _F64, "val CF1 at the best epoch", "best", "val_CF1"),
    Column("best_val_OF1", _F64, "val OF1 at the best epoch", "best", "val_OF1"),
    Column("student_params", _I64, "parameter count of the student", "last", "student_params"),
    Column("latency_ms", _F64, "median forward latency of one image on the trial's device", "last", "latency_ms"),
    Column("images_per_s", _F64, "mean training throughput over its epochs"),
    Column(
        "wall_time_s",
        _F64,
        "its epochs' time: training, evaluation and checkpointing (the ledger's parts and a rest of bookkeeping)",
    ),
    *(
        Column(f"time_{part}_s", _F64, f"seconds {meaning}, over its epochs (the time ledger)")
        for part, meaning in (
            ("data", "waiting for the data loader (decoding, augmentation, the copy to the device)"),
            ("teacher", "in the teacher's forward passes"),
            ("student", "in the student's steps (forward, losses, backward, optimizer)"),
            ("eval", "evaluating on val and test"),
            (
                "checkpoint",
                "writing checkpoints (the best's copy, the epoch's; Ray Train's upload after it is not counted)",
            ),
        )
    ),
    Column("teacher_cache_hits", _I64, "images whose teacher outputs it read from the cache, over its epochs"),
    Column("teacher_cache_misses", _I64, "images whose teacher outputs it computed (and cached), over its epochs"),
    Column("test_CF1_at_best", _F64, "test CF1 (threshold 0.5) at the best epoch", "best", "test_CF1"),
    Column("test_OF1_at_best", _F64, "test OF1 (threshold 0.5) at the best epoch", "best", "test_OF1"),
    Column(
        "test_paper_CF1_at_best",
        _F64,
        "the official code's CF1 (the paper's), test split, best epoch",
        "best",
        "test_paper_CF1",
    ),
    Column(
        "test_paper_OF1_at_best",
        _F64,
        "the official code's OF1 (the paper's), test split, best epoch",
        "best",
        "test_paper_OF1",
    ),
    Column("best_val_loss", _F64, "val loss at the best epoch", "best", "val_loss"),
)
#: The time ledger's parts (epoch metrics, summed into the trials table's columns of the same names).
LEDGER = tuple(c.name for c in TRIAL_COLUMNS if c.name.startswith("time_") and c.name.endswith("_s"))
TRIAL_SCHEMA = pa.schema([(c.name, c.type) for c in TRIAL_COLUMNS])
#: The trials-table columns that summarize the epochs (what a rebuild recomputes, or keeps when it cannot).
EPOCH_SUMMARY = tuple(
    c.name for c in TRIAL_COLUMNS[TRIAL_COLUMNS.index(next(c for c in TRIAL_COLUMNS if c.name == "epochs_run")) :]
)
#: The trials-table columns that hold a trial's configuration (what the writer keeps as its record's config).
CONFIG_COLUMNS = ("teacher", "student", "method", *HPARAM_COLUMNS, "stage", "seed", "confirms")
#: Each objective a spec may name, and the trials-table column holding it at a trial's best epoch.
OBJECTIVE_COLUMNS = {
    "val_mAP": "best_val_mAP",
    "val_CF1": "best_val_CF1",
    "val_OF1": "best_val_OF1",
    "val_loss": "best_val_loss",
    "latency_ms": "latency_ms",
    "student_params": "student_params",
}
#: Epoch-table columns that are not floats.
EPOCH_FIXED = [("trial_id", pa.string()), ("epoch", pa.int64())]
#: Keys Tune adds to every result; not metrics of ours.
TUNE_KEYS = {
    "training_iteration",
    "time_this_iter_s",
    "time_total_s",
    "timestamp",
    "pid",
    "time_since_restore",
    "iterations_since_restore",
    "timesteps_total",
    "episodes_total",
    "timesteps_since_restore",
    "done",
    "date",
    "hostname",
    "node_ip",
    "config",
    "trial_id",
    "experiment_tag",
    "checkpoint_dir_name",
    "should_checkpoint",
}


def as_float(value) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def epoch_metrics(result: dict) -> dict:
    """The numbers of a report that are epoch metrics (Tune's own keys and non-numbers left out)."""
    return {
        k: float(v)
        for k, v in result.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in TUNE_KEYS
    }


def trial_row(
    trial_id: str, status: str, error: str | None, config: dict, history: list[dict], metric: str, mode: str
) -> dict:
    """A trial's row: its record (status, error, configuration) and what its epoch rows (in epoch order) say."""
    row = {
        "trial_id": trial_id,
        "status": status,
        "error": error,
        "teacher": config.get("teacher"),
        "student": config.get("student"),
        "method": config.get("method"),
        "stage": config.get("stage") or "search",
        "seed": int(config["seed"]) if config.get("seed") is not None else None,
        "confirms": config.get("confirms"),
    }
    row.update({name: as_float(config.get(name)) for name in HPARAM_COLUMNS})
    row["epochs_run"] = len(history)
    row["stopped_early"] = status == "stopped"
    row.update(dict.fromkeys(EPOCH_SUMMARY[2:]))
    if not history:
        return row
    direction = sign(mode)
    best = max(history, key=lambda r: direction * r.get(metric, -direction * math.inf))
    last = history[-1]
    for column in TRIAL_COLUMNS:
        if column.at:
            value = (best if column.at == "best" else last).get(column.key)
            row[column.name] = int(value) if value is not None and column.type == _I64 else value
    row["images_per_s"] = sum(r.get("images_per_s", 0.0) for r in history) / len(history)
    row["wall_time_s"] = sum(r.get("epoch_seconds", 0.0) + r.get("time_checkpoint_s", 0.0) for r in history)
    for name in LEDGER:  # null for a trial whose epochs were recorded before the ledger existed
        values = [r[name] for r in history if isinstance(r.get(name), (int, float))]
        row[name] = sum(values) if values else None
    for name in ("teacher_cache_hits", "teacher_cache_misses"):  # null: no cache (no teacher, off, online)
        values = [r[name] for r in history if isinstance(r.get(name), (int, float))]
        row[name] = int(sum(values)) if values else None
    return row


def epochs_table(rows: list[dict]) -> pa.Table:
    """Epoch rows as a table: ``trial_id``, ``epoch`` and a float column for every metric any row has."""
    names = sorted({k for row in rows for k in row} - {"trial_id", "epoch"})
    schema = pa.schema(EPOCH_FIXED + [(name, pa.float64()) for name in names])
    return pa.Table.from_pylist(rows, schema=schema)


def trials_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=TRIAL_SCHEMA)


def markdown_table() -> str:
    """The trials table's columns as a Markdown table (for the documentation)."""
    lines = ["| column | type | meaning |", "|---|---|---|"]
    lines += [f"| `{c.name}` | {c.type} | {c.meaning} |" for c in TRIAL_COLUMNS]
    return "\n".join(lines)
