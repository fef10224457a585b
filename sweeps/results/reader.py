"""Reading a sweep's results: both tables of one generation, SQL over them (DuckDB, sandboxed), the leaderboard, the
Pareto front, text renderings, and a sweep's outcome and status."""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
import shutil
import tempfile
import textwrap
import threading
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from l2d.storage import Location
from sweeps.core.vocab import FINISHED, SCORED, sign, sql_order
from sweeps.folder.lease import read_lease
from sweeps.folder.marker import is_sweep
from sweeps.folder.provenance import last_run
from sweeps.results.confirm import summarize
from sweeps.results.schema import HPARAM_COLUMNS, LEDGER, OBJECTIVE_COLUMNS
from sweeps.results.store import EPOCHS_FILE, TRIALS_FILE, CorruptResultsError, ResultsStore
from sweeps.results.teachers import read_teachers, teacher_rows
from sweeps.specs import Range
from sweeps.specs.stored import SPEC_FILE, load_sweep_spec

# Loaded late, inside the functions that use them: duckdb (not needed when the command line starts).

#: What a query may use by default (``results --sql-memory`` / ``--sql-timeout`` change them).
SQL_MEMORY = "1GB"
SQL_TIMEOUT_S = 60.0
#: Columns a trials table must have to be read at all (older tables may lack newer hyperparameter columns).
REQUIRED_TRIAL_COLUMNS = (
    "trial_id",
    "status",
    "teacher",
    "student",
    "method",
    "epochs_run",
    "best_val_mAP",
    "best_epoch",
)


class SweepResults:
    """The results of a sweep folder: ``trials`` and ``epochs`` as Arrow tables, and SQL over them."""

    def __init__(self, sweep_dir: str | Location):
        self.sweep_dir = Location.parse(sweep_dir, "sweep folder")
        if self.sweep_dir.is_file() and self.sweep_dir.name.endswith((".yaml", ".yml")):
            raise FileNotFoundError(
                f"{self.sweep_dir}: is a spec file, not a sweep folder; a sweep folder is "
                f"<storage>/<name> (start the sweep with `l2d-sweep run {self.sweep_dir}`)"
            )
        if not self.sweep_dir.is_dir():
            raise FileNotFoundError(f"{self.sweep_dir}: no such sweep folder")
        store = ResultsStore(self.sweep_dir)
        generation = store.read()
        if generation.trials is None and generation.epochs is None:
            what = (
                "a sweep that has not recorded a trial yet"
                if is_sweep(self.sweep_dir)
                else "not a sweep folder (no .l2d-sweep marker)"
            )
            raise FileNotFoundError(f"{self.sweep_dir}: no results yet ({what})")
        for table, name in ((generation.trials, TRIALS_FILE), (generation.epochs, EPOCHS_FILE)):
            if table is None:
                raise CorruptResultsError(
                    f"{store.folder / name}: missing beside its sibling; `l2d-sweep resume` "
                    f"rebuilds it from the other results files, the checkpoints and Tune's state"
                )
        missing = [c for c in REQUIRED_TRIAL_COLUMNS if c not in generation.trials.column_names]
        if missing:
            raise CorruptResultsError(
                f"{store.folder / TRIALS_FILE}: lacks the column(s) {', '.join(missing)}; "
                f"`l2d-sweep resume` rebuilds it"
            )
        self.generation = generation.generation
        self.trials = with_stages(generation.trials)
        self.epochs = generation.epochs
        self._stored_spec = False  # not read yet (see stored_spec)

    def dataframes(self):
        """``(trials, epochs)`` as pandas DataFrames (one generation)."""
        return self.trials.to_pandas(), self.epochs.to_pandas()

    def sql(
        self,
        query: str,
        parameters: list | None = None,
        memory_limit: str = SQL_MEMORY,
        timeout_s: float = SQL_TIMEOUT_S,
    ) -> pa.Table:
        """Run DuckDB SQL over the views ``trials`` and ``epochs``, sandboxed: the two tables are registered from
        memory; DuckDB's temporary folder is a private one, deleted afterwards; its access to files (no allowed
        directory), extensions and the network is switched off and its configuration locked, so a query cannot read
        or write anything else (``COPY ... TO``, ``read_csv``, ``ATTACH`` fail); it may use ``memory_limit`` and run
        ``timeout_s`` seconds. ``parameters`` fill the query's ``?`` placeholders (values are never pasted in).

        Raises:
            ValueError: a statement that returns no rows, one DuckDB refuses (the first line of its message), or one
                over its time.
        """
        import duckdb

        private = tempfile.mkdtemp(prefix="l2d-sql-")
        connection = duckdb.connect(
            ":memory:",
            config={
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
                "temp_directory": private,
                "memory_limit": memory_limit,
            },
        )
        outcome: dict = {}

        def run():
            try:
                relation = connection.sql(query, params=parameters) if parameters else connection.sql(query)
                if relation is None:
                    outcome["error"] = "the SQL statement returns no rows; use a SELECT"
                    return
                # DuckDB renamed arrow() to to_arrow_table() in 1.4.
                outcome["table"] = (
                    relation.to_arrow_table() if hasattr(relation, "to_arrow_table") else relation.arrow()
                )
            except duckdb.Error as error:
                lines = str(error).splitlines()
                hint = next(
                    (line.strip() for line in lines[1:] if line.strip().startswith(("Candidate", "Did you"))), ""
                )  # DuckDB's own suggestion of the column meant
                outcome["error"] = f"SQL error: {lines[0]}" + (f" ({hint})" if hint else "")

        try:
            connection.register("trials", self.trials)
            connection.register("epochs", self.epochs)
            try:  # a session option (not in connect()'s config); in Jupyter without ipywidgets DuckDB refuses it
                connection.execute("SET enable_progress_bar = false")
            except duckdb.Error:
                pass
            connection.execute("SET allowed_directories = []")
            connection.execute("SET enable_external_access = false")
            connection.execute("SET lock_configuration = true")
            worker = threading.Thread(target=run, name="l2d-sql", daemon=True)
            worker.start()
            worker.join(timeout_s)
            if worker.is_alive():
                connection.interrupt()
                worker.join(10)
                raise ValueError(
                    f"SQL error: the query ran longer than {timeout_s:g} s (--sql-timeout) and was stopped"
                )
            if "error" in outcome:
                raise ValueError(outcome["error"])
            return outcome["table"]
        finally:
            connection.close()
            shutil.rmtree(private, ignore_errors=True)

    @property
    def stored_spec(self):
        """The sweep's stored spec, read once (None for a folder without one; a damaged one is named, one edited by
        hand reported)."""
        if self._stored_spec is False:
            self._stored_spec = load_sweep_spec(self.sweep_dir) if (self.sweep_dir / SPEC_FILE).exists() else None
        return self._stored_spec

    def _searched(self) -> set[str]:
        """The hyperparameters the stored spec searches (empty without one)."""
        spec = self.stored_spec
        return {n for n, value in spec.search_space.items() if isinstance(value, Range)} if spec else set()

    @property
    def objectives(self) -> list[tuple[str, str]]:
        """The sweep's objectives from its stored spec (val mAP, max, for a folder without one)."""
        spec = self.stored_spec
        return list(spec.objective_list) if spec else [("val_mAP", "max")]

    def leaderboard(
        self, limit: int | None = None, columns: list[str] | None = None, every_column: bool = False
    ) -> pa.Table:
        """The search's trials ranked by the spec's primary objective at their best epoch (trials without a value, and
        the confirmation stage's reruns, left out: :meth:`confirmation` is theirs), at
        full precision and under the trials table's own column names (what ``--columns``, ``--sql`` and the API
        take). ``columns``: any of the trials table's; else ``every_column``: all of them; else the objectives, test
        mAP at that epoch, every hyperparameter the sweep's trials have, then the rest of the summary. ``limit``:
        the first rows only (None: all)."""
        metric, mode = self.objectives[0]
        rank = OBJECTIVE_COLUMNS[metric]
        present = {
            name for name in self.trials.column_names if self.trials.column(name).null_count < self.trials.num_rows
        }
        if columns:
            unknown = [c for c in columns if c not in self.trials.column_names]
            if unknown:
                raise ValueError(
                    f"unknown column {unknown[0]!r}{_suggest_column(unknown[0], self.trials.column_names)}"
                    f"; the trials table has: {', '.join(self.trials.column_names)}"
                )
            chosen = list(dict.fromkeys(["trial_id", *columns]))
        elif every_column:
            chosen = list(self.trials.column_names)
        else:
            objectives = [OBJECTIVE_COLUMNS[m] for m, _ in self.objectives]
            searched = self._searched()
            hparams = sorted((c for c in HPARAM_COLUMNS if c in present), key=lambda c: c not in searched)
            chosen = [
                "trial_id",
                "method",
                "student",
                *objectives,
                "test_mAP_at_best",
                *hparams,
                "status",
                "teacher",
                "best_epoch",
                "epochs_run",
                *[c for c in ("student_params",) if c not in objectives],
                *[c for c in ("test_paper_CF1_at_best", "test_paper_OF1_at_best") if c in present],
            ]
            chosen = list(dict.fromkeys(chosen))
        order = sql_order(mode)
        limited = f" LIMIT {int(limit)}" if limit is not None else ""
        selected = ", ".join(f'"{c}"' for c in chosen)
        return self.sql(
            f"SELECT {selected} FROM trials WHERE {rank} IS NOT NULL AND stage = 'search' "
            f"ORDER BY {rank} {order}, trial_id{limited}"
        )

    def search_rows(self) -> list[dict]:
        """The search's trials (the confirmation stage's reruns left out: they are not samples of the search), as
        rows."""
        return [row for row in self.trials.to_pylist() if row["stage"] == "search"]

    def confirmation(self):
        """The confirmation stage as its runs hold it (:func:`sweeps.results.confirm.summarize`); None when the stored
        spec asks for none or the search has no finalist yet."""
        spec = self.stored_spec
        return summarize(spec, self.trials.to_pylist()) if spec is not None else None

    def teachers(self) -> pa.Table:
        """Each pairing's teacher (its val and test mAP, trained or adopted) beside its student trained alone and the
        pairing's best distilled trial (:func:`sweeps.results.teachers.teacher_rows`); no rows when the sweep had no
        teacher phase.

        Raises:
            CorruptResultsError: ``teachers.json`` exists but cannot be read.
        """
        rows = teacher_rows(read_teachers(self.sweep_dir), self.trials.to_pylist())
        return pa.Table.from_pylist(rows) if rows else pa.table({"teacher": pa.array([], pa.string())})

    def ledger(self) -> dict | None:
        """Where the sweep's trial time went: ``{"seconds": total, "trials": n, "parts": {part: seconds}}`` over the
        trials that have a ledger (the parts: data, teacher, student, eval, checkpoint, and ``other``: the rest of
        their wall time, bookkeeping); None when none has one (a sweep recorded before the ledger existed)."""
        present = [name for name in LEDGER if name in self.trials.column_names]
        rows = [r for r in self.trials.select(["wall_time_s", *present]).to_pylist() if r.get("time_student_s")]
        if not rows:
            return None
        parts = {name[5:-2]: sum(r[name] or 0.0 for r in rows) for name in present}
        total = sum(r["wall_time_s"] or 0.0 for r in rows)
        parts["other"] = max(0.0, total - sum(parts.values()))
        return {"seconds": total, "trials": len(rows), "parts": parts}

    def pareto(self) -> pa.Table:
        """The non-dominated finished trials: over the spec's objectives when it has several, else val mAP against
        student size (no other trial is at least as good on every one and better on one)."""
        objectives = self.objectives if len(self.objectives) > 1 else [("val_mAP", "max"), ("student_params", "min")]
        columns = [OBJECTIVE_COLUMNS[m] for m, _ in objectives]
        rows = [r for r in self.search_rows() if r["status"] in SCORED and all(r.get(c) is not None for c in columns)]
        signs = [sign(mode) for _, mode in objectives]
        points = {r["trial_id"]: [s * r[c] for s, c in zip(signs, columns)] for r in rows}

        def dominated(point):
            return any(
                all(o >= p for o, p in zip(other, point)) and any(o > p for o, p in zip(other, point))
                for other in points.values()
            )

        front = sorted(t for t, point in points.items() if not dominated(point))
        shown = ", ".join(f"round({c}, 4) AS {c}" if c != "student_params" else c for c in columns)
        extra = "" if "student_params" in columns else ", student_params"
        # The ids as a parameter, never pasted into the SQL.
        return self.sql(
            f"SELECT trial_id, student, method, {shown}{extra}, round(test_mAP_at_best, 2) AS test_mAP "
            f"FROM trials WHERE list_contains(?, trial_id) ORDER BY {columns[-1]}",
            [front],
        )


def with_stages(trials: pa.Table) -> pa.Table:
    """The trials table with its confirmation columns whole: a table written before the confirmation stage existed
    (or a row of one) is the search's (``stage`` search, no ``seed`` or ``confirms``)."""
    for name, kind in (("stage", pa.string()), ("seed", pa.int64()), ("confirms", pa.string())):
        if name not in trials.column_names:
            trials = trials.append_column(name, pa.nulls(trials.num_rows, kind))
    index = trials.column_names.index("stage")
    return trials.set_column(index, "stage", pc.fill_null(trials.column("stage"), "search"))


def _suggest_column(name: str, columns: list[str]) -> str:
    """``; did you mean 'best_val_mAP'?`` for a metric's short name or a near miss."""
    if name in OBJECTIVE_COLUMNS and OBJECTIVE_COLUMNS[name] in columns:
        return f"; did you mean {OBJECTIVE_COLUMNS[name]!r} (the trials table's name for it)?"
    close = difflib.get_close_matches(name, columns, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def plain_value(value):
    """A value as JSON has it: non-finite floats become null (JSON has no NaN), anything else odd a string."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def format_table(table: pa.Table, fmt: str = "table", width: int | None = None) -> str:
    """Render an Arrow table: ``table`` (aligned text, numbers right-aligned, ``(N rows)`` below; with ``width``,
    the columns that fit in it, the rest named in a last line), ``csv``, ``json`` (one array of objects: what
    ``json.loads`` reads) or ``jsonl`` (one object per line)."""
    rows = table.to_pylist()
    if fmt in ("json", "jsonl"):
        plain = [{k: plain_value(v) for k, v in row.items()} for row in rows]
        if fmt == "json":
            return json.dumps(plain, indent=1)
        return "\n".join(json.dumps(row) for row in plain)
    names = table.column_names
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(names)
        for row in rows:
            writer.writerow(["" if row[n] is None else row[n] for n in names])
        return out.getvalue().rstrip("\n")

    def show(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):  # four significant digits: a metric to 0.01, a learning rate as 0.0011
            return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
        return str(value)

    numeric = [pa.types.is_integer(f.type) or pa.types.is_floating(f.type) for f in table.schema]
    cells = [[show(row[n]) for n in names] for row in rows]
    if width is not None:  # one long value (a path, a list) does not push every other column out
        cap = max(24, width // 2)
        cells = [[c if len(c) <= cap else c[: cap - 3] + "..." for c in cell] for cell in cells]
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    shown = len(names)
    if width is not None:
        used = 0
        for index, w in enumerate(widths):
            used += w + (2 if index else 0)
            if used > width and index > 0:
                shown = index
                break

    def line(values) -> str:
        return "  ".join(
            v.rjust(w) if numeric[i] else v.ljust(w) for i, (v, w) in enumerate(zip(values[:shown], widths[:shown]))
        ).rstrip()

    lines = [line(names)] + [line(cell) for cell in cells]
    footer = f"({len(rows)} row{'s' if len(rows) != 1 else ''}"
    if shown < len(names):
        footer += (
            f"; {len(names) - shown} more column(s) not shown: {', '.join(names[shown:])}; --columns to choose, "
            f"--format csv or json for all"
        )
    footer += ")"
    if width is not None and len(footer) > width:
        footer = textwrap.fill(footer, width)
    return "\n".join(lines) + f"\n{footer}"


@dataclass
class SweepOutcome:
    """What a driver leaves behind: the results and, in words, whether the sweep did its job. ``counts``: the search's
    trials by state (what its budget counts); ``confirm_counts``: the confirmation runs'
    (:mod:`sweeps.results.confirm`)."""

    results: SweepResults | None
    counts: dict[str, int]
    confirm_counts: dict[str, int] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        """At least one trial that did not fail (the exit status 0 of ``run``/``resume``)."""
        return any(n for status, n in self.counts.items() if status != "failed")

    @property
    def finished(self) -> int:
        return sum(n for status, n in self.counts.items() if status in FINISHED)

    @property
    def unfinished(self) -> int:
        """Trials neither finished nor interrupted (still running or pending in the tables)."""
        return sum(n for status, n in self.counts.items() if status not in FINISHED + ("interrupted",))

    def describe(self) -> str:
        if not self.counts:
            return "no trial ran"
        states = ", ".join(f"{n} {status}" for status, n in sorted(self.counts.items()))
        said = states if self.succeeded else f"every trial failed ({states})"
        if self.confirm_counts:
            said += "; confirmation runs: " + ", ".join(
                f"{n} {status}" for status, n in sorted(self.confirm_counts.items())
            )
        return said


def count_by_stage(results: SweepResults) -> tuple[dict[str, int], dict[str, int]]:
    """``(search, confirmation)``: each stage's trials by state."""
    counts: dict[str, dict[str, int]] = {"search": {}, "confirm": {}}
    for row in results.sql("SELECT stage, status, count(*) AS n FROM trials GROUP BY ALL ORDER BY ALL").to_pylist():
        counts.setdefault(row["stage"], {})[row["status"]] = row["n"]
    return counts["search"], counts["confirm"]


def outcome(sweep_dir: str | Location) -> SweepOutcome:
    """The sweep's results and its trials counted by state and stage (none yet: no results)."""
    try:
        results = SweepResults(sweep_dir)
    except FileNotFoundError:
        return SweepOutcome(None, {})
    return SweepOutcome(results, *count_by_stage(results))


@dataclass
class SweepStatus:
    """``l2d-sweep status`` as data: trials by state, who drives the sweep, the best trial, the running ones, the
    folder's size."""

    counts: dict[str, int]
    driver: str | None  # the live lease's holder, or None
    stale_lease: str | None  # a lease whose driver is gone
    outcome: SweepOutcome
    metric: str
    best: dict | None
    running: list[dict]
    size_bytes: int
    checkpoint_bytes: int
    state: str = "finished"  # running, interrupted, incomplete, failed, finished (see sweep_state)
    detail: str = ""  # the state in words, for one line
    budget: int | None = None  # the stored spec's num_samples (None: no readable spec)
    last_run: dict | None = None  # the newest entry of run.json
    confirmation: dict | None = None  # the confirmation stage: runs by state, missing, the winner (None: no stage)
    ledger: dict | None = None  # where the trials' time went (SweepResults.ledger)

    def to_dict(self) -> dict:
        """Everything above, JSON-ready (``status --format json``)."""
        return {
            "path": None,
            "state": self.state,
            "detail": self.detail,
            "counts": self.counts,
            "budget": self.budget,
            "metric": self.metric,
            "driver": self.driver,
            "stale_lease": self.stale_lease,
            "best": self.best,
            "running": self.running,
            "size_bytes": self.size_bytes,
            "checkpoint_bytes": self.checkpoint_bytes,
            "last_run": self.last_run,
            "confirmation": self.confirmation,
            "ledger": self.ledger,
        }


#: A sweep's states, as ``status``, ``list`` and the API name them.
STATES = ("running", "interrupted", "incomplete", "failed", "finished")


def sweep_state(
    counts: dict[str, int], live_driver: bool, last: dict | None, budget: int | None, confirm_missing: int = 0
) -> tuple[str, str]:
    """``(state, words)``: ``running`` (a driver holds the lease), ``interrupted`` (its last driver was stopped by a
    signal), ``incomplete`` (its last driver died or failed before every trial ended, or before the confirmation
    stage's last run, ``confirm_missing`` of them: ``resume`` goes on), ``failed`` (every trial failed),
    ``finished``."""
    result = SweepOutcome(None, counts)
    finished, unfinished = result.finished, result.unfinished
    of = f" of {budget}" if budget else ""
    if live_driver:
        return "running", f"{finished}{of} trial(s) finished"
    outcome = str((last or {}).get("outcome") or "")
    short = budget is not None and finished < budget  # finished: completed, stopped or failed
    if outcome.startswith("interrupted"):
        by = outcome.removeprefix("interrupted").strip(" ()") or "a signal"
        return "interrupted", f"by {by}: {finished}{of} trial(s) finished"
    if confirm_missing and not (unfinished or short) and result.succeeded:
        return "incomplete", f"{finished}{of} trial(s) finished; {confirm_missing} confirmation run(s) not finished"
    if unfinished or short or (last is not None and last.get("ended") is None):
        why = (
            ""
            if last is None
            else "its driver stopped without finishing: "
            if last.get("ended") is None
            else f"its driver ended with {outcome[:80]!r}: "
        )
        return "incomplete", f"{why}{finished}{of} trial(s) finished, {unfinished} unfinished"
    if not result.succeeded:
        return "failed", result.describe()
    return "finished", result.describe()


def sweep_status(sweep_dir: str | Location) -> SweepStatus:
    results = SweepResults(sweep_dir)
    folder = results.sweep_dir
    counts, confirm_counts = count_by_stage(results)
    lease = read_lease(folder)
    live = lease is not None and lease.stale() is None
    metric, mode = results.objectives[0]
    column = OBJECTIVE_COLUMNS[metric]
    best = results.sql(
        f"SELECT trial_id, teacher, student, method, {column} AS value, test_mAP_at_best AS test_mAP, "
        f"best_epoch FROM trials WHERE {column} IS NOT NULL AND stage = 'search' ORDER BY {column} {sql_order(mode)}, "
        f"trial_id LIMIT 1"
    ).to_pylist()
    running = results.sql(
        "SELECT trial_id, student, method, epochs_run AS epoch, round(last_val_mAP, 2) AS "
        "last_val_mAP FROM trials WHERE status = 'running' ORDER BY trial_id"
    ).to_pylist()
    budget = results.stored_spec.budget.num_samples if results.stored_spec else None  # read with the objectives
    last = last_run(folder)
    confirmation = results.confirmation()
    state, detail = sweep_state(counts, live, last, budget, confirmation.missing if confirmation else 0)
    return SweepStatus(
        counts=counts,
        driver=lease.describe() if live else None,
        stale_lease=lease.describe() if lease is not None and not live else None,
        outcome=SweepOutcome(results, counts, confirm_counts),  # the tables read once
        metric=metric,
        best=best[0] if best else None,
        running=running,
        size_bytes=folder.size(),
        checkpoint_bytes=(folder / "train").size(),
        state=state,
        detail=detail,
        budget=budget,
        last_run=last,
        ledger=results.ledger(),
        confirmation=None
        if confirmation is None
        else {
            "counts": confirm_counts,
            "configurations": len(confirmation.rows),
            "seeds": len(confirmation.seeds),
            "missing": confirmation.missing,
            "winner": confirmation.winner.candidate.label if confirmation.winner else None,
            "winner_mean": confirmation.winner.mean if confirmation.winner else None,
        },
    )


def describe_ledger(ledger: dict | None) -> str | None:
    """``time: 1.2 h over 8 trials: data 12%, teacher 20%, ...`` (None without a ledger)."""
    if not ledger or ledger["seconds"] <= 0:
        return None
    seconds = ledger["seconds"]
    amount = (
        f"{seconds / 3600:.1f} h"
        if seconds >= 5400
        else f"{seconds / 60:.1f} min"
        if seconds >= 90
        else f"{seconds:.0f} s"
    )
    shares = ", ".join(f"{part} {100 * value / seconds:.0f}%" for part, value in ledger["parts"].items())
    return f"time: {amount} over {ledger['trials']} trial(s): {shares}"


def read_epochs(sweep_dir: str | Location, metric: str | None = None) -> list[dict]:
    """The sweep's epoch rows (only those with ``metric`` when given); empty when there are none or they cannot be
    read (a reader that can do without them: ASHA rebuilding its rungs)."""
    try:
        table = ResultsStore(Location.parse(sweep_dir)).read().epochs
    except CorruptResultsError:
        return []
    if table is None or (metric is not None and metric not in table.column_names):
        return []
    return [row for row in table.to_pylist() if metric is None or row.get(metric) is not None]
