"""The notebook API: a sweep as a Python object, for what a notebook or a script does with one.

>>> from sweeps import Sweep                                     # or: from sweeps.api import Sweep
>>> sweep = Sweep.run("search_spaces/quickstart.yaml")         # or Sweep.open("runs/quickstart")
>>> sweep.leaderboard()                                         # a pandas DataFrame, best first
>>> sweep.sql("SELECT method, max(best_val_mAP) FROM trials GROUP BY method")
>>> sweep.history("<trial id>")                                 # one trial's epochs
>>> sweep.plot("history")                                       # a matplotlib Figure
>>> sweep.export("exports/best")                                # the best student, safetensors + model card
>>> Sweep.compare(["runs/a", "runs/b"])                         # two sweeps side by side, paired where they can be

This is the one way into a sweep: the command line's read commands (``results``, ``status``, ``plot``,
``importance``, ``list``, ``compare``, ``export``) open it here and print what these methods return, so a notebook and
``l2d-sweep results`` cannot disagree. Every read takes the newest generation of the results (one generation per
call), the stored spec, the study read-only. Reading never writes into the sweep folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from l2d.storage import Location
from sweeps.core.vocab import sql_order
from sweeps.folder.marker import is_sweep
from sweeps.results import SweepResults, plots, sweep_status
from sweeps.results.compare import compare, summary_row
from sweeps.results.schema import OBJECTIVE_COLUMNS
from sweeps.search.study import load_sweep_study
from sweeps.specs import load_spec, parse_spec, with_overrides
from sweeps.specs.stored import load_sweep_spec

# Loaded late, inside the functions that use them: sweeps.results.export, sweeps.tune.runner (not needed when the
# command line starts).


@dataclass
class Sweep:
    """An existing sweep folder (:meth:`open`), or one a call ran (:meth:`run`, :meth:`resume`, :meth:`extend`)."""

    path: Location

    # --- getting one ------------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Location) -> Sweep:
        """The sweep at ``path`` (``<storage>/<name>``; a local folder, ``s3://`` or ``gs://``).

        Raises:
            FileNotFoundError: no sweep there (a spec file given instead is named as such).
        """
        spec = load_sweep_spec(path)  # checks it is a sweep; a damaged stored spec is named
        return cls(spec.sweep_dir)

    @classmethod
    def run(cls, spec: str | dict, new: bool = False, quiet: bool = True, **overrides) -> Sweep:
        """Run the sweep a spec file (or a dict of its fields) describes, as ``l2d-sweep run`` does, and return it.
        ``overrides``: top-level fields to change (``name=``, ``storage=``...); ``new``: start over when its folder
        exists; ``quiet``: no progress lines (the notebook's cell stays short)."""
        from sweeps.tune.runner import run_sweep

        parsed = parse_spec(spec, "<dict>") if isinstance(spec, dict) else load_spec(spec)
        if overrides:  # the one override path (the command line's too): dotted keys reach into a section
            parsed = with_overrides(
                parsed, f"{'<dict>' if isinstance(spec, dict) else spec} (with overrides)", **overrides
            )
        run_sweep(parsed, new=new, quiet=quiet)
        return cls(parsed.sweep_dir)

    def resume(self, quiet: bool = True) -> Sweep:
        """Continue this sweep after a crash or a Ctrl-C (``l2d-sweep resume``)."""
        from sweeps.tune.runner import resume_sweep

        resume_sweep(self.path, quiet=quiet)
        return self

    def extend(self, num_samples: int, max_epochs: int | None = None, quiet: bool = True) -> Sweep:
        """Run ``num_samples`` more trials, the same study carried on (``l2d-sweep extend``)."""
        from sweeps.tune.runner import extend_sweep

        extend_sweep(self.path, num_samples, max_epochs, quiet=quiet)
        return self

    def confirm(
        self, top: int = 2, seeds: int = 3, baseline: str | None = "bce", per_method: bool = False, quiet: bool = True
    ) -> Sweep:
        """Rerun the best configurations and a baseline on fresh seeds, paired by seed (``l2d-sweep confirm``);
        :meth:`confirmation` reads the verdict."""
        from sweeps.tune.runner import confirm_sweep

        confirm_sweep(self.path, top, seeds, baseline, per_method, quiet=quiet)
        return self

    @classmethod
    def find(cls, storage: str | Location) -> tuple[list[dict], list[str]]:
        """Every sweep under a storage folder (a folder, ``s3://`` or ``gs://``; ``l2d-sweep list``), by name: each
        one's :meth:`summary`, and a line for each sweep that could not be read (one damaged sweep hides no other).

        Raises:
            FileNotFoundError: no such storage folder.
        """
        storage = Location.parse(storage, "storage")
        if not storage.is_dir():
            raise FileNotFoundError(f"{storage}: no such storage folder")
        rows, unreadable = [], []
        for child in sorted(storage.list(), key=lambda c: c.name):
            if child.is_dir() and is_sweep(child):
                try:
                    rows.append(cls.open(child).summary())
                except Exception as error:  # noqa: BLE001 - one damaged sweep does not hide the others: named
                    unreadable.append(f"{child}: {str(error).splitlines()[0] if str(error) else type(error).__name__}")
        return rows, unreadable

    @classmethod
    def compare(cls, sweeps: list) -> Any:
        """Two or more sweeps side by side (``l2d-sweep compare``): a :class:`sweeps.results.compare.Comparison`
        (each one's summary, the best of each method and pairing, the configurations two sweeps of one seed both ran
        with a paired t-interval, the spec fields that differ). ``sweeps``: folders or :class:`Sweep` objects."""
        return compare([(s if isinstance(s, Sweep) else cls.open(s)).spec for s in sweeps])

    # --- reading ----------------------------------------------------------------------------------------------------

    def results(self):
        """The results tables of the newest generation, as the command line reads them (a
        :class:`sweeps.results.SweepResults`: Arrow tables, SQL, the leaderboard, the ledger, the confirmation)."""
        return SweepResults(self.path)

    def summary(self) -> dict[str, Any]:
        """The sweep as one row of ``l2d-sweep list``: its trials by state, who drives it, its best trial, when its
        results last changed, its id."""
        return summary_row(self.spec)

    @property
    def spec(self):
        """The sweep's stored spec (a :class:`sweeps.specs.SweepSpec`)."""
        return load_sweep_spec(self.path)

    @property
    def trials(self):
        """The trials table (one row per trial), as a pandas DataFrame."""
        return self.results().trials.to_pandas()

    @property
    def epochs(self):
        """The epochs table (one row per trial and epoch), as a pandas DataFrame."""
        return self.results().epochs.to_pandas()

    def leaderboard(self, limit: int | None = 10, columns: list[str] | None = None):
        """The best trials by the spec's metric, as a DataFrame at full precision (``l2d-sweep results`` shows the
        same rows rounded): the columns of its table, or ``columns`` (the trials table's names, as in SQL);
        ``limit=None`` for every trial with a value."""
        return self.results().leaderboard(limit, columns).to_pandas()

    def best(self, metric: str | None = None) -> dict[str, Any]:
        """The best trial's row, with ``chosen_as`` saying which it is: without ``metric``, the confirmed winner's best
        run when the sweep has a confirmation stage with a winner (its mean over seeds, :meth:`confirmation`), else
        the search's best trial by the spec's metric; with ``metric`` (any objective: val_mAP, val_CF1, val_OF1,
        val_loss, latency_ms, student_params; its direction the spec's for it, else the metric's own) the search's
        best by it. Raises ValueError when no trial has a value yet, or for an unknown metric."""
        results = self.results()
        chosen_as = f"the search's best trial by {metric or results.objectives[0][0]} (one run)"
        confirmation = results.confirmation() if metric is None else None
        chosen = confirmation.chosen() if confirmation is not None else None
        if chosen is not None:
            trial_id, chosen_as = chosen
        elif metric is None:
            board = results.leaderboard(1).to_pylist()
            trial_id = board[0]["trial_id"] if board else None
        else:
            if metric not in OBJECTIVE_COLUMNS:
                raise ValueError(f"metric {metric!r}: one of {', '.join(OBJECTIVE_COLUMNS)}")
            modes = dict(results.objectives)
            mode = modes.get(metric, "min" if metric in ("val_loss", "latency_ms", "student_params") else "max")
            column = OBJECTIVE_COLUMNS[metric]
            rows = results.sql(
                f'SELECT trial_id FROM trials WHERE "{column}" IS NOT NULL AND stage = \'search\' ORDER BY "{column}" '
                f"{sql_order(mode)}, trial_id LIMIT 1"
            ).to_pylist()
            trial_id = rows[0]["trial_id"] if rows else None
        if trial_id is None:
            raise ValueError(f"{self.path}: no trial has a value yet")
        row = next(row for row in results.trials.to_pylist() if row["trial_id"] == trial_id)
        return {**row, "chosen_as": chosen_as}

    def confirmation(self):
        """The confirmation stage (:class:`sweeps.results.confirm.Confirmation`: its table, winner and verdicts); None
        when the sweep has none."""
        return self.results().confirmation()

    def teachers(self):
        """Each pairing's teacher beside its student trained alone, as a DataFrame (``results --teachers``)."""
        return self.results().teachers().to_pandas()

    def study(self):
        """The sweep's Optuna study, read-only (a remote study is copied into this process's own cache first):
        ``optuna.visualization`` and friends take it as it is."""
        return load_sweep_study(self.path, read_only=True)[1]

    def history(self, trial_id: str):
        """One trial's epoch rows, in order, as a DataFrame (raises ValueError for an unknown trial)."""
        results = self.results()
        if trial_id not in results.trials.column("trial_id").to_pylist():
            raise ValueError(f"{self.path}: no trial {trial_id!r}")
        return results.sql("SELECT * FROM epochs WHERE trial_id = ? ORDER BY epoch", [trial_id]).to_pandas()

    def sql(self, query: str, parameters: list | None = None):
        """DuckDB SQL over the views ``trials`` and ``epochs`` (read-only, sandboxed), as a DataFrame."""
        return self.results().sql(query, parameters).to_pandas()

    def pareto(self):
        """The Pareto front of the spec's objectives (val mAP against student size for one objective)."""
        return self.results().pareto().to_pandas()

    def importance(self, method: str | None = None, evaluator: str = "ped-anova") -> dict[str, tuple[dict, int]]:
        """Each searched hyperparameter's importance per method (``l2d-sweep importance``), over that method's finished
        trials: ``{method: ({hyperparameter: importance}, trials)}`` (empty importances: too few trials).
        ``method``: one method only (default: every method of the spec).

        Raises:
            sweeps.results.plots.NotEnoughData: the sweep keeps no study (a sweep from before studies were kept).
        """
        spec = self.spec
        try:
            study = load_sweep_study(self.path, read_only=True)[1]
        except FileNotFoundError as error:
            raise plots.NotEnoughData(str(error)) from None
        return {m: plots.importances(study, spec, m, evaluator) for m in ([method] if method else spec.methods)}

    def status(self):
        """Trials by state, who drives the sweep, the best so far (a :class:`sweeps.results.SweepStatus`)."""
        return sweep_status(self.path)

    def refresh(self) -> Sweep:
        """Nothing is cached: every read above reads the newest generation. Kept so a loop reads naturally."""
        return self

    # --- drawing and taking home ------------------------------------------------------------------------------------

    def plot(self, kind: str, method: str | None = None, out: str | None = None):
        """One plot of the sweep (``history``, ``parallel``, ``importance``, ``pareto``, ``rungs``: as ``l2d-sweep
        plot``) as a matplotlib Figure; with ``out``, also written there as a PNG.

        Raises:
            sweeps.results.plots.NotEnoughData: the sweep has too little data for it yet (the words ``l2d-sweep
                plot`` prints when it draws nothing and exits 0).
        """
        if kind not in plots.PLOTS:
            raise ValueError(f"unknown plot kind {kind!r}; one of {', '.join(plots.PLOTS)}")
        if out is not None:
            plots.check_png_target(out)  # refused before anything is drawn
        spec, results, study = self.spec, self.results(), None
        if plots.PLOTS[kind].study != "none":
            try:
                study = load_sweep_study(self.path, read_only=True)[1]
            except FileNotFoundError:  # a sweep from before studies were kept: the plot says what it lacks
                study = None
        figure = plots.draw(kind, results, spec, study, method)
        if out is not None:
            plots.save_figure(figure, out)
        else:  # out of pyplot's list of open figures: a loop of plots keeps no memory, a notebook shows it once
            plots.close(figure)
        return figure

    def export(
        self,
        out: str | Location,
        trial: str | None = None,
        formats: tuple[str, ...] = ("safetensors",),
        quiet: bool = True,
    ) -> dict:
        """Export a trial's best student (default: the confirmed winner's, else the best trial's) into ``out``
        (``l2d-sweep export``); returns its model card. ``quiet=False`` prints each step."""
        from sweeps.results.export import export_trial

        return export_trial(self.path, trial, out, formats, progress=(lambda _: None) if quiet else print)

    def __repr__(self) -> str:
        try:
            counts = ", ".join(f"{n} {s}" for s, n in sorted(self.status().counts.items()))
        except FileNotFoundError:
            counts = "no results yet"
        return f"Sweep({str(self.path)!r}: {counts})"
