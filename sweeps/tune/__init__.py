"""Where Ray lives: every private Ray and Optuna API in one module (``_fences``); the Tune adapters: experiment
tracking (``tracking``), ASHA that survives a restore (``scheduler``), Tune's searcher over the study (``searcher``),
one trial, in-process or on a TorchTrainer (``trial``), the teacher phase (``teacher_phase``) and the driver's
bookkeeping (``callback``); one Tune experiment wired from them (``experiment``); and the drivers, one lifecycle for
run, resume, extend and confirm (``runner``). Imports every floor below it.
"""

#: This floor's modules, bottom first (``__init__``: this package itself).
MODULES = [
    "__init__",
    "_fences",
    "tracking",
    "scheduler",
    "searcher",
    "trial",
    "teacher_phase",
    "callback",
    "experiment",
    "runner",
]
