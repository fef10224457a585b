"""L2D's label-wise embedding losses: class-aware CD and instance-aware ID, vectorized (no Python loop over classes
or images) and equal to the official loop to float tolerance."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from l2d.losses._common import _SQ_DIST_EPS, distance_structure, no_autocast  # noqa: F401 - re-exported: the loss modules' shared names


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
    with no_autocast(student_embeddings.device):
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
                teacher_structure = distance_structure(
                    teacher.index_select(0, index.flatten()).view(shape), pairs, sizes
                )
            # index_select, not student[index]: its backward is an index_add, much cheaper than an index_put.
            student_structure = distance_structure(student.index_select(0, index.flatten()).view(shape), pairs, sizes)
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


# --- terms (registered in l2d.losses.registry) -------------------------------------------------------------------


def led_term(student, teacher, targets, hparams, inputs):
    cd, instance = cd_id_losses(student.label_embeddings, teacher.label_embeddings, targets)
    return {"cd": cd, "id": instance}


def cd_term(student, teacher, targets, hparams, inputs):
    return {"cd": cd_loss(student.label_embeddings, teacher.label_embeddings, targets)}


def id_term(student, teacher, targets, hparams, inputs):
    return {"id": id_loss(student.label_embeddings, teacher.label_embeddings, targets)}
