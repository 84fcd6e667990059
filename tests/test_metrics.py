"""Binary metrics: AUROC with ties, undefined cases, threshold tuning."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rbr.metrics import (
    STATUS_NO_NEGATIVES,
    STATUS_NO_POSITIVES,
    STATUS_OK,
    accuracy,
    evaluate_binary,
    f1_score,
    macro_mean,
    roc_auc,
    tune_threshold,
)


def pairwise_auroc(y, s):
    """AUROC by comparing every positive with every negative; ties count one half."""
    pos, neg = s[y], s[~y]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (pos.size * neg.size)


def test_auroc_perfect_and_reversed():
    y = np.array([False, False, True, True])
    assert roc_auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0


def test_auroc_all_tied_is_half():
    assert roc_auc(np.array([True, False, True, False]), np.full(4, 0.3)) == 0.5


def test_auroc_matches_pairwise_with_ties():
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.3
    s = np.round(rng.random(200), 1)  # many ties
    assert roc_auc(y, s) == pytest.approx(pairwise_auroc(y, s), abs=1e-12)


def test_auroc_single_class_is_nan():
    assert math.isnan(roc_auc(np.array([True, True]), np.array([0.1, 0.9])))
    assert math.isnan(roc_auc(np.array([False, False]), np.array([0.1, 0.9])))


def test_f1_known_value():
    y = np.array([True, True, False, False])
    predicted = np.array([True, False, True, False])
    assert f1_score(y, predicted) == pytest.approx(0.5)


def test_f1_no_positives_is_nan_not_perfect():
    y = np.zeros(5, dtype=bool)
    assert math.isnan(f1_score(y, np.zeros(5, dtype=bool)))
    assert math.isnan(f1_score(y, np.ones(5, dtype=bool)))


def test_accuracy_known_value_and_empty():
    assert accuracy([True, False, True], [True, True, True]) == pytest.approx(2 / 3)
    assert math.isnan(accuracy([], []))


def test_tune_threshold_separates_classes():
    y = np.array([False, False, False, True, True])
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.7])
    threshold = tune_threshold(y, s, "f1")
    assert 0.3 < threshold <= 0.6
    assert evaluate_binary(y, s, threshold).f1 == 1.0
    assert 0.3 < tune_threshold(y, s, "accuracy") <= 0.6


def test_tune_threshold_single_class_returns_default():
    assert tune_threshold(np.zeros(3, dtype=bool), np.array([0.1, 0.5, 0.9]), default=0.42) == 0.42


def test_tune_threshold_rejects_unknown_metric():
    with pytest.raises(ValueError, match="unknown metric"):
        tune_threshold([True, False], [0.1, 0.2], "precision")


def test_evaluate_binary_reports_missing_class():
    only_negatives = evaluate_binary(np.zeros(4, dtype=bool), np.array([0.1, 0.2, 0.3, 0.4]))
    assert only_negatives.status == STATUS_NO_POSITIVES
    assert not only_negatives.has_both_classes
    assert math.isnan(only_negatives.auroc)
    assert math.isnan(only_negatives.f1)
    only_positives = evaluate_binary(np.ones(2, dtype=bool), np.array([0.6, 0.7]))
    assert only_positives.status == STATUS_NO_NEGATIVES
    assert math.isnan(only_positives.auroc)


def test_evaluate_binary_skips_nan_scores():
    metrics = evaluate_binary(np.array([True, False, True]), np.array([0.9, 0.1, np.nan]))
    assert metrics.n == 2
    assert metrics.positives == 1
    assert metrics.status == STATUS_OK
    assert metrics.auroc == 1.0
    assert metrics.accuracy == 1.0


def test_macro_mean_ignores_nan():
    assert macro_mean([0.5, float("nan"), 1.0]) == pytest.approx(0.75)
    assert math.isnan(macro_mean([float("nan")]))
