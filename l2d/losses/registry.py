"""The method registry: a method is the student's BCE plus weighted distillation *terms*. Torch-free, so that the
command line, the spec and the results schema know every method, weight and loss part without importing torch.

Adding a method: write its term function ``(student, teacher, targets, hparams, inputs) -> {part: loss}`` in the
module of its family (``logits``, ``embedding``, ``relational``, ``feature``), then register a :class:`Term` in
:data:`TERMS` (the function's path, its parts and the weight of each) and a :class:`Method` in :data:`METHODS` (its
terms and default hyperparameters). The CLI grows a ``--<weight>`` flag, specs may search the weight, and the results
tables a column, by themselves.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

#: A backbone's number of stages -> the stage indices a term compares (ascending).
StageSelector = Callable[[int], tuple[int, ...]]


def last_stage(count: int) -> tuple[int, ...]:
    return (count - 1,)


def last_stages(number: int) -> StageSelector:
    """The last ``number`` stages of a backbone (fewer when it has no more beyond its stem, stage 0)."""
    return lambda count: tuple(range(max(1 if count > 1 else 0, count - number), count))


@dataclass(frozen=True)
class Term:
    """A group of distillation losses computed together, and the weight hyperparameter of each.

    Attributes:
        weights: each part the term returns -> the name of its weight.
        fn: ``"module:function"`` of the term, imported when first used: ``fn(student, teacher, targets, hparams,
            inputs)`` returns ``{part: unweighted loss}`` (``inputs`` a :class:`l2d.losses.criterion.TermInputs`).
        stages: for a feature-level term, the backbone stages it compares (of each model; the models then return
            them in ``ModelOutput.stages``).
        connectors: ``"module:function"`` building its trainable modules from the stages' channel counts
            (``(student channels, teacher channels, hparams) -> nn.Module``); the engine trains them with the student.
        pooled: the pooled features are appended to the stages (as ``[B, F, 1, 1]`` maps).
    """

    weights: dict[str, str]
    fn: str
    stages: StageSelector | None = None
    connectors: str | None = None
    pooled: bool = False


@dataclass(frozen=True)
class Method:
    """A distillation method: the term groups (keys of :data:`TERMS`) added to the student's BCE, and the
    defaults of its hyperparameters."""

    terms: tuple[str, ...]
    defaults: dict[str, float] = field(default_factory=dict)
    description: str = ""

    @property
    def needs_teacher(self) -> bool:
        return bool(self.terms)


_LOGITS, _EMBEDDING, _RELATIONAL, _FEATURE = (
    "l2d.losses.logits",
    "l2d.losses.embedding",
    "l2d.losses.relational",
    "l2d.losses.feature",
)
TERMS: dict[str, Term] = {
    "mld": Term({"mld": "lambda_mld"}, f"{_LOGITS}:mld_term"),
    "mld-ls": Term({"mld": "lambda_mld"}, f"{_LOGITS}:mld_ls_term"),
    "led": Term({"cd": "lambda_cd", "id": "lambda_id"}, f"{_EMBEDDING}:led_term"),
    "cd": Term({"cd": "lambda_cd"}, f"{_EMBEDDING}:cd_term"),
    "id": Term({"id": "lambda_id"}, f"{_EMBEDDING}:id_term"),
    "kd": Term({"kd": "lambda_kd"}, f"{_LOGITS}:kd_term"),
    "kd-ls": Term({"kd": "lambda_kd"}, f"{_LOGITS}:kd_ls_term"),
    "mse": Term({"mse": "lambda_mse"}, f"{_LOGITS}:mse_term"),
    "ps": Term({"ps": "lambda_ps"}, f"{_LOGITS}:ps_term"),
    "dist": Term({"dist_inter": "lambda_dist_inter", "dist_intra": "lambda_dist_intra"}, f"{_LOGITS}:dist_term"),
    "rkd": Term({"rkd": "lambda_rkd"}, f"{_RELATIONAL}:rkd_term"),
    "pkt": Term({"pkt": "lambda_pkt"}, f"{_RELATIONAL}:pkt_term"),
    "hint": Term(
        {"hint": "lambda_hint"}, f"{_FEATURE}:hint_term", stages=last_stage, connectors=f"{_FEATURE}:hint_connectors"
    ),
    "reviewkd": Term(
        {"reviewkd": "lambda_reviewkd"},
        f"{_FEATURE}:reviewkd_term",
        stages=last_stages(4),
        connectors=f"{_FEATURE}:review_connectors",
        pooled=True,
    ),
}

#: The official L2D weights (MS-COCO): the defaults, and an L2D sweep's first point, except where a dataset has its own.
OFFICIAL_WEIGHTS = {"lambda_mld": 10.0, "lambda_cd": 100.0, "lambda_id": 1000.0}
#: The label count the official weights were tuned at (MS-COCO's 80 classes, a BCE summed over them).
OFFICIAL_NUM_CLASSES = 80
#: How ``official_weights`` carries the official weights to another dataset (benchmarks/defaults.py measures
#: which of them transfer): ``official`` as they are; ``labels`` times C / 80 (the summed BCE grows with the label
#: count C); ``balanced`` times the factor that makes the weighted distillation terms, at initialisation, as large
#: as the supervised BCE (:func:`l2d.run.balanced_weights` measures it).
WEIGHT_RULES = ("official", "labels", "balanced")

METHODS: dict[str, Method] = {
    "bce": Method((), {}, "student alone, supervised BCE"),
    "kd": Method(("kd",), {"lambda_kd": 10.0, "kd_temperature": 4.0}, "vanilla KD with sigmoids (soft-target BCE)"),
    "kd-ls": Method(
        ("kd-ls",),
        {"lambda_kd": 10.0, "kd_temperature": 4.0},
        "KD on standardised logits (logit standardisation, Sun et al. 2024)",
    ),
    "mse": Method(("mse",), {"lambda_mse": 1.0}, "MSE between logits"),
    "ps": Method(("ps",), {"lambda_ps": 10.0}, "partial softmax KD"),
    "dist": Method(
        ("dist",),
        {"lambda_dist_inter": 20.0, "lambda_dist_intra": 20.0, "dist_temperature": 1.0},
        "DIST (Huang et al. 2022) on sigmoids: inter- and intra-class Pearson relations",
    ),
    "rkd": Method(("rkd",), {"lambda_rkd": 1.0}, "relational KD on pooled features (distance 10, angle 10)"),
    "pkt": Method(("pkt",), {"lambda_pkt": 30000.0}, "probabilistic knowledge transfer on pooled features"),
    "mld": Method(("mld",), {"lambda_mld": 10.0}, "L2D's multi-label logits distillation alone"),
    "mld-ls": Method(
        ("mld-ls",),
        {"lambda_mld": 10.0, "mld_temperature": 1.0},
        "MLD on standardised logits (logit standardisation, Sun et al. 2024)",
    ),
    "cd": Method(("cd",), {"lambda_cd": 100.0}, "L2D's class-aware embedding loss alone (ablation)"),
    "id": Method(("id",), {"lambda_id": 1000.0}, "L2D's instance-aware embedding loss alone (ablation)"),
    "led": Method(("led",), {"lambda_cd": 100.0, "lambda_id": 1000.0}, "L2D's CD + ID embedding losses alone"),
    "l2d": Method(("mld", "led"), dict(OFFICIAL_WEIGHTS), "L2D: MLD + CD + ID"),
    "hint": Method(
        ("hint",),
        {"lambda_hint": 100.0},
        "FitNet-style hint on the last backbone stage (trainable 1x1 conv + BN connector)",
    ),
    "reviewkd": Method(
        ("reviewkd",),
        {"lambda_reviewkd": 20.0},
        "ReviewKD: attention-based fusion of the last 4 stages and the pooled features, hierarchical context loss",
    ),
}

#: Every hyperparameter a method has (the learning rate aside), sorted: CLI flags, spec keys, result columns.
HYPERPARAMETERS = tuple(sorted({name for method in METHODS.values() for name in method.defaults}))


def is_temperature(name: str) -> bool:
    return name.endswith("_temperature")


def official_weights(
    method: str, rule: str = "official", num_classes: int = OFFICIAL_NUM_CLASSES, factor: float | None = None
) -> dict[str, float]:
    """The official weights of an L2D-family method (``mld``, ``led``, ``l2d``), carried over by ``rule``.

    Args:
        factor: the ``balanced`` rule's measured factor (:func:`l2d.run.balanced_weights`).

    Raises:
        ValueError: an unknown rule, a method without official weights, or ``balanced`` without its factor.
    """
    if rule not in WEIGHT_RULES:
        raise ValueError(f"unknown weight rule {rule!r}; allowed: {', '.join(WEIGHT_RULES)}")
    if method not in ("mld", "led", "l2d"):
        raise ValueError(f"method {method!r} has no official weights (the L2D family has: mld, led, l2d)")
    weights = {name: OFFICIAL_WEIGHTS[name] for name in METHODS[method].defaults}
    scale = {"official": 1.0, "labels": num_classes / OFFICIAL_NUM_CLASSES}.get(rule, factor)
    if scale is None:
        raise ValueError("the balanced rule needs its measured factor (l2d.run.balanced_weights)")
    return {name: value * scale for name, value in weights.items()}


def method_hparams(method: str, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """The hyperparameters of ``method``: its defaults updated with ``overrides``.

    Raises:
        ValueError: unknown method, a hyperparameter the method does not have, or a negative value (a zero
            temperature).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known methods: {', '.join(METHODS)}")
    hparams = dict(METHODS[method].defaults)
    for name, value in (overrides or {}).items():
        if name not in hparams:
            allowed = ", ".join(hparams) or "none"
            raise ValueError(f"method {method!r} has no hyperparameter {name!r} (it has: {allowed})")
        value = float(value)
        if not math.isfinite(value) or value < 0 or (is_temperature(name) and value == 0):
            raise ValueError(f"{name} must be a finite number >= 0 (> 0 for a temperature), got {value}")
        hparams[name] = value
    return hparams


def part_weights(method: str, hparams: Mapping[str, float] | None = None) -> dict[str, float]:
    """The weight of each loss part of ``method`` in its total (``bce`` 1, ``mld`` lambda_mld, ...), with the
    method's defaults for the hyperparameters ``hparams`` leaves out."""
    resolved = method_hparams(method, hparams)
    weights = {"bce": 1.0}
    for name in METHODS[method].terms:
        weights.update({part: resolved[weight] for part, weight in TERMS[name].weights.items()})
    return weights


def loss_parts(method: str) -> tuple[str, ...]:
    """Names of the parts a method's loss reports (``bce`` first)."""
    return ("bce", *(part for name in METHODS[method].terms for part in TERMS[name].weights))


_RESOLVED: dict[str, Callable] = {}


def resolve_function(path: str) -> Callable:
    """The function a term names by ``"module:function"`` (imported once)."""
    if path not in _RESOLVED:
        module, _, name = path.partition(":")
        _RESOLVED[path] = getattr(importlib.import_module(module), name)
    return _RESOLVED[path]
