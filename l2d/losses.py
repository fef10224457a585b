"""Losses of L2D and of the baselines it is compared with, and the method registry.

Notation (as in the paper): B images, C labels, D embedding size; ``y`` in {0, 1}^{BxC}; ``zS``/``zT`` the
student/teacher logits; ``ES``/``ET`` the label-wise embeddings. Every function detaches the teacher side
and computes in float32, so half-precision inputs (AMP) are safe.

Reductions follow the official L2D code, because the default weights were tuned against them: the
supervised BCE is summed over batch and labels; MLD, KD, MSE and PS are summed over labels and averaged
over the batch; CD and ID sum the structure loss ``H`` of every set with at least two members.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from l2d.models import ModelOutput

_PROB_EPS = 1e-8  # clamp of sigmoid probabilities in MLD (official value)
_LOG_PROB_MIN = math.log(_PROB_EPS)
_LOG_PROB_MAX = math.log1p(-_PROB_EPS)
_SQ_DIST_EPS = 1e-12  # clamp of squared distances before the square root (official value)


def _no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


def bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Supervised binary cross-entropy, summed over batch and labels (the official convention)."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="sum")


def mld_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Multi-label logits distillation: one binary KL divergence per label, no temperature.

    ``L_MLD = (1/B) sum_{i,k} [pT log(pT/pS) + (1-pT) log((1-pT)/(1-pS))]`` with ``p = clamp(sigmoid(z),
    1e-8, 1-1e-8)``. The clamp is applied in log space (``log p = clamp(logsigmoid(z))``), which is the same
    function but does not round ``1 - 1e-8`` to 1 in float32.
    """
    batch = student_logits.shape[0]
    with _no_autocast(student_logits.device):
        z_student = student_logits.float()
        z_teacher = teacher_logits.detach().float()
        log_ps = F.logsigmoid(z_student).clamp(_LOG_PROB_MIN, _LOG_PROB_MAX)
        log_1m_ps = F.logsigmoid(-z_student).clamp(_LOG_PROB_MIN, _LOG_PROB_MAX)
        log_pt = F.logsigmoid(z_teacher).clamp(_LOG_PROB_MIN, _LOG_PROB_MAX)
        log_1m_pt = F.logsigmoid(-z_teacher).clamp(_LOG_PROB_MIN, _LOG_PROB_MAX)
        divergence = log_pt.exp() * (log_pt - log_ps) + log_1m_pt.exp() * (log_1m_pt - log_1m_ps)
        return divergence.sum() / max(batch, 1)


class _SquaredDistances(torch.autograd.Function):
    """``sq[s, a, b] = ||x_sa - x_sb||^2`` via the Gram matrix, with a hand-written backward.

    Autograd through ``|a|^2 + |b|^2 - 2 a.b`` runs two transposed batched matmuls and several full-size adds;
    the closed form ``d sq / d x_a = 2 sum_b (g_ab + g_ba)(x_a - x_b)`` needs one ``[m, m] x [m, D]`` matmul.
    """

    @staticmethod
    def forward(ctx, vectors: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(vectors)
        squared_norms = vectors.pow(2).sum(-1)
        return squared_norms.unsqueeze(2) + squared_norms.unsqueeze(1) - 2 * vectors @ vectors.transpose(1, 2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (vectors,) = ctx.saved_tensors
        symmetric = grad + grad.transpose(1, 2)
        return 2 * (symmetric.sum(-1, keepdim=True) * vectors - symmetric @ vectors)


def _distance_structure(vectors: torch.Tensor, pairs: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """``phi`` of each padded set: pairwise distances divided by their off-diagonal mean.

    Args:
        vectors: ``[S, n, D]`` S sets of up to n vectors (float32).
        pairs: ``[S, n, n]`` True for ordered pairs (a != b) of members of the same set.
        sizes: ``[S]`` members per set.

    Returns:
        ``[S, n, n]``, zero outside ``pairs``.
    """
    squared = _SquaredDistances.apply(vectors)
    # Padding gets a harmless 1 before the sqrt, so no NaN gradient leaks from it.
    distances = torch.where(pairs, squared.clamp_min(_SQ_DIST_EPS), torch.ones_like(squared)).sqrt()
    distances = torch.where(pairs, distances, torch.zeros_like(distances))
    num_pairs = (sizes * (sizes - 1)).clamp_min(1)
    mean = distances.sum((1, 2)) / num_pairs
    return distances / mean.clamp_min(_SQ_DIST_EPS)[:, None, None]


def _label_set_losses(
    student_embeddings: torch.Tensor,
    teacher_embeddings: torch.Tensor,
    targets: torch.Tensor,
    groupings: tuple[str, ...],
) -> list[torch.Tensor]:
    """``sum_s H(ES_s, ET_s)`` over the sets with >= 2 members, for each grouping of the positive embeddings.

    Both CD and ID are built from the same vectors, the positive label-wise embeddings ``{E_ik : y_ik = 1}``,
    grouped by class (``"class"``: CD) or by image (``"image"``: ID). Real label sets are small (COCO: ~2.9
    labels per image), so the positives are gathered once with one ``index_select`` (no full-size copy,
    forward or backward), and each grouping is a padded ``[S, m]`` index into them, ``m`` the largest set.
    ``H(S, T) = sum_ab smoothL1(phi(S)_ab, phi(T)_ab) / n``.
    """
    batch, classes, dim = student_embeddings.shape
    with _no_autocast(student_embeddings.device):
        positives = targets.bool()
        flat_positives = positives.flatten().nonzero().squeeze(1)
        student = student_embeddings.reshape(-1, dim).index_select(0, flat_positives).float()
        teacher = teacher_embeddings.detach().reshape(-1, dim).index_select(0, flat_positives).float()
        rank = (positives.flatten().long().cumsum(0) - 1).view(batch, classes)  # row of each positive in `student`
        results = []
        for grouping in groupings:
            members, ranks = (positives.t(), rank.t()) if grouping == "class" else (positives, rank)
            sizes = members.sum(1)
            keep = sizes >= 2
            members, ranks, sizes = members[keep], ranks[keep], sizes[keep]
            width = int(sizes.max()) if sizes.numel() else 0
            # A stable sort moves each set's members to its first slots; the padding is masked below.
            order = torch.sort((~members).to(torch.int8), dim=1, stable=True).indices[:, :width]
            index = ranks.gather(1, order).clamp_min(0)
            shape = (*index.shape, dim)
            members = members.gather(1, order)
            not_self = ~torch.eye(width, dtype=torch.bool, device=members.device)
            pairs = members.unsqueeze(2) & members.unsqueeze(1) & not_self
            with torch.no_grad():
                teacher_structure = _distance_structure(teacher.index_select(0, index.flatten()).view(shape), pairs, sizes)
            # index_select, not student[index]: its backward is an index_add, much cheaper than an index_put.
            student_structure = _distance_structure(student.index_select(0, index.flatten()).view(shape), pairs, sizes)
            # Both structures are 0 off `pairs`, so padding adds exactly 0.
            huber = F.smooth_l1_loss(student_structure, teacher_structure, reduction="none", beta=1.0)
            results.append((huber.sum((1, 2)) / sizes).sum())
        return results


def cd_loss(student_embeddings: torch.Tensor, teacher_embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Class-aware label-wise embedding distillation.

    ``L_CD = sum_k H(ES_k, ET_k)`` where ``ES_k = {ES_ik : y_ik = 1}`` over the images i of the batch, for
    every class k with at least two positives (a class with fewer contributes 0).
    """
    return _label_set_losses(student_embeddings, teacher_embeddings, targets, ("class",))[0]


def id_loss(student_embeddings: torch.Tensor, teacher_embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Instance-aware label-wise embedding distillation.

    ``L_ID = sum_i H(ES_i, ET_i)`` where ``ES_i = {ES_ik : y_ik = 1}`` over the labels k of image i, for every
    image with at least two positive labels.
    """
    return _label_set_losses(student_embeddings, teacher_embeddings, targets, ("image",))[0]


def cd_id_losses(
    student_embeddings: torch.Tensor, teacher_embeddings: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L_CD, L_ID)`` from one gather of the positive embeddings: what L2D and LED train with."""
    cd, instance = _label_set_losses(student_embeddings, teacher_embeddings, targets, ("class", "image"))
    return cd, instance


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Vanilla KD adapted to sigmoids: BCE against the teacher's softened probabilities.

    ``L_KD = T^2 / B * sum_{i,k} BCE(sigmoid(zS/T), sigmoid(zT/T))``; the ``T^2`` keeps gradients on the
    same scale across temperatures, as in Hinton et al.
    """
    if temperature <= 0:
        raise ValueError(f"KD temperature must be > 0, got {temperature}")
    with _no_autocast(student_logits.device):
        soft_targets = torch.sigmoid(teacher_logits.detach().float() / temperature)
        loss = F.binary_cross_entropy_with_logits(student_logits.float() / temperature, soft_targets, reduction="sum")
        return loss * temperature**2 / max(student_logits.shape[0], 1)


def mse_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Squared error between logits, summed over labels, averaged over the batch."""
    difference = student_logits.float() - teacher_logits.detach().float()
    return difference.pow(2).sum() / max(student_logits.shape[0], 1)


def ps_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Partial softmax distillation.

    For each positive label k of image i, a softmax over ``[the negative logits of image i, z_ik]`` for the
    teacher and the student; the loss is ``KL(teacher || student)`` summed over those distributions and
    averaged over the batch.
    """
    with _no_autocast(student_logits.device):
        positive = targets.bool()
        negative = ~positive
        count = positive.shape[1]
        # support[i, k, j]: label j is in the distribution of (image i, positive label k).
        own = torch.eye(count, dtype=torch.bool, device=positive.device).unsqueeze(0)
        support = (negative.unsqueeze(1) | own) & positive.unsqueeze(2)
        fill = torch.where(positive, float("-inf"), 0.0).unsqueeze(2)

        def log_probs(logits: torch.Tensor) -> torch.Tensor:
            expanded = logits.float().unsqueeze(1).expand(-1, count, -1)
            # Rows of negative labels have an empty support: fill them with 0, not -inf, so that the
            # logsumexp's backward (a softmax) stays finite; they are cleared below anyway.
            masked = torch.where(support, expanded, fill)
            result = masked - torch.logsumexp(masked, dim=2, keepdim=True)
            return result.masked_fill(~support, 0.0)

        log_ps = log_probs(student_logits)
        log_pt = log_probs(teacher_logits.detach())
        divergence = torch.where(support, log_pt.exp() * (log_pt - log_ps), torch.zeros_like(log_ps))
        return divergence.sum() / max(student_logits.shape[0], 1)


def rkd_loss(
    student_features: torch.Tensor,
    teacher_features: torch.Tensor,
    distance_weight: float = 10.0,
    angle_weight: float = 10.0,
) -> torch.Tensor:
    """Relational KD (Park et al., 2019) on pooled features: distance-wise + angle-wise Huber losses, as the
    official L2D code computes them.

    The distance term compares mean-normalized pairwise distances (``sum_ab Huber / B``, the official reduction);
    the angle term the cosines of the angles formed by every triplet (averaged over its ``B^3`` entries). Weights 10
    and 10 are the official L2D code's (the RKD paper used 25 and 50).
    """
    with _no_autocast(student_features.device):
        student = student_features.float()
        teacher = teacher_features.detach().float()
        batch = student.shape[0]
        if batch < 2:
            return student.sum() * 0.0
        members = torch.ones(1, batch, dtype=torch.bool, device=student.device)
        sizes = members.sum(1)
        pairs = ~torch.eye(batch, dtype=torch.bool, device=student.device).unsqueeze(0)
        with torch.no_grad():
            teacher_structure = _distance_structure(teacher.unsqueeze(0), pairs, sizes)
        student_structure = _distance_structure(student.unsqueeze(0), pairs, sizes)
        distance = F.smooth_l1_loss(student_structure, teacher_structure, reduction="sum") / batch

        def cosines(x: torch.Tensor) -> torch.Tensor:
            directions = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)
            return directions @ directions.transpose(1, 2)

        with torch.no_grad():
            teacher_angles = cosines(teacher)
        angle = F.smooth_l1_loss(cosines(student), teacher_angles)
        return distance_weight * distance + angle_weight * angle


def pkt_loss(student_features: torch.Tensor, teacher_features: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas, 2018) on pooled features.

    Cosine similarities mapped to [0, 1] and normalized per row into conditional probabilities; the loss is
    ``KL(teacher || student)`` averaged over all B x B entries.
    """
    with _no_autocast(student_features.device):

        def conditional(x: torch.Tensor) -> torch.Tensor:
            unit = F.normalize(x.float(), p=2, dim=1, eps=eps)
            similarity = (unit @ unit.t() + 1.0) / 2.0
            return similarity / similarity.sum(dim=1, keepdim=True)

        student = conditional(student_features)
        with torch.no_grad():
            teacher = conditional(teacher_features.detach())
        if student.numel() == 0:
            return student.sum()
        return (teacher * torch.log((teacher + eps) / (student + eps))).mean()


# ---------------------------------------------------------------------------------------------------------------
# Feature-level losses: they compare intermediate backbone stages through trainable connectors.

class HintConnector(nn.Module):
    """FitNets' regressor: a 1x1 convolution + BatchNorm from the student's stage channels to the teacher's."""

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)
        self.norm = nn.BatchNorm2d(teacher_channels)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(feature_map))


def hint_loss(student_map: torch.Tensor, teacher_map: torch.Tensor, connector: nn.Module) -> torch.Tensor:
    """FitNet-style hint: ``mean((connector(F_S) - F_T)^2)`` over all elements of the teacher's stage map.

    When the two maps differ in spatial size (backbones of different strides), the larger is average-pooled to
    the smaller's size first.
    """
    projected = connector(student_map)
    with _no_autocast(projected.device):
        projected, target = projected.float(), teacher_map.detach().float()
        size = (min(projected.shape[-2], target.shape[-2]), min(projected.shape[-1], target.shape[-1]))
        if projected.shape[-2:] != size:
            projected = F.adaptive_avg_pool2d(projected, size)
        if target.shape[-2:] != size:
            target = F.adaptive_avg_pool2d(target, size)
        return F.mse_loss(projected, target)


class AttentionFusion(nn.Module):
    """ReviewKD's attention-based fusion (ABF, Chen et al. 2021): a student feature reduced to ``mid`` channels and,
    but for the deepest, fused with the residual from the deeper level (upsampled) through two attention maps; the
    result mapped to the teacher's channels. Returns ``(output, residual for the next, shallower level)``."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.output = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(out_channels))
        self.attention = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.reduce[0].weight, a=1)
        nn.init.kaiming_uniform_(self.output[0].weight, a=1)

    def forward(self, feature: torch.Tensor, residual: torch.Tensor | None = None):
        reduced = self.reduce(feature)
        if self.attention is not None:
            residual = F.interpolate(residual, size=reduced.shape[-2:], mode="nearest")
            maps = self.attention(torch.cat([reduced, residual], dim=1))
            reduced = reduced * maps[:, :1] + residual * maps[:, 1:]
        return self.output(reduced), reduced


class ReviewConnector(nn.Module):
    """ReviewKD's review path over the student's features (shallow to deep, the pooled features last, as 1 x 1
    maps): from the deepest, each :class:`AttentionFusion` passes its residual to the next shallower one."""

    def __init__(self, student_channels: list[int], teacher_channels: list[int], mid_channels: int = 256):
        super().__init__()
        count = len(student_channels)
        self.fusions = nn.ModuleList(AttentionFusion(s, mid_channels, t, fuse=i < count - 1)
                                     for i, (s, t) in enumerate(zip(student_channels, teacher_channels)))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        outputs: list[torch.Tensor] = [None] * len(features)  # type: ignore[list-item]
        residual = None
        for index in range(len(features) - 1, -1, -1):
            outputs[index], residual = self.fusions[index](features[index], residual)
        return outputs


def hcl_loss(student_features: list[torch.Tensor], teacher_features: list[torch.Tensor]) -> torch.Tensor:
    """ReviewKD's hierarchical context loss, summed over feature pairs: for each, the MSE of the maps plus the MSEs of
    their 4 x 4, 2 x 2 and 1 x 1 average pools (only pools smaller than the map), weighted 1, 1/2, 1/4, 1/8 and
    normalized by the weights used. A pair of different sizes is compared at the smaller one."""
    total = None
    with _no_autocast(student_features[0].device):
        for student, teacher in zip(student_features, teacher_features):
            student, teacher = student.float(), teacher.detach().float()
            size = (min(student.shape[-2], teacher.shape[-2]), min(student.shape[-1], teacher.shape[-1]))
            if student.shape[-2:] != size:
                student = F.adaptive_avg_pool2d(student, size)
            if teacher.shape[-2:] != size:
                teacher = F.adaptive_avg_pool2d(teacher, size)
            loss, weight, normalizer = F.mse_loss(student, teacher), 1.0, 1.0
            for level in (4, 2, 1):
                if level >= size[0]:
                    continue
                weight /= 2.0
                loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(student, level),
                                                  F.adaptive_avg_pool2d(teacher, level))
                normalizer += weight
            total = loss / normalizer if total is None else total + loss / normalizer
    return total


# ---------------------------------------------------------------------------------------------------------------
# Method registry: a method is BCE on the student plus weighted distillation terms.

@dataclass(frozen=True)
class TermInputs:
    """What a term sees besides the two outputs: the stage maps it asked for, and its own trainable modules.

    Attributes:
        student_stages: the student's maps of the stages :attr:`Term.stages` selected, in that order (and its
            pooled features last, as ``[B, F, 1, 1]``, when :attr:`Term.pooled`).
        teacher_stages: the teacher's, likewise.
        module: the term's connectors (what :attr:`Term.connectors` built), or None.
    """

    student_stages: tuple[torch.Tensor, ...] = ()
    teacher_stages: tuple[torch.Tensor, ...] = ()
    module: nn.Module | None = None


TermFn = Callable[[ModelOutput, ModelOutput, torch.Tensor, Mapping[str, float], TermInputs], dict[str, torch.Tensor]]
#: A backbone's number of stages -> the stage indices a term compares (ascending).
StageSelector = Callable[[int], tuple[int, ...]]
#: (student channels of the selected stages, teacher channels of its stages, hparams) -> the term's trainable module.
ConnectorBuilder = Callable[[list[int], list[int], Mapping[str, float]], nn.Module]


@dataclass(frozen=True)
class Term:
    """A group of distillation losses computed together, and the weight hyperparameter of each.

    ``fn(student, teacher, targets, hparams, inputs)`` returns ``{part name: unweighted loss}``; ``weights`` maps
    each part to its weight's name. A feature-level term also names the backbone ``stages`` it needs (of each
    model; the models then return them in ``ModelOutput.stages``) and may build trainable ``connectors``, which
    the engine optimizes with the student and saves in its checkpoints.
    """

    weights: dict[str, str]
    fn: TermFn
    stages: StageSelector | None = None
    connectors: ConnectorBuilder | None = None
    pooled: bool = False


def last_stage(count: int) -> tuple[int, ...]:
    return (count - 1,)


def last_stages(number: int) -> StageSelector:
    """The last ``number`` stages of a backbone (fewer when it has no more beyond its stem, stage 0)."""
    return lambda count: tuple(range(max(1 if count > 1 else 0, count - number), count))


def _led(student: ModelOutput, teacher: ModelOutput, targets: torch.Tensor, hparams, inputs) -> dict[str, torch.Tensor]:
    cd, instance = cd_id_losses(student.label_embeddings, teacher.label_embeddings, targets)
    return {"cd": cd, "id": instance}


def _hint(student: ModelOutput, teacher: ModelOutput, targets: torch.Tensor, hparams, inputs: TermInputs):
    return {"hint": hint_loss(inputs.student_stages[0], inputs.teacher_stages[0], inputs.module)}


def _reviewkd(student: ModelOutput, teacher: ModelOutput, targets: torch.Tensor, hparams, inputs: TermInputs):
    count = min(len(inputs.student_stages), len(inputs.teacher_stages))
    reviewed = inputs.module(list(inputs.student_stages[-count:]))
    return {"reviewkd": hcl_loss(reviewed, list(inputs.teacher_stages[-count:]))}


def _review_connectors(student: list[int], teacher: list[int], hparams) -> nn.Module:
    count = min(len(student), len(teacher))  # the deepest levels of each, paired
    return ReviewConnector(student[-count:], teacher[-count:])


TERMS: dict[str, Term] = {
    "mld": Term({"mld": "lambda_mld"}, lambda s, t, y, hp, x: {"mld": mld_loss(s.logits, t.logits)}),
    "led": Term({"cd": "lambda_cd", "id": "lambda_id"}, _led),
    "kd": Term({"kd": "lambda_kd"},
               lambda s, t, y, hp, x: {"kd": kd_loss(s.logits, t.logits, hp["kd_temperature"])}),
    "mse": Term({"mse": "lambda_mse"}, lambda s, t, y, hp, x: {"mse": mse_loss(s.logits, t.logits)}),
    "ps": Term({"ps": "lambda_ps"}, lambda s, t, y, hp, x: {"ps": ps_loss(s.logits, t.logits, y)}),
    "rkd": Term({"rkd": "lambda_rkd"}, lambda s, t, y, hp, x: {"rkd": rkd_loss(s.features, t.features)}),
    "pkt": Term({"pkt": "lambda_pkt"}, lambda s, t, y, hp, x: {"pkt": pkt_loss(s.features, t.features)}),
    "hint": Term({"hint": "lambda_hint"}, _hint, stages=last_stage,
                 connectors=lambda student, teacher, hp: HintConnector(student[0], teacher[0])),
    "reviewkd": Term({"reviewkd": "lambda_reviewkd"}, _reviewkd, stages=last_stages(4),
                     connectors=_review_connectors, pooled=True),
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


def official_weights(method: str, rule: str = "official", num_classes: int = OFFICIAL_NUM_CLASSES,
                     factor: float | None = None) -> dict[str, float]:
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


METHODS: dict[str, Method] = {
    "bce": Method((), {}, "student alone, supervised BCE"),
    "kd": Method(("kd",), {"lambda_kd": 10.0, "kd_temperature": 4.0}, "vanilla KD with sigmoids (soft-target BCE)"),
    "mse": Method(("mse",), {"lambda_mse": 1.0}, "MSE between logits"),
    "ps": Method(("ps",), {"lambda_ps": 10.0}, "partial softmax KD"),
    "rkd": Method(("rkd",), {"lambda_rkd": 1.0}, "relational KD on pooled features (distance 10, angle 10)"),
    "pkt": Method(("pkt",), {"lambda_pkt": 30000.0}, "probabilistic knowledge transfer on pooled features"),
    "mld": Method(("mld",), {"lambda_mld": 10.0}, "L2D's multi-label logits distillation alone"),
    "led": Method(("led",), {"lambda_cd": 100.0, "lambda_id": 1000.0}, "L2D's CD + ID embedding losses alone"),
    "l2d": Method(("mld", "led"), dict(OFFICIAL_WEIGHTS), "L2D: MLD + CD + ID"),
    "hint": Method(("hint",), {"lambda_hint": 100.0}, "FitNet-style hint on the last backbone stage (trainable "
                                                      "1x1 conv + BN connector)"),
    "reviewkd": Method(("reviewkd",), {"lambda_reviewkd": 20.0}, "ReviewKD: attention-based fusion of the last 4 "
                                                                 "stages and the pooled features, hierarchical "
                                                                 "context loss"),
}


def method_hparams(method: str, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """The hyperparameters of ``method``: its defaults updated with ``overrides``.

    Raises:
        ValueError: unknown method, a hyperparameter the method does not have, or a negative value.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known methods: {', '.join(METHODS)}")
    hparams = dict(METHODS[method].defaults)
    for name, value in (overrides or {}).items():
        if name not in hparams:
            allowed = ", ".join(hparams) or "none"
            raise ValueError(f"method {method!r} has no hyperparameter {name!r} (it has: {allowed})")
        value = float(value)
        if not math.isfinite(value) or value < 0 or (name == "kd_temperature" and value == 0):
            raise ValueError(f"{name} must be a finite number >= 0 (> 0 for a temperature), got {value}")
        hparams[name] = value
    return hparams


def _pooled_features(model: nn.Module) -> int:
    backbone = getattr(model, "backbone", model)
    return int(backbone.num_features)


class DistillationCriterion(nn.Module):
    """The training loss of one method for one student/teacher pair: ``BCE + sum_term lambda_term * L_term``.

    It tells the engine which backbone stages each model must return (:attr:`student_stages`,
    :attr:`teacher_stages`, to pass as ``model(images, stages=...)``) and owns the trainable modules of the
    method's terms (:attr:`connectors`, by term name): the engine optimizes them with the student, under the
    same DDP wrapper, and saves them in its checkpoints. A method without feature-level terms has no stages and
    no parameters.

    Args:
        method: a key of :data:`METHODS`.
        hparams: overrides of the method's defaults (see :func:`method_hparams`).
        student / teacher: the two models; needed only by methods with feature-level terms (to read the
            channels of their stages).
    """

    def __init__(self, method: str, hparams: Mapping[str, float] | None = None, student: nn.Module | None = None,
                 teacher: nn.Module | None = None):
        super().__init__()
        from l2d.models import stage_channels

        self.method = method
        self.hparams = method_hparams(method, hparams)
        self.weights = part_weights(method, self.hparams)
        self.needs_teacher = METHODS[method].needs_teacher
        self.connectors = nn.ModuleDict()
        self._term_stages: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        for name in METHODS[method].terms:
            term = TERMS[name]
            if term.stages is None:
                continue
            if student is None or teacher is None:
                raise ValueError(f"method {method!r} compares backbone stages: its criterion needs the student and "
                                 f"the teacher models")
            student_channels, teacher_channels = stage_channels(student), stage_channels(teacher)
            selected = (term.stages(len(student_channels)), term.stages(len(teacher_channels)))
            self._term_stages[name] = selected
            if term.connectors is not None:
                pooled = ([_pooled_features(student)], [_pooled_features(teacher)]) if term.pooled else ([], [])
                self.connectors[name] = term.connectors([student_channels[i] for i in selected[0]] + pooled[0],
                                                        [teacher_channels[i] for i in selected[1]] + pooled[1],
                                                        self.hparams)
        self.student_stages = tuple(sorted({i for s, _ in self._term_stages.values() for i in s}))
        self.teacher_stages = tuple(sorted({i for _, t in self._term_stages.values() for i in t}))

    def _inputs(self, name: str, student: ModelOutput, teacher: ModelOutput | None) -> TermInputs:
        if name not in self._term_stages:
            return TermInputs(module=self.connectors[name] if name in self.connectors else None)
        student_indices, teacher_indices = self._term_stages[name]
        student_maps = dict(zip(self.student_stages, student.stages))
        teacher_maps = dict(zip(self.teacher_stages, teacher.stages))
        if len(student_maps) != len(self.student_stages) or len(teacher_maps) != len(self.teacher_stages):
            raise ValueError(f"method {self.method!r} needs stages {self.student_stages} of the student and "
                             f"{self.teacher_stages} of the teacher; call the models with stages=...")
        student_stages = tuple(student_maps[i] for i in student_indices)
        teacher_stages = tuple(teacher_maps[i] for i in teacher_indices)
        if TERMS[name].pooled:
            student_stages += (student.features[:, :, None, None],)
            teacher_stages += (teacher.features[:, :, None, None],)
        return TermInputs(student_stages, teacher_stages, self.connectors[name] if name in self.connectors else None)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None,
                targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(total, parts)``; ``parts`` maps ``bce`` and each loss to its unweighted, detached value."""
        if self.needs_teacher and teacher is None:
            raise ValueError(f"method {self.method!r} needs a teacher's output")
        total = bce_loss(student.logits, targets)
        parts = {"bce": total.detach()}
        for name in METHODS[self.method].terms:
            values = TERMS[name].fn(student, teacher, targets, self.hparams, self._inputs(name, student, teacher))
            for part, value in values.items():
                total = total + self.weights[part] * value
                parts[part] = value.detach()
        return total, parts


def distillation_loss(
    method: str,
    student: ModelOutput,
    teacher: ModelOutput | None,
    targets: torch.Tensor,
    hparams: Mapping[str, float] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training loss of ``method``: ``BCE + sum_term lambda_term * L_term`` (a :class:`DistillationCriterion`
    built for this call; methods with trainable connectors need one built with the models instead).

    Args:
        method: a key of :data:`METHODS`.
        student: the student's output (with gradients).
        teacher: the teacher's output (detached here); may be None for ``bce``.
        targets: ``[B, C]`` in {0, 1}.
        hparams: overrides of the method's defaults (see :func:`method_hparams`).

    Returns:
        ``(total, parts)`` where ``parts`` maps ``"bce"`` and each loss (``mld``, ``cd``, ``id``, ``kd``...) to its
        unweighted, detached value.
    """
    return DistillationCriterion(method, hparams)(student, teacher, targets)


def part_weights(method: str, hparams: Mapping[str, float] | None = None) -> dict[str, float]:
    """The weight of each loss part of ``method`` in its total (``bce`` 1, ``mld`` lambda_mld, ...), with the
    method's defaults for the hyperparameters ``hparams`` leaves out."""
    resolved = method_hparams(method, hparams)
    weights = {"bce": 1.0}
    for name in METHODS[method].terms:
        weights.update({part: resolved[weight] for part, weight in TERMS[name].weights.items()})
    return weights


def loss_parts(method: str) -> tuple[str, ...]:
    """Names of the parts :func:`distillation_loss` reports for ``method`` (``bce`` first)."""
    return ("bce", *(part for name in METHODS[method].terms for part in TERMS[name].weights))
