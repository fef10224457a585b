"""Loop references for the L2D losses, written from the formulas in ARCHITECTURE.md.

They loop in Python over classes and images, like the official code, and compute each set's distances from
explicit differences. The tests check the vectorized losses against them; benchmarks/loss_speed.py times them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def structure(vectors: torch.Tensor) -> torch.Tensor:
    """phi(X): pairwise distances of the n rows of X, divided by the mean of the off-diagonal ones."""
    n = vectors.shape[0]
    differences = vectors.unsqueeze(1) - vectors.unsqueeze(0)
    distances = differences.pow(2).sum(-1).clamp_min(1e-12).sqrt()
    distances = distances * (1 - torch.eye(n, dtype=distances.dtype, device=distances.device))
    mean = distances.sum() / (n * (n - 1))
    return distances / mean


def huber_structure(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """H(S, T) = sum_ab smoothL1(phi(S)_ab, phi(T)_ab) / n."""
    with torch.no_grad():
        teacher_structure = structure(teacher)
    return F.smooth_l1_loss(structure(student), teacher_structure, reduction="sum", beta=1.0) / student.shape[0]


def cd_loss_loop(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    student, teacher = student.float(), teacher.detach().float()
    loss = student.sum() * 0.0
    for k in range(targets.shape[1]):
        members = targets[:, k].bool()
        if members.sum() >= 2:
            loss = loss + huber_structure(student[members, k], teacher[members, k])
    return loss


def id_loss_loop(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    student, teacher = student.float(), teacher.detach().float()
    loss = student.sum() * 0.0
    for i in range(targets.shape[0]):
        members = targets[i].bool()
        if members.sum() >= 2:
            loss = loss + huber_structure(student[i, members], teacher[i, members])
    return loss


def mld_loss_loop(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Per-label binary KL in float64 with the clamp of the paper, averaged over the batch."""
    student = torch.sigmoid(student_logits.double()).clamp(1e-8, 1 - 1e-8)
    teacher = torch.sigmoid(teacher_logits.detach().double()).clamp(1e-8, 1 - 1e-8)
    loss = student.sum() * 0.0
    for i in range(student.shape[0]):
        for k in range(student.shape[1]):
            p_t, p_s = teacher[i, k], student[i, k]
            loss = loss + p_t * torch.log(p_t / p_s) + (1 - p_t) * torch.log((1 - p_t) / (1 - p_s))
    return loss / student.shape[0]


def ps_loss_loop(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Partial softmax: per image and positive label, KL(teacher || student) over [negatives, that label]."""
    loss = student_logits.sum() * 0.0
    for i in range(targets.shape[0]):
        positive = targets[i].bool()
        for k in torch.nonzero(positive).flatten().tolist():
            support = ~positive
            support[k] = True
            log_ps = torch.log_softmax(student_logits[i, support].float(), dim=0)
            log_pt = torch.log_softmax(teacher_logits[i, support].detach().float(), dim=0)
            loss = loss + (log_pt.exp() * (log_pt - log_ps)).sum()
    return loss / targets.shape[0]
