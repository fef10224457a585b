"""Relational baselines on pooled backbone features: RKD (distance + angle) and PKT."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from l2d.losses._common import distance_structure, no_autocast


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
    with no_autocast(student_features.device):
        student = student_features.float()
        teacher = teacher_features.detach().float()
        batch = student.shape[0]
        if batch < 2:
            return student.sum() * 0.0
        members = torch.ones(1, batch, dtype=torch.bool, device=student.device)
        sizes = members.sum(1)
        pairs = ~torch.eye(batch, dtype=torch.bool, device=student.device).unsqueeze(0)
        with torch.no_grad():
            teacher_structure = distance_structure(teacher.unsqueeze(0), pairs, sizes)
        student_structure = distance_structure(student.unsqueeze(0), pairs, sizes)
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
    with no_autocast(student_features.device):

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


# --- terms (registered in l2d.losses.registry) -------------------------------------------------------------------


def rkd_term(student, teacher, targets, hparams, inputs):
    return {"rkd": rkd_loss(student.features, teacher.features)}


def pkt_term(student, teacher, targets, hparams, inputs):
    return {"pkt": pkt_loss(student.features, teacher.features)}
