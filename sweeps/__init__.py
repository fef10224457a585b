"""sweeps: the platform around :mod:`l2d`: sweeps on Ray Tune + Ray Train + Optuna + ASHA, results in Parquet, the CLI.

Floors, bottom first; a module imports only from the floors below it (and, within a floor, from the modules listed
before it). ``tests/test_layers.py`` holds this, imports inside functions included; the one edge up is the lazy
``from sweeps import Sweep`` (marked ``# layer: public API``). No module keeps old names for pickles: a sweep whose
Tune state names a module or class of an older version continues from its results tables and checkpoints (see
docs/reliability.md).

- leaves: ``vocab`` (modes, trial states), ``_checks`` (typed rules, gathered errors, the YAML reader), ``_faults``
  (failpoints), ``folder`` (marker, lease, trial ids), ``checkpoints``, ``provenance`` (run.json), ``trust`` (the
  pickles' signatures), ``interrupt`` (Ctrl-C and SIGTERM in a driver), ``stats`` (paired intervals, Holm,
  detectable effects)
- spec: ``spec`` (the typed YAML spec)
- search space: ``search`` (define-by-run space, encode/decode; no Ray)
- records: ``stored`` (a sweep folder's stored spec), ``results`` (the Parquet tables, SQL, status, and
  ``results.confirm``: the confirmation stage's plan and its paired verdict), ``plots``, ``export``
- study: ``study`` (the Optuna study; Optuna only)
- Tune adapters (where Ray lives): ``_fences`` (every private Ray/Optuna API, in one place), ``tracking``,
  ``scheduler``, ``searcher``, ``trial``, ``teacher_phase``, ``callback``
- experiment: ``experiment`` (wires one Tune experiment; hands the callback its collaborators)
- drivers: ``runner`` (run / resume / extend / run-or-resume: one lifecycle)
- cli: ``cli`` (parse and print)
"""

#: The layer map (see the docstring); ``tests/test_layers.py`` checks every import against it.
LAYERS = [
    [
        "sweeps",
        "sweeps.vocab",
        "sweeps._checks",
        "sweeps._faults",
        "sweeps.lease",
        "sweeps.folder",
        "sweeps.checkpoints",
        "sweeps.provenance",
        "sweeps.trust",
        "sweeps.progress",
        "sweeps.interrupt",
        "sweeps.stats",
    ],
    ["sweeps.spec"],
    ["sweeps.search"],
    [
        "sweeps.stored",
        "sweeps.results.schema",
        "sweeps.results.store",
        "sweeps.results.writer",
        "sweeps.results.confirm",
        "sweeps.results.teachers",
        "sweeps.results.reader",
        "sweeps.results",
        "sweeps.plots",
        "sweeps.export",
    ],
    ["sweeps.study"],
    [
        "sweeps._fences",
        "sweeps.tracking",
        "sweeps.scheduler",
        "sweeps.searcher",
        "sweeps.trial",
        "sweeps.teacher_phase",
        "sweeps.callback",
    ],
    ["sweeps.experiment"],
    ["sweeps.runner", "sweeps.api"],
    [
        "sweeps.cli._common",
        "sweeps.cli.single",
        "sweeps.cli.sweep",
        "sweeps.cli.specs",
        "sweeps.cli.weights",
        "sweeps.cli.analysis",
        "sweeps.cli.completion",
        "sweeps.cli",
        "sweeps.cli.__main__",
    ],
]


def __getattr__(name: str):
    """``from sweeps import Sweep``: the notebook API (:mod:`sweeps.api`), imported on first use, so that importing
    the package stays light."""
    if name == "Sweep":
        from sweeps.api import Sweep  # layer: public API (a lazy re-export, not a dependency of the floor)

        return Sweep
    raise AttributeError(f"module 'sweeps' has no attribute {name!r}")
