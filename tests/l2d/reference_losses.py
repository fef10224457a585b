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


def _huber(difference: float) -> float:
    return 0.5 * difference**2 if abs(difference) < 1 else abs(difference) - 0.5


def rkd_loss_loop(student: torch.Tensor, teacher: torch.Tensor, distance_weight=10.0, angle_weight=10.0) -> float:
    """RKD as the official L2D code computes it, one pair and one triplet at a time (float64, no autograd):
    distances normalized by their off-diagonal mean, summed Huber over the B x B pairs divided by B; the cosine of
    every angle (a, b, c) at b... averaged Huber over the B^3 triplets."""
    s, t = student.double().tolist(), teacher.double().tolist()
    n = len(s)

    def distances(x):
        return [[sum((x[a][d] - x[b][d]) ** 2 for d in range(len(x[a]))) ** 0.5 for b in range(n)] for a in range(n)]

    def normalized(matrix):
        off = [matrix[a][b] for a in range(n) for b in range(n) if a != b]
        mean = sum(off) / len(off)
        return [[matrix[a][b] / mean for b in range(n)] for a in range(n)]

    ds, dt = normalized(distances(s)), normalized(distances(t))
    distance = sum(_huber(ds[a][b] - dt[a][b]) for a in range(n) for b in range(n)) / n

    def unit(x, a, b):
        vector = [x[a][d] - x[b][d] for d in range(len(x[a]))]
        norm = max(sum(v * v for v in vector) ** 0.5, 1e-12)
        return [v / norm for v in vector]

    def cosine(x, i, j, k):
        u, v = unit(x, i, j), unit(x, k, j)
        return sum(p * q for p, q in zip(u, v))

    angles = [_huber(cosine(s, i, j, k) - cosine(t, i, j, k)) for i in range(n) for j in range(n) for k in range(n)]
    return distance_weight * distance + angle_weight * sum(angles) / len(angles)


def _pool(feature, size: int):
    """Adaptive average pooling of one [C, H, W] nested list to size x size, window by window."""
    channels, height, width = len(feature), len(feature[0]), len(feature[0][0])
    out = []
    for c in range(channels):
        rows = []
        for i in range(size):
            top, bottom = (i * height) // size, -((-(i + 1) * height) // size)
            cells = []
            for j in range(size):
                left, right = (j * width) // size, -((-(j + 1) * width) // size)
                window = [feature[c][y][x] for y in range(top, bottom) for x in range(left, right)]
                cells.append(sum(window) / len(window))
            rows.append(cells)
        out.append(rows)
    return out


def _mse(a, b) -> float:
    values = [
        (x - y) ** 2
        for image_a, image_b in zip(a, b)
        for ca, cb in zip(image_a, image_b)
        for ra, rb in zip(ca, cb)
        for x, y in zip(ra, rb)
    ]
    return sum(values) / len(values)


def hcl_loss_loop(student_features, teacher_features) -> float:
    """ReviewKD's hierarchical context loss with explicit pooling windows (float64): per pair, the MSE plus the MSEs
    at the 4, 2 and 1 pooled levels smaller than the map, weights 1, 1/2, 1/4, 1/8, normalized; summed over pairs."""
    total = 0.0
    for fs, ft in zip(student_features, teacher_features):
        s, t = fs.double().tolist(), ft.double().tolist()
        height = len(s[0][0])
        loss, weight, normalizer = _mse(s, t), 1.0, 1.0
        for level in (4, 2, 1):
            if level >= height:
                continue
            weight /= 2
            loss += weight * _mse([_pool(image, level) for image in s], [_pool(image, level) for image in t])
            normalizer += weight
        total += loss / normalizer
    return total
