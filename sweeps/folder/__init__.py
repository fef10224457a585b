"""A sweep folder and its safety: the driver's lease, a compare-and-swap on a file (``lease``); the marker that makes a
folder a sweep, its identity and trial ids, and starting one over without touching a folder that is not provably a
sweep (``marker``); the trials' epoch checkpoints (``checkpoints``); every run's record in ``run.json``
(``provenance``); the keyed signatures of the pickles a resume loads (``trust``). Imports only ``core``.
"""

#: This floor's modules, bottom first (``__init__``: this package itself).
MODULES = ["__init__", "lease", "marker", "checkpoints", "provenance", "trust"]
