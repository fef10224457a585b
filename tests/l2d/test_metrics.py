"""The metrics against scikit-learn, computed independently class by class."""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_score, recall_score

from l2d.metrics import average_precision_per_class, mean_average_precision, multilabel_metrics


def _case(seed, n=60, c=8, ties=False, empty_classes=(), full_classes=()):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < 0.3).astype(np.float64)
    # Scores correlated with the targets so the metrics are not all near chance.
    scores = 1 / (1 + np.exp(-(rng.normal(size=(n, c)) + 1.5 * targets - 0.5)))
    if ties:
        scores = np.round(scores, 1)
    for k in empty_classes:
        targets[:, k] = 0
    for k in full_classes:
        targets[:, k] = 1
    return scores, targets


def _sklearn_map(scores, targets):
    aps = [average_precision_score(targets[:, k], scores[:, k]) for k in range(targets.shape[1]) if targets[:, k].any()]
    return 100 * np.mean(aps)


CASES = [
    dict(seed=0),
    dict(seed=1, ties=True),
    dict(seed=2, empty_classes=(0, 3)),
    dict(seed=3, full_classes=(1,)),
    dict(seed=4, ties=True, empty_classes=(5,), n=7),
]


@pytest.mark.parametrize("case", CASES)
def test_map_matches_sklearn(case):
    scores, targets = _case(**case)
    assert mean_average_precision(scores, targets) == pytest.approx(_sklearn_map(scores, targets), rel=1e-10)
    ap = average_precision_per_class(scores, targets)
    for k in range(targets.shape[1]):
        if targets[:, k].any():
            assert ap[k] == pytest.approx(100 * average_precision_score(targets[:, k], scores[:, k]), rel=1e-10)
        else:
            assert np.isnan(ap[k])


def test_all_ties_give_the_positive_rate():
    targets = np.array([[1.0], [0.0], [0.0], [1.0]])
    assert mean_average_precision(np.full((4, 1), 0.5), targets) == pytest.approx(50.0)


def test_map_is_the_mean_over_classes_not_pooled():
    # Class 0 is ranked perfectly (AP 100), class 1 in reverse (AP = (1/3 + 2/4) / 2 for its 2 positives of 4).
    scores = np.array([[0.9, 0.9], [0.8, 0.8], [0.1, 0.1], [0.2, 0.2]])
    targets = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert mean_average_precision(scores, targets) == pytest.approx((100 + 100 * (1 / 3 + 2 / 4) / 2) / 2)


@pytest.mark.parametrize("case", CASES)
def test_thresholded_metrics_match_sklearn(case):
    scores, targets = _case(**case)
    result = multilabel_metrics(torch.from_numpy(scores), torch.from_numpy(targets))
    predicted = (scores >= 0.5).astype(int)
    cp = 100 * precision_score(targets, predicted, average="macro", zero_division=0)
    cr = 100 * recall_score(targets, predicted, average="macro", zero_division=0)
    op = 100 * precision_score(targets, predicted, average="micro", zero_division=0)
    o_r = 100 * recall_score(targets, predicted, average="micro", zero_division=0)
    assert result["CP"] == pytest.approx(cp) and result["CR"] == pytest.approx(cr)
    assert result["OP"] == pytest.approx(op) and result["OR"] == pytest.approx(o_r)
    assert result["CF1"] == pytest.approx(2 * cp * cr / (cp + cr))  # harmonic mean of CP and CR, not mean F1
    assert result["OF1"] == pytest.approx(2 * op * o_r / (op + o_r))
    assert result["mAP"] == pytest.approx(_sklearn_map(scores, targets))


def _top_k_predictions(scores, ks):
    predicted = np.zeros_like(scores, dtype=int)
    for i, row in enumerate(scores):
        ranked = sorted(range(len(row)), key=lambda k: (-row[k], k))
        predicted[i, ranked[: ks[i]]] = 1
    return predicted


@pytest.mark.parametrize("case", CASES)
def test_top3_and_topk_true_match_sklearn(case):
    scores, targets = _case(**case)
    result = multilabel_metrics(scores, targets)
    for prefix, ks in (("top3_", [3] * len(scores)), ("topk_true_", targets.sum(1).astype(int))):
        predicted = _top_k_predictions(scores, ks)
        assert result[prefix + "CP"] == pytest.approx(
            100 * precision_score(targets, predicted, average="macro", zero_division=0)
        )
        assert result[prefix + "OR"] == pytest.approx(
            100 * recall_score(targets, predicted, average="micro", zero_division=0)
        )


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="differ in shape"):
        mean_average_precision(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="only 0 and 1"):
        mean_average_precision(np.zeros((3, 2)), np.full((3, 2), 0.5))
    with pytest.raises(ValueError, match="NaN"):
        mean_average_precision(np.full((3, 2), np.nan), np.zeros((3, 2)))


def _official_f1(scores, targets):
    """The official L2D evaluation, written out from its description: threshold at the (k+1)-th highest score,
    then scikit-learn's macro and micro F1."""
    from sklearn.metrics import f1_score

    preds = np.zeros(scores.shape, dtype=np.int64)
    for i in range(len(scores)):
        k = int(targets[i].sum())
        if k >= scores.shape[1]:
            preds[i] = 1
            continue
        threshold = sorted(scores[i], reverse=True)[k]
        preds[i] = scores[i] > threshold
    return (
        100 * f1_score(targets, preds, average="macro", zero_division=0),
        100 * f1_score(targets, preds, average="micro", zero_division=0),
    )


@pytest.mark.parametrize("seed", range(6))
def test_paper_f1_is_the_official_definition(seed):
    from l2d.metrics import paper_f1

    rng = np.random.default_rng(seed)
    targets = (rng.random((60, 9)) < 0.3).astype(np.float64)
    targets[0] = 0  # an image without labels (NUS-WIDE's test set keeps them): it predicts nothing
    targets[1] = 1  # an image with every label: it predicts everything
    targets[:, 4] = 0  # a class without positives
    scores = rng.random((60, 9))
    scores[2:10] = np.round(scores[2:10], 1)  # ties at the threshold
    ours = paper_f1(scores, targets)
    cf1, of1 = _official_f1(scores, targets)
    assert ours["paper_CF1"] == pytest.approx(cf1, abs=1e-9)
    assert ours["paper_OF1"] == pytest.approx(of1, abs=1e-9)
    everything = multilabel_metrics(scores, targets)
    assert everything["paper_CF1"] == ours["paper_CF1"] and everything["paper_OF1"] == ours["paper_OF1"]
