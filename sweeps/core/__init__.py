"""The leaves every floor uses: the vocabulary of modes and trial states (``vocab``), typed rules, gathered errors and
the bounded YAML reader (``checks``), failpoints for the fault tests (``faults``), Ctrl-C and SIGTERM in a driver
(``interrupt``) and the live progress lines (``progress``). Imports nothing of ``sweeps``.
"""

#: This floor's modules, bottom first (``__init__``: this package itself).
MODULES = ["__init__", "vocab", "checks", "faults", "interrupt", "progress"]
