"""RBR weights and the total reward: base reward + w[response type] . features."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from rbr.errors import WeightsError
from rbr.spec import Spec

WEIGHTS_FORMAT_VERSION = 1


@dataclass(frozen=True)
class RbrWeights:
    """One weight vector per response type over the spec's feature names."""

    spec_hash: str
    feature_names: tuple[str, ...]
    response_types: tuple[str, ...]
    weights: np.ndarray  # (R, F)
    metadata: Mapping[str, Any] = field(default_factory=dict)  # fit settings and validation metrics

    def check_spec(self, spec: Spec, source: str = "weights") -> None:
        """Raise WeightsError unless these weights were fitted for `spec`."""
        if self.spec_hash != spec.hash():
            raise WeightsError(
                f"{source} were fitted for spec {self.spec_hash[:12]} but the spec in use is "
                f"{spec.hash()[:12]} ({spec.source}); refit the weights with `rbr fit` for this spec."
            )

    def reward(self, features: np.ndarray, rt_index: np.ndarray, base_reward: np.ndarray | None = None) -> np.ndarray:
        """Total reward (N,) from features (N, F), response type indices (N,) and base rewards (N,)."""
        rbr = np.einsum("nf,nf->n", features, self.weights[rt_index])  # (N,)
        return rbr if base_reward is None else rbr + np.asarray(base_reward, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": WEIGHTS_FORMAT_VERSION,
            "spec_hash": self.spec_hash,
            "feature_names": list(self.feature_names),
            "weights": {rt: [float(x) for x in row] for rt, row in zip(self.response_types, self.weights)},
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "weights") -> "RbrWeights":
        try:
            version = data["format_version"]
            if version != WEIGHTS_FORMAT_VERSION:
                raise WeightsError(f"{source}: weights format {version!r} is not supported; expected {WEIGHTS_FORMAT_VERSION}.")
            names = tuple(data["feature_names"])
            per_type = data["weights"]
            matrix = np.array([per_type[rt] for rt in per_type], dtype=np.float64)
            if matrix.shape != (len(per_type), len(names)):
                raise WeightsError(f"{source}: each weight vector must have {len(names)} entries.")
            return cls(str(data["spec_hash"]), names, tuple(per_type), matrix, dict(data.get("metadata") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsError(f"{source}: not a valid weights file ({exc!r}).") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path, spec: Spec | None = None) -> "RbrWeights":
        """Load a weights file; with `spec`, also check it was fitted for that spec."""
        try:
            data = json.loads(Path(path).read_text("utf-8"))
        except OSError as exc:
            raise WeightsError(f"cannot read weights file {path}: {exc.strerror}.") from None
        except json.JSONDecodeError as exc:
            raise WeightsError(f"{path}: invalid JSON ({exc.msg}).") from None
        weights = cls.from_dict(data, str(path))
        if spec is not None:
            weights.check_spec(spec, str(path))
            weights.aligned(spec)
        return weights

    def aligned(self, spec: Spec) -> "RbrWeights":
        """These weights with rows in the spec's response type order; raises if one is missing."""
        rows = []
        for rt in spec.response_types:
            matches = [i for i, name in enumerate(self.response_types) if spec.response_type_index(name) == spec.response_type_index(rt)]
            if not matches:
                raise WeightsError(f"weights have no vector for response type {rt!r}; refit with data of that type.")
            rows.append(self.weights[matches[0]])
        return RbrWeights(self.spec_hash, self.feature_names, spec.response_types, np.array(rows), self.metadata)


def class_order_weights(spec: Spec, feature_names: list[str]) -> RbrWeights:
    """Unfitted weights that score completion classes evenly from +1 (best) to -1 (worst).

    Used when no fitted weights exist, so the reward still ranks classes in spec order.
    """
    from rbr.features import CLASS_FEATURE_PREFIX

    scores = np.linspace(1.0, -1.0, num=len(spec.classes)) if len(spec.classes) > 1 else np.zeros(1)
    row = np.zeros(len(feature_names))  # (F,)
    for name, score in zip(spec.class_names, scores):
        row[feature_names.index(CLASS_FEATURE_PREFIX + name)] = score
    matrix = np.tile(row, (len(spec.response_types), 1))  # (R, F)
    return RbrWeights(spec.hash(), tuple(feature_names), spec.response_types, matrix, {"source": "class order default"})
