"""Multi-label metrics, vectorized over classes with NumPy. Every value is a percentage (0-100), as in the paper.

- mAP: mean over classes with at least one positive of the non-interpolated average precision
  (``sum_n (R_n - R_{n-1}) P_n`` over distinct score thresholds, the definition of
  ``sklearn.metrics.average_precision_score``, ties included).
- CP, CR, CF1: per-class precision and recall averaged over all classes (a class with no predicted or no
  true positive counts 0), CF1 the harmonic mean of CP and CR; OP, OR, OF1: the same pooled over all
  image-label pairs. Reported three ways: at ``p >= 0.5``, for the top-3 scores of each image, and for the
  top-k scores with k = the image's true label count (``topk_true``; CF1 there is still the harmonic mean of CP
  and CR).
- paper_CF1, paper_OF1: the official L2D code's F1, the numbers its paper reports: each image predicts the labels
  scoring strictly above its (k+1)-th highest score, k = its true label count (none for an image without labels,
  all for one with every label), then scikit-learn's ``f1_score`` on those predictions, ``average="macro"``
  (the mean of per-class F1, 0 for a class never predicted nor present) and ``average="micro"``.
"""

from __future__ import annotations

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def _as_numpy(array: ArrayLike, name: str) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().float().cpu().numpy()
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a [N, C] array, got shape {array.shape}")
    return array


def _check(scores: ArrayLike, targets: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    scores, targets = _as_numpy(scores, "scores"), _as_numpy(targets, "targets")
    if scores.shape != targets.shape:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} differ in shape")
    if not np.isin(targets, (0.0, 1.0)).all():
        raise ValueError("targets must contain only 0 and 1")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    return scores, targets.astype(bool)


def average_precision_per_class(scores: ArrayLike, targets: ArrayLike) -> np.ndarray:
    """Average precision of each class, in percent; NaN for a class without positives."""
    scores, targets = _check(scores, targets)
    order = np.argsort(-scores, axis=0, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=0)
    sorted_targets = np.take_along_axis(targets, order, axis=0)
    count = scores.shape[0]
    if count == 0:
        return np.full(scores.shape[1], np.nan)
    true_positives = np.cumsum(sorted_targets, axis=0)
    # A threshold is a distinct score: every item in a tie group gets the precision at the group's end.
    rows = np.arange(count)[:, None]
    group_end = np.ones_like(sorted_targets)
    group_end[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    end_index = np.where(group_end, rows, count - 1)
    end_index = np.minimum.accumulate(end_index[::-1], axis=0)[::-1]
    precision_at_end = np.take_along_axis(true_positives, end_index, axis=0) / (end_index + 1)
    positives = sorted_targets.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (precision_at_end * sorted_targets).sum(0) / positives
    return np.where(positives > 0, ap * 100.0, np.nan)


def mean_average_precision(scores: ArrayLike, targets: ArrayLike) -> float:
    """mAP in percent over the classes that have at least one positive (NaN when none has)."""
    ap = average_precision_per_class(scores, targets)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")


def _precision_recall(predicted: np.ndarray, targets: np.ndarray, prefix: str) -> dict[str, float]:
    true_positive = (predicted & targets).sum(0).astype(np.float64)
    predicted_count = predicted.sum(0)
    true_count = targets.sum(0)
    per_class_precision = np.divide(
        true_positive, predicted_count, out=np.zeros_like(true_positive), where=predicted_count > 0
    )
    per_class_recall = np.divide(true_positive, true_count, out=np.zeros_like(true_positive), where=true_count > 0)
    cp = per_class_precision.mean() if per_class_precision.size else 0.0
    cr = per_class_recall.mean() if per_class_recall.size else 0.0
    op = true_positive.sum() / predicted_count.sum() if predicted_count.sum() else 0.0
    o_r = true_positive.sum() / true_count.sum() if true_count.sum() else 0.0

    def harmonic(a: float, b: float) -> float:
        return 2 * a * b / (a + b) if a + b > 0 else 0.0

    values = {"CP": cp, "CR": cr, "CF1": harmonic(cp, cr), "OP": op, "OR": o_r, "OF1": harmonic(op, o_r)}
    return {f"{prefix}{name}": float(value) * 100.0 for name, value in values.items()}


def _top_k_mask(scores: np.ndarray, k: np.ndarray) -> np.ndarray:
    """True for the k[i] highest scores of row i (ties broken by the lower class index)."""
    ranks = np.empty_like(scores, dtype=np.int64)
    order = np.argsort(-scores, axis=1, kind="stable")
    np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None, :].repeat(scores.shape[0], 0), axis=1)
    return ranks < k[:, None]


def paper_f1(scores: ArrayLike, targets: ArrayLike) -> dict[str, float]:
    """``paper_CF1`` and ``paper_OF1`` in percent (see the module docstring): the official code's definition."""
    scores, targets = _check(scores, targets)
    count, classes = scores.shape
    k = targets.sum(1).astype(np.int64)
    descending = -np.sort(-scores, axis=1)
    threshold = np.full(count, -np.inf)
    below_all = k < classes
    threshold[below_all] = descending[np.arange(count)[below_all], k[below_all]]
    predicted = scores > threshold[:, None]
    true_positive = (predicted & targets).sum(0).astype(np.float64)
    errors = (predicted ^ targets).sum(0).astype(np.float64)  # false positives + false negatives
    denominator = 2 * true_positive + errors
    per_class = np.divide(2 * true_positive, denominator, out=np.zeros(classes), where=denominator > 0)
    total = 2 * true_positive.sum() + errors.sum()
    return {
        "paper_CF1": float(per_class.mean()) * 100.0 if classes else 0.0,
        "paper_OF1": float(2 * true_positive.sum() / total) * 100.0 if total else 0.0,
    }


def multilabel_metrics(scores: ArrayLike, targets: ArrayLike, threshold: float = 0.5) -> dict:
    """All metrics of a set of predictions.

    Args:
        scores: ``[N, C]`` probabilities (sigmoid of the logits).
        targets: ``[N, C]`` in {0, 1}.
        threshold: a label is predicted when its probability is ``>= threshold``.

    Returns:
        ``mAP`` and ``AP`` (per-class array, NaN for classes without positives); ``CP, CR, CF1, OP, OR, OF1``
        at the threshold; the same prefixed ``top3_``; and prefixed ``topk_true_`` for the top-k with k = each
        image's true label count; ``paper_CF1`` and ``paper_OF1``, the official code's F1. All in percent.
    """
    scores, targets = _check(scores, targets)
    ap = average_precision_per_class(scores, targets)
    result: dict = {"mAP": float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan"), "AP": ap}
    result.update(_precision_recall(scores >= threshold, targets, ""))
    top3 = np.full(scores.shape[0], min(3, scores.shape[1]))
    result.update(_precision_recall(_top_k_mask(scores, top3), targets, "top3_"))
    result.update(_precision_recall(_top_k_mask(scores, targets.sum(1)), targets, "topk_true_"))
    result.update(paper_f1(scores, targets))
    return result
