"""Derived-proposition probabilities, completion-class probabilities and RBR features.

Independence assumption: the P(yes) of the simple propositions are treated as
independent, so the probability of a conjunction is the product of its literals'
probabilities, and a negated literal contributes 1 - p. A derived proposition used
inside another conjunction is treated as one more independent literal, even when it
shares simple propositions with its neighbours. The class probabilities therefore do
not always sum to 1, so they are normalised over the classes of the row's response type. With P(yes) in
{0, 1} every product is exact boolean logic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rbr.errors import DataError
from rbr.spec import Literal, Spec

CLASS_FEATURE_PREFIX = "class:"


@dataclass(frozen=True)
class _Conjunction:
    positive: np.ndarray  # column indices of literals that must be true
    negative: np.ndarray  # column indices of literals that must be false

    def probability(self, columns: np.ndarray) -> np.ndarray:
        """Product of literal probabilities over rows of `columns` (N, M) -> (N,)."""
        p = np.prod(columns[:, self.positive], axis=1)  # (N,)
        return p * np.prod(1.0 - columns[:, self.negative], axis=1)  # (N,)


class FeatureModel:
    """A spec compiled for vectorised evaluation over rows of simple-proposition P(yes)."""

    def __init__(self, spec: Spec):
        self.spec = spec
        names = spec.proposition_names + [d.name for d in spec.derived]
        self._column = {name: i for i, name in enumerate(names)}
        self._derived = [self._compile(d.literals) for d in spec.derived]
        # (R, C) conjunctions: one per response type and completion class.
        self._classes = [[self._compile(c.rule(rt)) for c in spec.classes] for rt in spec.response_types]

    def _compile(self, literals: tuple[Literal, ...]) -> _Conjunction:
        positive = np.array([self._column[lit.name] for lit in literals if lit.value], dtype=np.int64)
        negative = np.array([self._column[lit.name] for lit in literals if not lit.value], dtype=np.int64)
        return _Conjunction(positive, negative)

    @property
    def feature_names(self) -> list[str]:
        """Simple propositions, then one `class:NAME` per completion class."""
        return self.spec.proposition_names + [CLASS_FEATURE_PREFIX + c for c in self.spec.class_names]

    def response_type_indices(self, response_types) -> np.ndarray:
        """Map response type names (any spelling) to indices (N,); raises on unknown names."""
        lookup: dict[str, int] = {}
        indices = np.empty(len(response_types), dtype=np.int64)
        for i, name in enumerate(response_types):
            if name not in lookup:
                lookup[name] = self.spec.response_type_index(name)
            indices[i] = lookup[name]
        return indices

    def proposition_probs(self, p_yes: np.ndarray) -> np.ndarray:
        """Simple then derived proposition probabilities, (N, K) -> (N, K + D)."""
        n, k = p_yes.shape
        columns = np.empty((n, k + len(self._derived)), dtype=np.float64)  # (N, K + D)
        columns[:, :k] = p_yes
        for j, conjunction in enumerate(self._derived):
            columns[:, k + j] = conjunction.probability(columns)
        return columns

    def class_probs(self, p_yes: np.ndarray, rt_index: np.ndarray) -> np.ndarray:
        """Completion-class probabilities (N, C), normalised per row over its response type.

        A row whose classes all have probability 0 (possible only when the rules of
        its response type do not cover every case) gets all zeros.
        """
        columns = self.proposition_probs(p_yes)  # (N, K + D)
        probs = np.zeros((len(p_yes), len(self.spec.classes)), dtype=np.float64)  # (N, C)
        for r, conjunctions in enumerate(self._classes):
            rows = np.flatnonzero(rt_index == r)
            if rows.size == 0:
                continue
            sub = columns[rows]
            for c, conjunction in enumerate(conjunctions):
                probs[rows, c] = conjunction.probability(sub)
        total = probs.sum(axis=1, keepdims=True)  # (N, 1)
        return np.divide(probs, total, out=np.zeros_like(probs), where=total > 0)

    def features(self, p_yes: np.ndarray, rt_index: np.ndarray) -> np.ndarray:
        """RBR features (N, K + C): simple-proposition P(yes), then class probabilities."""
        return np.concatenate([p_yes, self.class_probs(p_yes, rt_index)], axis=1)

    def classify(self, p_yes: np.ndarray, rt_index: np.ndarray) -> np.ndarray:
        """Most likely completion class per row (N,), or -1 where no class has probability."""
        probs = self.class_probs(p_yes, rt_index)
        best = probs.argmax(axis=1)
        best[probs.max(axis=1) <= 0] = -1
        return best


def validate_p_yes(p_yes: np.ndarray, names: list[str], where: str = "input") -> np.ndarray:
    """Check a (N, K) P(yes) matrix; raise DataError naming the first bad row and proposition."""
    p_yes = np.asarray(p_yes, dtype=np.float64)
    if p_yes.ndim != 2 or p_yes.shape[1] != len(names):
        raise DataError(f"{where}: expected P(yes) of shape (N, {len(names)}), got {p_yes.shape}.")
    bad = ~np.isfinite(p_yes) | (p_yes < 0) | (p_yes > 1)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(
            f"{where} row {row}: proposition {names[col]!r} has P(yes)={float(p_yes[row, col])}; "
            "expected a number in [0, 1]."
        )
    return p_yes
