"""Binary classification metrics for P(yes) scores against boolean labels (numpy only).

Every function takes `y_true` as a boolean array and `scores` as a float array of the
same length. A metric that is undefined for the input (AUROC without both classes, F1
with no positives at all) is NaN, never a perfect score, and `evaluate_binary` names
the missing class in its `status` field.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STATUS_OK = "ok"
STATUS_NO_POSITIVES = "no positives"
STATUS_NO_NEGATIVES = "no negatives"
STATUS_EMPTY = "no labels"


@dataclass(frozen=True)
class BinaryMetrics:
    """Metrics of one proposition; NaN where a metric is undefined."""

    n: int  # items with both a label and a score
    positives: int
    accuracy: float
    f1: float
    auroc: float
    threshold: float  # P(yes) at or above which the prediction is "yes"
    status: str  # "ok", "no positives", "no negatives" or "no labels"

    @property
    def has_both_classes(self) -> bool:
        return self.status == STATUS_OK


def _as_arrays(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=bool).ravel()  # (N,)
    s = np.asarray(scores, dtype=np.float64).ravel()  # (N,)
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} items but scores has {s.size}")
    return y, s


def class_status(y_true) -> str:
    """Name which class is missing from `y_true`, or "ok" when both are present."""
    y = np.asarray(y_true, dtype=bool).ravel()
    if y.size == 0:
        return STATUS_EMPTY
    if not y.any():
        return STATUS_NO_POSITIVES
    if y.all():
        return STATUS_NO_NEGATIVES
    return STATUS_OK


def accuracy(y_true, y_pred) -> float:
    """Fraction of predictions equal to the labels; NaN for empty input."""
    y, p = np.asarray(y_true, dtype=bool).ravel(), np.asarray(y_pred, dtype=bool).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} items but y_pred has {p.size}")
    return float(np.mean(y == p)) if y.size else float("nan")


def f1_score(y_true, y_pred) -> float:
    """F1 of the positive class; NaN when there are no positive labels.

    With no positives, F1 is 0 if anything was predicted positive and undefined
    otherwise. Both cases return NaN so a caller cannot mistake them for a score.
    """
    y, p = np.asarray(y_true, dtype=bool).ravel(), np.asarray(y_pred, dtype=bool).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} items but y_pred has {p.size}")
    if not y.any():
        return float("nan")
    true_pos = np.sum(y & p)
    return float(2 * true_pos / (np.sum(y) + np.sum(p)))


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve; tied scores count one half. NaN without both classes.

    Computed as the Mann-Whitney U statistic over average ranks, which equals the
    trapezoidal area under the ROC curve including ties.
    """
    y, s = _as_arrays(y_true, scores)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)  # (N,) 1-based, ties share their mean rank
    rank_sum = ranks[y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # start index of each run of equal values
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], values.size]
    mean_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks start+1 .. end
    run_of = np.repeat(np.arange(starts.size), ends - starts)
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = mean_rank[run_of]
    return ranks


def tune_threshold(y_true, scores, metric: str = "f1", default: float = 0.5) -> float:
    """Return the threshold on `scores` that maximises `metric` ("f1" or "accuracy").

    Candidates are midpoints between consecutive distinct scores plus one below the
    minimum and one above the maximum; the first best one (lowest threshold) wins.
    Without both classes the metric cannot rank thresholds, so `default` is returned.
    """
    if metric not in ("f1", "accuracy"):
        raise ValueError(f"unknown metric {metric!r}; expected 'f1' or 'accuracy'")
    y, s = _as_arrays(y_true, scores)
    if class_status(y) != STATUS_OK:
        return default

    distinct = np.unique(s)  # (D,) sorted
    candidates = np.r_[distinct[0] - 1e-6, (distinct[1:] + distinct[:-1]) / 2, distinct[-1] + 1e-6]  # (D+1,)
    predicted = s[None, :] >= candidates[:, None]  # (D+1, N)
    true_pos = (predicted & y[None, :]).sum(axis=1)  # (D+1,)
    if metric == "f1":
        values = 2 * true_pos / (y.sum() + predicted.sum(axis=1))
    else:
        values = (predicted == y[None, :]).mean(axis=1)
    return float(candidates[int(np.argmax(values))])


def evaluate_binary(y_true, scores, threshold: float = 0.5) -> BinaryMetrics:
    """Accuracy and F1 at `threshold`, and AUROC, skipping items whose score is NaN."""
    y, s = _as_arrays(y_true, scores)
    valid = ~np.isnan(s)
    y, s = y[valid], s[valid]
    predicted = s >= threshold
    return BinaryMetrics(
        n=int(y.size),
        positives=int(y.sum()),
        accuracy=accuracy(y, predicted),
        f1=f1_score(y, predicted),
        auroc=roc_auc(y, s),
        threshold=float(threshold),
        status=class_status(y),
    )


def macro_mean(values) -> float:
    """Mean of the finite values; NaN when there are none."""
    array = np.asarray(values, dtype=np.float64)
    finite = array[np.isfinite(array)]
    return float(finite.mean()) if finite.size else float("nan")
