"""Sweep results: two tables, ``trials`` (one row per trial) and ``epochs`` (one row per trial and epoch), kept as
append-only Parquet segments named by a manifest (:mod:`~sweeps.results.store`), written by the driver
(:mod:`~sweeps.results.writer`), read as one generation and queried with SQL (:mod:`~sweeps.results.reader`); their
columns are :mod:`~sweeps.results.schema`'s. Beside them: the paired statistics (:mod:`~sweeps.results.stats`), the
confirmation stage's plan and verdict (:mod:`~sweeps.results.confirm`), each pairing's teacher against its student
alone (:mod:`~sweeps.results.teachers`), the plots (:mod:`~sweeps.results.plots`) and the export of a trial's student
(:mod:`~sweeps.results.export`). Imports ``core``, ``folder`` and ``specs``.
"""

from sweeps.results.reader import (
    REQUIRED_TRIAL_COLUMNS,
    SweepOutcome,
    SweepResults,
    SweepStatus,
    format_table,
    outcome,
    read_epochs,
    sweep_status,
)
from sweeps.results.schema import HPARAM_COLUMNS, OBJECTIVE_COLUMNS, TRIAL_COLUMNS, TRIAL_SCHEMA, markdown_table
from sweeps.results.store import CorruptResultsError, ResultsStore, read_table, write_table
from sweeps.results.writer import KnownTrial, ResultsWriter, TrialRecord

#: This floor's modules, bottom first (``__init__``: this package itself, after what it re-exports).
MODULES = [
    "schema",
    "store",
    "stats",
    "confirm",
    "teachers",
    "writer",
    "reader",
    "__init__",
    "compare",
    "plots",
    "export",
]

__all__ = [
    "CorruptResultsError",
    "HPARAM_COLUMNS",
    "KnownTrial",
    "OBJECTIVE_COLUMNS",
    "REQUIRED_TRIAL_COLUMNS",
    "ResultsStore",
    "ResultsWriter",
    "SweepOutcome",
    "SweepResults",
    "SweepStatus",
    "TRIAL_COLUMNS",
    "TRIAL_SCHEMA",
    "TrialRecord",
    "format_table",
    "markdown_table",
    "outcome",
    "read_epochs",
    "read_table",
    "sweep_status",
    "write_table",
]
