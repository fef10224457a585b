"""Losses of L2D and of the baselines it is compared with, and the method registry.

Notation (as in the paper): B images, C labels, D embedding size; ``y`` in {0, 1}^{BxC}; ``zS``/``zT`` the
student/teacher logits; ``ES``/``ET`` the label-wise embeddings. Every function detaches the teacher side
and computes in float32, so half-precision inputs (AMP) are safe.

Reductions follow the official L2D code, because the default weights were tuned against them: the
supervised BCE is summed over batch and labels; MLD, KD, MSE and PS are summed over labels and averaged
over the batch; CD and ID sum the structure loss ``H`` of every set with at least two members.

One module per family: :mod:`~l2d.losses.logits` (BCE, MLD, KD, MSE, PS, DIST, logit standardisation),
:mod:`~l2d.losses.embedding` (CD, ID), :mod:`~l2d.losses.relational` (RKD, PKT), :mod:`~l2d.losses.feature`
(hint, ReviewKD); :mod:`~l2d.losses.registry` (torch-free) holds the methods and their terms,
:mod:`~l2d.losses.criterion` the training loss built from them. The registry's names are importable without torch;
the loss functions are imported from their family modules on first use.
"""

from __future__ import annotations

import importlib

from l2d.losses.registry import (
    HYPERPARAMETERS,
    METHODS,
    OFFICIAL_NUM_CLASSES,
    OFFICIAL_WEIGHTS,
    TERMS,
    WEIGHT_RULES,
    Method,
    Term,
    is_temperature,
    last_stage,
    last_stages,
    loss_parts,
    method_hparams,
    official_weights,
    part_weights,
)

#: Public names of the torch modules, loaded when first asked for (``from l2d.losses import mld_loss`` imports torch;
#: ``from l2d.losses import METHODS`` does not).
_LAZY = {
    "l2d.losses.logits": (
        "bce_loss",
        "mld_loss",
        "kd_loss",
        "mse_loss",
        "ps_loss",
        "dist_losses",
        "standardize_logits",
    ),
    "l2d.losses.embedding": ("cd_loss", "id_loss", "cd_id_losses"),
    "l2d.losses.relational": ("rkd_loss", "pkt_loss"),
    "l2d.losses.feature": ("hint_loss", "hcl_loss", "HintConnector", "AttentionFusion", "ReviewConnector"),
    "l2d.losses.criterion": ("DistillationCriterion", "TermInputs", "distillation_loss"),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}

__all__ = [
    "HYPERPARAMETERS",
    "METHODS",
    "OFFICIAL_NUM_CLASSES",
    "OFFICIAL_WEIGHTS",
    "TERMS",
    "WEIGHT_RULES",
    "Method",
    "is_temperature",
    "Term",
    "last_stage",
    "last_stages",
    "loss_parts",
    "method_hparams",
    "official_weights",
    "part_weights",
    *_WHERE,
]


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
