"""The search space of a sweep, encoded for Optuna and decoded for a trial, in one place.

Optuna sees a define-by-run space (:class:`DefineByRunSpace`): ``pairing`` (the teacher), ``student@<teacher>``
(conditional on the pairing), ``method``, then the searched hyperparameters of that method and ``lr``; fixed
values come back as constants merged into the trial's config. :func:`decode` turns such a config back into plain
``teacher`` / ``student`` / ``method`` / hyperparameters, :func:`encode` a recorded trial back into Optuna's
parameters (warm starts, reconciling the study), and :func:`trial_run` into the trial's :class:`~l2d.run.RunConfig`.
No Ray here: Tune's search algorithm over this space is built in :mod:`sweeps.tune.searcher`; the study and its sampler
(TPE, NSGA-II or random, seeded, the dataset's default L2D weights first) live in :mod:`sweeps.search.study`.

A new sampler goes in :func:`sweeps.search.study.build_sampler` (a ``budget.searcher`` value in :mod:`sweeps.specs`); a
new kind of choice in the space goes in :class:`DefineByRunSpace` and :func:`decode`, nowhere else.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import optuna

from l2d.losses import METHODS
from l2d.run import default_hparams
from sweeps.specs import Range, SweepSpec

if TYPE_CHECKING:
    from l2d.run import RunConfig

#: Keys of a decoded config that are not hyperparameters of the run.
STRUCTURE_KEYS = ("teacher", "student", "method")
#: Keys a confirmation run's config adds (:mod:`sweeps.results.confirm`): its stage, its student's seed, and the search
#: trial whose configuration it reruns (none for the baseline). A search trial's config has none of them.
CONFIRM_KEYS = ("stage", "seed", "confirms")


class DefineByRunSpace:
    """Optuna define-by-run space: pairing -> student, method -> that method's weights (a picklable callable).

    Param names: ``pairing`` (the teacher), ``student@<teacher>`` (conditional on the pairing), ``method``, and
    the searched hyperparameters of the chosen method (and ``lr``). Fixed values come back as constants.
    """

    def __init__(self, spec: SweepSpec):
        self.pairings = [(p.teacher, list(p.students)) for p in spec.pairings]
        self.methods = list(spec.methods)
        self.dataset = spec.dataset.name
        self.search_space = {k: asdict(v) if isinstance(v, Range) else v for k, v in spec.search_space.items()}

    def __call__(self, trial) -> dict:
        teacher = trial.suggest_categorical("pairing", [t for t, _ in self.pairings])
        trial.suggest_categorical(f"student@{teacher}", dict(self.pairings)[teacher])
        method = trial.suggest_categorical("method", self.methods)
        constants = {}
        for name in ("lr", *METHODS[method].defaults):
            value = self.search_space.get(name)
            if isinstance(value, dict):
                trial.suggest_float(name, value["low"], value["high"], log=value["log"])
            elif value is not None:
                constants[name] = value
            elif name != "lr":  # a searcher pickled before datasets had weights of their own has no .dataset
                constants[name] = default_hparams(getattr(self, "dataset", ""), method)[name]
        return constants


def first_points(spec: SweepSpec) -> list[dict]:
    """The spec's ``first_points``; without them, L2D's default weights on the spec's dataset (the official ones, or
    the dataset's own: see :func:`l2d.run.default_hparams`), or the first method's, on the first pairing: evaluated
    first. A weight whose default lies outside its searched range is sampled instead."""
    if spec.first_points:  # the spec's own, checked against its space when it was parsed
        return [
            {
                "pairing": p["teacher"],
                f"student@{p['teacher']}": p["student"],
                "method": p["method"],
                **{k: v for k, v in p.items() if k not in ("teacher", "student", "method")},
            }
            for p in spec.first_points
        ]
    method = "l2d" if "l2d" in spec.methods else spec.methods[0]
    teacher, students = spec.pairings[0].teacher, spec.pairings[0].students
    point = {"pairing": teacher, f"student@{teacher}": students[0], "method": method}
    for name, value in default_hparams(spec.dataset.name, method).items():
        searched = spec.search_space.get(name)
        if isinstance(searched, Range) and searched.low <= value <= searched.high:
            point[name] = value
    return [point]


def decode(config: dict[str, Any]) -> dict[str, Any]:
    """A Tune config (define-by-run names such as ``student@resnet34``) as plain teacher/student/method/weights."""
    result = {k: v for k, v in config.items() if not k.startswith("student@") and k != "pairing"}
    if "pairing" in config:
        result["teacher"] = config["pairing"]
        result["student"] = config[f"student@{config['pairing']}"]
    return result


def trial_hparams(config: dict) -> tuple[dict, float | None]:
    """Split a decoded config into the method's loss hyperparameters and the learning rate (None: the default)."""
    method = METHODS[config["method"]]
    hparams = {name: float(config[name]) for name in method.defaults if name in config}
    lr = config.get("lr")
    return hparams, float(lr) if lr is not None else None


def trial_run(base: RunConfig, config: dict, weights: dict | None = None) -> RunConfig:
    """The run of one trial: the sweep's base run with the trial's pairing, method, loss weights and learning rate,
    each backbone's initial weights from ``weights`` (the spec's), and a confirmation run's student seed."""
    decoded = decode(config)
    hparams, lr = trial_hparams(decoded)
    weights = weights or {}
    return base.replace(
        teacher=decoded["teacher"],
        student=decoded["student"],
        method=decoded["method"],
        hparams=hparams,
        lr=lr,
        teacher_weights=weights.get(decoded["teacher"]),
        student_weights=weights.get(decoded["student"]),
        student_seed=int(decoded["seed"]) if decoded.get("seed") is not None else None,
    )


def encode(spec, decoded: dict) -> tuple[dict, dict] | None:
    """A decoded trial config (teacher, student, method, weights, lr) as Optuna parameters and distributions of
    ``spec``'s space; None when it does not fit that space (another pairing or method, a value outside a range,
    a weight fixed to another value)."""
    teachers = [p.teacher for p in spec.pairings]
    students = {p.teacher: list(p.students) for p in spec.pairings}
    teacher, student, method = decoded.get("teacher"), decoded.get("student"), decoded.get("method")
    if teacher not in teachers or student not in students[teacher] or method not in spec.methods:
        return None
    params = {"pairing": teacher, f"student@{teacher}": student, "method": method}
    dists = {
        "pairing": optuna.distributions.CategoricalDistribution(teachers),
        f"student@{teacher}": optuna.distributions.CategoricalDistribution(students[teacher]),
        "method": optuna.distributions.CategoricalDistribution(list(spec.methods)),
    }
    for name in ("lr", *METHODS[method].defaults):
        searched = spec.search_space.get(name)
        value = decoded.get(name)
        if isinstance(searched, Range):
            if value is None or not searched.low <= float(value) <= searched.high:
                return None
            params[name] = float(value)
            dists[name] = optuna.distributions.FloatDistribution(searched.low, searched.high, log=searched.log)
        else:
            expected = searched if searched is not None else default_hparams(spec.dataset.name, method).get(name)
            if (expected is None) != (value is None) or (
                expected is not None and not math.isclose(float(expected), float(value), rel_tol=1e-9)
            ):
                return None
    return params, dists
