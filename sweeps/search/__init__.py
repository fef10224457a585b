"""The search: the define-by-run space, encoded for Optuna and decoded into a trial's run (``space``), and the sweep's
Optuna study, its storage and its read-only copies (``study``). Optuna only, no Ray. Imports ``core``, ``folder``,
``specs`` and ``results``.
"""

#: This floor's modules, bottom first (``__init__``: this package itself).
MODULES = ["__init__", "space", "study"]
