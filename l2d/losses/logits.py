"""Losses on logits: the supervised BCE, L2D's MLD, and the logit baselines (KD, MSE, PS, DIST), with logit
standardisation (Sun et al., CVPR 2024) as an option of KD and MLD."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from l2d.losses._common import _LOG_PROB_MAX, _LOG_PROB_MIN, no_autocast


def bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Supervised binary cross-entropy, summed over batch and labels (the official convention)."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="sum")


def standardize_logits(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Logit standardisation (Sun et al., CVPR 2024): each image's logits z-scored over its labels,
    ``(z - mean_k z) / (std_k z + eps)`` (the unbiased std, as the paper's code), so that a distillation loss matches
    the teacher's relative scores, not their magnitude. An image with one label is only centred."""
    logits = logits.float()
    centred = logits - logits.mean(dim=-1, keepdim=True)
    if logits.shape[-1] < 2:
        return centred
    return centred / (logits.std(dim=-1, keepdim=True) + eps)


def mld_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, standardize: bool = False, temperature: float = 1.0
) -> torch.Tensor:
    """Multi-label logits distillation: one binary KL divergence per label, no temperature.

    ``L_MLD = (1/B) sum_{i,k} [pT log(pT/pS) + (1-pT) log((1-pT)/(1-pS))]`` with ``p = clamp(sigmoid(z),
    1e-8, 1-1e-8)``. The clamp is applied in log space (``log p = clamp(logsigmoid(z))``), which is the same
    function but does not round ``1 - 1e-8`` to 1 in float32.

    With ``standardize`` (method ``mld-ls``) both sides' logits are first standardised per image
    (:func:`standardize_logits`) and divided by ``temperature`` T, and the loss is multiplied by ``T^2``.
    """
    batch = student_logits.shape[0]
    with no_autocast(student_logits.device):
        z_student = student_logits.float()
        z_teacher = teacher_logits.detach().float()
        if standardize:
            z_student = standardize_logits(z_student) / temperature
            z_teacher = standardize_logits(z_teacher) / temperature
        log_ps = F.logsigmoid(z_student).clamp(_LOG_PROB_MIN, _LOG_PROB_MAX)
        log_1m_ps = F.logsigmoid(-z_student).clamp(_LOG_PROB_MIN, _LOG_PROB_MAX)
        log_pt = F.logsigmoid(z_teacher).clamp(_LOG_PROB_MIN, _LOG_PROB_MAX)
        log_1m_pt = F.logsigmoid(-z_teacher).clamp(_LOG_PROB_MIN, _LOG_PROB_MAX)
        divergence = log_pt.exp() * (log_pt - log_ps) + log_1m_pt.exp() * (log_1m_pt - log_1m_ps)
        loss = divergence.sum() / max(batch, 1)
        return loss * temperature**2 if standardize else loss


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0, standardize: bool = False
) -> torch.Tensor:
    """Vanilla KD adapted to sigmoids: BCE against the teacher's softened probabilities.

    ``L_KD = T^2 / B * sum_{i,k} BCE(sigmoid(zS/T), sigmoid(zT/T))``; the ``T^2`` keeps gradients on the
    same scale across temperatures, as in Hinton et al. With ``standardize`` (method ``kd-ls``) the logits are
    standardised per image first (:func:`standardize_logits`); T is then the paper's base temperature.
    """
    if temperature <= 0:
        raise ValueError(f"KD temperature must be > 0, got {temperature}")
    with no_autocast(student_logits.device):
        z_student, z_teacher = student_logits.float(), teacher_logits.detach().float()
        if standardize:
            z_student, z_teacher = standardize_logits(z_student), standardize_logits(z_teacher)
        soft_targets = torch.sigmoid(z_teacher / temperature)
        loss = F.binary_cross_entropy_with_logits(z_student / temperature, soft_targets, reduction="sum")
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
    with no_autocast(student_logits.device):
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


def _pearson(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``: ``[N, M] x [N, M] -> [N]``."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_losses(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """DIST (Huang et al., NeurIPS 2022), adapted to sigmoid outputs: ``(L_inter, L_intra)``.

    With ``P = sigmoid(z / T)`` (``[B, C]``): the inter-class relation ``L_inter = T^2 (1 - mean_i rho(PS_i, PT_i))``
    compares each image's scores over its labels, the intra-class relation ``L_intra = T^2 (1 - mean_k rho(PS_:k,
    PT_:k))`` each label's scores over the batch; rho is Pearson's correlation (0 for a constant vector). DIST
    relaxes KL's exact match to a match of relations, which is what a weaker student can follow; the sigmoid
    replaces DIST's softmax because the labels are not exclusive.
    """
    if temperature <= 0:
        raise ValueError(f"DIST temperature must be > 0, got {temperature}")
    with no_autocast(student_logits.device):
        student = torch.sigmoid(student_logits.float() / temperature)
        teacher = torch.sigmoid(teacher_logits.detach().float() / temperature)
        scale = temperature**2
        inter = scale * (1 - _pearson(student, teacher).mean())
        intra = scale * (1 - _pearson(student.t(), teacher.t()).mean()) if student.shape[0] > 1 else student.sum() * 0.0
        return inter, intra


# --- terms (registered in l2d.losses.registry): (student, teacher, targets, hparams, inputs) -> {part: loss} ------


def mld_term(student, teacher, targets, hparams, inputs):
    return {"mld": mld_loss(student.logits, teacher.logits)}


def mld_ls_term(student, teacher, targets, hparams, inputs):
    return {"mld": mld_loss(student.logits, teacher.logits, standardize=True, temperature=hparams["mld_temperature"])}


def kd_term(student, teacher, targets, hparams, inputs):
    return {"kd": kd_loss(student.logits, teacher.logits, hparams["kd_temperature"])}


def kd_ls_term(student, teacher, targets, hparams, inputs):
    return {"kd": kd_loss(student.logits, teacher.logits, hparams["kd_temperature"], standardize=True)}


def mse_term(student, teacher, targets, hparams, inputs):
    return {"mse": mse_loss(student.logits, teacher.logits)}


def ps_term(student, teacher, targets, hparams, inputs):
    return {"ps": ps_loss(student.logits, teacher.logits, targets)}


def dist_term(student, teacher, targets, hparams, inputs):
    inter, intra = dist_losses(student.logits, teacher.logits, hparams["dist_temperature"])
    return {"dist_inter": inter, "dist_intra": intra}
