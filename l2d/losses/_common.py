"""What the loss families share: float32 outside autocast, the clamps of the official code, and the distance
structure ``phi`` of a set of vectors (used by the label-wise embedding losses and by RKD)."""

from __future__ import annotations

import math

import torch

_PROB_EPS = 1e-8  # clamp of sigmoid probabilities in MLD (official value)
_LOG_PROB_MIN = math.log(_PROB_EPS)
_LOG_PROB_MAX = math.log1p(-_PROB_EPS)
_SQ_DIST_EPS = 1e-12  # clamp of squared distances before the square root (official value)


def no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


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


def distance_structure(vectors: torch.Tensor, pairs: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
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
