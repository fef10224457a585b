"""sweeps: the platform around :mod:`l2d`: sweeps on Ray Tune + Ray Train + Optuna + ASHA, results in Parquet, the CLI.

The package is built in floors, one folder each (one module for the facade), bottom first (:data:`FLOORS`). A module
imports only from the floors below its own and, within its floor, from the modules its folder lists before it (each
folder's ``MODULES``, in its ``__init__``, whose docstring says what the floor owns and what it may import).
``tests/test_layers.py`` reads the folders and holds every import to this, imports inside functions included; the one
edge up is the lazy ``from sweeps import Sweep`` below (marked ``# layer: public API``).

- ``core``: leaves every floor uses (modes and trial states, typed rules and the YAML reader, failpoints, Ctrl-C,
  progress lines)
- ``folder``: a sweep folder and its safety (the marker and trial ids, the lease, checkpoints, ``run.json``, the
  pickles' signatures)
- ``specs``: the spec language and the spec a sweep folder stores
- ``results``: the Parquet tables, SQL, status, the paired statistics and the confirmation verdict, plots, export
- ``search``: the search space and the Optuna study (Optuna only: no Ray)
- ``tune``: where Ray lives: the Tune adapters (searcher, ASHA, trial, teacher phase, callback), one experiment,
  and the drivers (run / resume / extend / confirm)
- ``api``: :class:`~sweeps.api.Sweep`, the one way to open, read, plot, compare and export a sweep
- ``cli``: the command line: parsing, and printers over ``api``

No module keeps old names for pickles: a sweep whose Tune state names a module or class of an older version continues
from its results tables and checkpoints (see docs/reliability.md).
"""

#: The floors, bottom first: sub-packages (folders), or the facade module ``api``.
FLOORS = ["core", "folder", "specs", "results", "search", "tune", "api", "cli"]


def __getattr__(name: str):
    """``from sweeps import Sweep``: the notebook API (:mod:`sweeps.api`), imported on first use, so that importing
    the package stays light."""
    if name == "Sweep":
        from sweeps.api import Sweep  # layer: public API (a lazy re-export, not a dependency of the floor)

        return Sweep
    raise AttributeError(f"module 'sweeps' has no attribute {name!r}")
