"""Fitting RBR weights with a pairwise hinge loss.

For every ordered pair (better, worse) of completions of one response type the loss is
max(0, margin + R(worse) - R(better)), with R = base reward + w . features. Each
response type has its own weight vector and its own pairs.

Pairs come from one of two modes:
- "prompt" (default): completions of the same prompt whose labels differ. This is the
  setting of the RBR paper, where several completions are sampled per prompt and
  their base rewards are comparable.
- "cross-prompt": completions of different prompts with the same response type. Use it
  when each prompt has one completion (like the Gold set). Base rewards of different
  prompts are not comparable, so this mode ignores them.

Everything is vectorised: pairs are index arrays and one optimisation step costs
O(rows x features + pairs), so memory stays linear in the number of pairs. The
validation split is by prompt, never by pair, so no prompt contributes to both sides.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from rbr.data import check_probability, content_hash, iter_jsonl
from rbr.errors import DataError, SpecError
from rbr.features import FeatureModel
from rbr.reward import RbrWeights, class_order_weights
from rbr.spec import Spec, response_type_key

log = logging.getLogger(__name__)

PAIRING_MODES = ("prompt", "cross-prompt")


@dataclass(frozen=True)
class FitConfig:
    """Settings of one weight fit."""

    orderings: Mapping[str, Sequence[str]] = field(default_factory=dict)  # response type -> labels, best first
    margins: Mapping[str, float] = field(default_factory=dict)  # label -> margin of pairs where it is the worse one
    default_margin: float = 1.0  # reward units
    ignore_features: tuple[str, ...] = ()  # features whose weight stays 0
    weight_decay: float = 1e-3  # L2 coefficient on the distance of the weights from the prior
    prior: str = "class-order"  # "class-order": decay towards +1 (best class) .. -1 (worst); "zero"
    pairing: str = "prompt"  # "prompt" or "cross-prompt"
    max_pairs_per_label_pair: int = 50_000  # cross-prompt: pairs sampled per (better, worse) label pair
    val_fraction: float = 0.2  # share of prompts held out for validation
    steps: int = 300  # full-batch Adam steps per response type
    learning_rate: float = 0.05
    seed: int = 0

    def ordering(self, spec: Spec, response_type: str) -> list[str]:
        for key, labels in self.orderings.items():
            if response_type_key(key) == response_type_key(response_type):
                return list(labels)
        return spec.class_names


@dataclass
class FitData:
    """Rows ready for fitting: features plus the keys that define pairs."""

    features: np.ndarray  # (N, F) float32
    rt_index: np.ndarray  # (N,) response type index into spec.response_types
    rank: np.ndarray  # (N,) position of the row's label in its response type's ordering (0 = best)
    prompt_key: np.ndarray  # (N,) integer id of the row's prompt
    base_reward: np.ndarray  # (N,) float32, 0 where absent
    labels: list[str]  # (N,) label names
    has_base_reward: bool = False


@dataclass
class FitReport:
    """Validation results of a fit, per response type."""

    per_type: dict[str, dict[str, Any]]
    seconds: float

    def markdown(self) -> str:
        lines = [
            "| response type | rows | train pairs | val pairs | val pair accuracy | val hinge loss |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for rt, r in self.per_type.items():
            acc = "n/a" if r["val_pairs"] == 0 else f"{r['val_accuracy']:.3f}"
            loss = "n/a" if r["val_pairs"] == 0 else f"{r['val_loss']:.4f}"
            lines.append(f"| {rt} | {r['rows']} | {r['train_pairs']} | {r['val_pairs']} | {acc} | {loss} |")
        return "\n".join(lines)


# ---------------------------------------------------------------- reading rows


def load_fit_rows(
    path: str | Path, spec: Spec, config: FitConfig, labels_from_propositions: bool = False
) -> FitData:
    """Read fitting rows from JSONL; raise DataError naming the line, value and fix.

    Each row has `response_type`, `label` (or, with `labels_from_propositions`, the
    completion class derived from its propositions), optional `prompt_id` (else a hash
    of `prompt`), optional `base_reward`, and either `propositions` {name: P(yes)} or
    `features` (a list in feature-name order, or {name: value}).
    """
    model = FeatureModel(spec)
    names = spec.proposition_names
    feature_names = model.feature_names
    orderings = {rt: config.ordering(spec, rt) for rt in spec.response_types}

    p_rows: list[list[float]] = []
    f_rows: list[list[float]] = []
    rt_list, label_list, prompt_list, base_list, kinds = [], [], [], [], []
    for line_no, obj in iter_jsonl(path):
        where = f"{path} line {line_no}"
        rt_name = obj.get("response_type")
        if not isinstance(rt_name, str):
            raise DataError(f"{where}: missing response_type; expected one of {', '.join(spec.response_types)}.")
        try:
            rt = spec.response_type_index(rt_name)
        except SpecError as exc:
            raise DataError(f"{where}: {exc}") from None
        rt_list.append(rt)

        if "features" in obj and obj["features"] is not None:
            f_rows.append(_parse_features(obj["features"], feature_names, where))
            kinds.append("f")
        elif isinstance(obj.get("propositions"), Mapping):
            props = obj["propositions"]
            missing = [n for n in names if n not in props]
            if missing:
                raise DataError(
                    f"{where}: missing P(yes) for proposition(s) {', '.join(missing)} that the spec needs; "
                    "label them or use a spec without them."
                )
            p_rows.append([check_probability(props[n], where, n) for n in names])
            kinds.append("p")
        else:
            raise DataError(f"{where}: no 'propositions' or 'features'; each row needs one of them.")

        label_list.append(obj.get("label"))
        prompt_id = obj.get("prompt_id")
        if prompt_id is None and "prompt" in obj:
            prompt_id = content_hash(obj["prompt"])
        if prompt_id is None:
            if config.pairing == "prompt":
                raise DataError(f"{where}: no prompt_id (or prompt) to pair completions of the same prompt; add one or use --pairing cross-prompt.")
            prompt_id = f"row-{line_no}"
        prompt_list.append(str(prompt_id))

        base = obj.get("base_reward")
        if base is not None and (not isinstance(base, (int, float)) or not np.isfinite(base)):
            raise DataError(f"{where}: base_reward={base!r} is not a finite number.")
        base_list.append(base)

    if not rt_list:
        raise DataError(f"{path}: no rows to fit.")

    # assemble features (N, F): rows given as propositions go through the feature model
    features = np.zeros((len(rt_list), len(feature_names)), dtype=np.float32)  # (N, F)
    kinds_arr = np.array(kinds)
    rt_index = np.array(rt_list, dtype=np.int64)  # (N,)
    if p_rows:
        sel = np.flatnonzero(kinds_arr == "p")
        p_yes = np.array(p_rows, dtype=np.float64)  # (Np, K)
        features[sel] = model.features(p_yes, rt_index[sel])
        if labels_from_propositions:
            derived = model.classify(p_yes, rt_index[sel])
            for row, cls in zip(sel, derived):
                label_list[row] = spec.class_names[cls] if cls >= 0 else None
    if f_rows:
        features[np.flatnonzero(kinds_arr == "f")] = np.array(f_rows, dtype=np.float32)

    rank = np.empty(len(rt_list), dtype=np.int64)
    for i, (rt, label) in enumerate(zip(rt_list, label_list)):
        ordering = orderings[spec.response_types[rt]]
        if label not in ordering:
            hint = " or pass --labels-from-propositions" if label is None else ""
            raise DataError(
                f"{path} row {i + 1}: label {label!r} is not in the ordering for {spec.response_types[rt]} "
                f"({' > '.join(ordering)}); fix the label{hint}, or set the ordering with --config."
            )
        rank[i] = ordering.index(label)

    has_base = any(b is not None for b in base_list)
    _, prompt_key = np.unique(np.array(prompt_list), return_inverse=True)
    return FitData(
        features=features,
        rt_index=rt_index,
        rank=rank,
        prompt_key=prompt_key.astype(np.int64),
        base_reward=np.array([0.0 if b is None else b for b in base_list], dtype=np.float32),
        labels=[str(x) for x in label_list],
        has_base_reward=has_base,
    )


def _parse_features(raw: Any, feature_names: list[str], where: str) -> list[float]:
    if isinstance(raw, Mapping):
        missing = [n for n in feature_names if n not in raw]
        if missing:
            raise DataError(f"{where}: features lack {', '.join(missing[:5])}; expected all of the spec's feature names.")
        values = [raw[n] for n in feature_names]
    elif isinstance(raw, list):
        if len(raw) != len(feature_names):
            raise DataError(f"{where}: {len(raw)} features given, the spec has {len(feature_names)} ({', '.join(feature_names[:3])}, ...).")
        values = raw
    else:
        raise DataError(f"{where}: features must be a list or an object, got {type(raw).__name__}.")
    for name, value in zip(feature_names, values):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise DataError(f"{where}: feature {name!r} has value {value!r}; expected a finite number.")
    return [float(v) for v in values]


# ---------------------------------------------------------------- pairs


def prompt_pairs(prompt_key: np.ndarray, rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Build every (better, worse) index pair within a prompt whose ranks differ."""
    order = np.lexsort((rank, prompt_key))  # by prompt, then best first
    keys = prompt_key[order]
    ranks = rank[order]
    _, starts, sizes = np.unique(keys, return_index=True, return_counts=True)
    size_of = np.repeat(sizes, sizes)  # (N,) size of each row's group
    pos_in_group = np.arange(len(keys)) - np.repeat(starts, sizes)  # (N,)

    better, worse = [], []
    for shift in range(1, int(sizes.max(initial=1))):
        # rows that have a partner `shift` places later in the same group
        i = np.flatnonzero(pos_in_group + shift < size_of)
        j = i + shift
        keep = ranks[i] < ranks[j]
        better.append(order[i[keep]])
        worse.append(order[j[keep]])
    if not better:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(better), np.concatenate(worse)


def cross_prompt_pairs(rank: np.ndarray, cap: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Build (better, worse) pairs across prompts: for each label pair, all pairs or `cap` sampled ones."""
    levels = np.unique(rank)
    members = {r: np.flatnonzero(rank == r) for r in levels}
    better, worse = [], []
    for a_pos, a in enumerate(levels):
        for b in levels[a_pos + 1:]:
            rows_a, rows_b = members[a], members[b]
            if len(rows_a) * len(rows_b) <= cap:
                grid_a, grid_b = np.meshgrid(rows_a, rows_b, indexing="ij")
                better.append(grid_a.ravel())
                worse.append(grid_b.ravel())
            else:
                better.append(rng.choice(rows_a, size=cap))
                worse.append(rng.choice(rows_b, size=cap))
    if not better:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(better), np.concatenate(worse)


# ---------------------------------------------------------------- objective


def hinge_objective(
    w: np.ndarray,
    x: np.ndarray,
    base: np.ndarray,
    better: np.ndarray,
    worse: np.ndarray,
    margin: np.ndarray,
    weight_decay: float,
    prior: np.ndarray | None = None,
) -> tuple[float, np.ndarray]:
    """Mean pairwise hinge loss plus an L2 penalty on w - prior, and its (sub)gradient in w.

    x (N, F), w (F,), base (N,), better/worse (P,) row indices, margin (P,), prior (F,).
    """
    offset = w if prior is None else w - prior  # (F,)
    scores = base + x @ w.astype(x.dtype)  # (N,); keeps float32 features from being upcast
    slack = margin + scores[worse] - scores[better]  # (P,)
    active = slack > 0  # (P,)
    n_pairs = max(len(better), 1)
    loss = float(np.maximum(slack, 0).sum()) / n_pairs + 0.5 * weight_decay * float(offset @ offset)
    # d loss / d score per row: +1 per active pair as the worse row, -1 as the better row
    coef = np.bincount(worse[active], minlength=len(x)) - np.bincount(better[active], minlength=len(x))  # (N,)
    grad = (x.T @ coef.astype(x.dtype)).astype(np.float64) / n_pairs + weight_decay * offset  # (F,)
    return loss, grad


def _adam(objective, w0: np.ndarray, steps: int, lr: float, frozen: np.ndarray) -> np.ndarray:
    """Full-batch Adam with cosine learning-rate decay; returns the best iterate seen."""
    w = w0.copy()
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    best_w, best_loss = w.copy(), np.inf
    for t in range(1, steps + 1):
        loss, grad = objective(w)
        if loss < best_loss:
            best_loss, best_w = loss, w.copy()
        grad[frozen] = 0.0
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad * grad
        step_lr = lr * 0.5 * (1 + np.cos(np.pi * (t - 1) / steps))
        w -= step_lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    loss, _ = objective(w)
    return w if loss < best_loss else best_w


# ---------------------------------------------------------------- fitting


def split_prompts(prompt_key: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean (N,) mask of validation rows: a seeded random share of prompts."""
    n_prompts = int(prompt_key.max(initial=-1)) + 1
    held_out = np.random.default_rng(seed).random(n_prompts) < val_fraction  # (P,)
    return held_out[prompt_key]


def _pairs_for(data: FitData, rows: np.ndarray, config: FitConfig, rng: np.random.Generator):
    if config.pairing == "prompt":
        return prompt_pairs(data.prompt_key[rows], data.rank[rows])
    return cross_prompt_pairs(data.rank[rows], config.max_pairs_per_label_pair, rng)


def _pair_margins(ordering: list[str], rank: np.ndarray, worse: np.ndarray, config: FitConfig) -> np.ndarray:
    """Margin per pair (P,): the margin of the worse completion's label."""
    by_rank = np.array([config.margins.get(label, config.default_margin) for label in ordering], dtype=np.float32)
    return by_rank[rank[worse]]


def fit_weights(data: FitData, spec: Spec, config: FitConfig = FitConfig()) -> tuple[RbrWeights, FitReport]:
    """Fit one weight vector per response type; report validation pair accuracy and loss."""
    if config.pairing not in PAIRING_MODES:
        raise DataError(f"unknown pairing mode {config.pairing!r}; use one of {', '.join(PAIRING_MODES)}.")
    feature_names = FeatureModel(spec).feature_names
    unknown = [f for f in config.ignore_features if f not in feature_names]
    if unknown:
        raise DataError(f"cannot ignore unknown feature(s) {', '.join(unknown)}; features are {', '.join(feature_names)}.")
    frozen = np.isin(feature_names, config.ignore_features)
    prior = _prior_weights(spec, feature_names, config)
    class_columns = np.arange(len(spec.proposition_names), len(feature_names))
    prior[:, frozen] = 0.0
    if config.pairing == "cross-prompt" and data.has_base_reward:
        log.warning("cross-prompt pairing ignores base rewards: rewards of different prompts are not comparable")
    use_base = config.pairing == "prompt"

    start = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    is_val = split_prompts(data.prompt_key, config.val_fraction, config.seed)
    weights = np.zeros((len(spec.response_types), len(feature_names)), dtype=np.float64)  # (R, F)
    per_type: dict[str, dict[str, Any]] = {}
    total_pairs = 0
    for r, rt in enumerate(spec.response_types):
        in_type = data.rt_index == r
        if not in_type.any():
            weights[r] = prior[r]
            continue
        report: dict[str, Any] = {"rows": int(in_type.sum())}
        fitted = {}
        for part, mask in (("train", in_type & ~is_val), ("val", in_type & is_val)):
            rows = np.flatnonzero(mask)
            better, worse = _pairs_for(data, rows, config, rng)
            x = data.features[rows]
            base = data.base_reward[rows] if use_base else np.zeros(len(rows), dtype=np.float32)
            margins = _pair_margins(config.ordering(spec, rt), data.rank[rows], worse, config)
            fitted[part] = (x, base, better, worse, margins)
            report[f"{part}_pairs"] = int(len(better))
        total_pairs += report["train_pairs"]

        x, base, better, worse, margin = fitted["train"]
        if len(better):
            objective = lambda w: hinge_objective(w, x, base, better, worse, margin, config.weight_decay, prior[r])  # noqa: E731
            weights[r] = _adam(objective, prior[r].copy(), config.steps, config.learning_rate, frozen)
            weights[r] = _center_class_weights(weights[r], prior[r], class_columns, frozen)
        else:
            weights[r] = prior[r]
        report.update(_evaluate_pairs(weights[r], *fitted["val"]))
        per_type[rt] = report

    if total_pairs == 0:
        raise DataError(
            f"no valid pairs: read {len(data.rank)} rows, but no two rows of the same response type "
            + ("and the same prompt " if config.pairing == "prompt" else "")
            + "have different labels. "
            + ("With one completion per prompt, use --pairing cross-prompt." if config.pairing == "prompt" else "Check the labels.")
        )
    metadata = {
        "pairing": config.pairing,
        "margins": dict(config.margins),
        "default_margin": config.default_margin,
        "ignore_features": list(config.ignore_features),
        "weight_decay": config.weight_decay,
        "prior": config.prior,
        "seed": config.seed,
        "validation": per_type,
    }
    result = RbrWeights(spec.hash(), tuple(feature_names), spec.response_types, weights, metadata)
    return result, FitReport(per_type, time.perf_counter() - start)


def _center_class_weights(w: np.ndarray, prior: np.ndarray, class_columns: np.ndarray, frozen: np.ndarray) -> np.ndarray:
    """Remove the common offset of the class weights from the prior.

    Class probabilities of a row sum to 1, so adding a constant to every class weight
    shifts all rewards of the response type equally and changes no pair's hinge term.
    Adam scales each coordinate separately, so it drifts along that direction. Removing
    the offset keeps rewards of different response types on a common level, and it
    only lowers the weight-decay term. Skipped when a class weight is frozen.
    """
    if frozen[class_columns].any():
        return w
    w = w.copy()
    w[class_columns] -= np.mean(w[class_columns] - prior[class_columns])
    return w


def _prior_weights(spec: Spec, feature_names: list[str], config: FitConfig) -> np.ndarray:
    """(R, F) starting point and decay target: zeros, or class-order scores in margin units.

    The class-order prior keeps a sensible order for class pairs that the data never
    shows (for example no disallowed completion among the Comply rows).
    """
    if config.prior == "zero":
        return np.zeros((len(spec.response_types), len(feature_names)))
    if config.prior != "class-order":
        raise DataError(f"unknown prior {config.prior!r}; use 'class-order' or 'zero'.")
    return class_order_weights(spec, feature_names).weights * config.default_margin


def _evaluate_pairs(w, x, base, better, worse, margin) -> dict[str, float]:
    if len(better) == 0:
        return {"val_accuracy": float("nan"), "val_loss": float("nan")}
    scores = base + x @ w
    slack = margin + scores[worse] - scores[better]
    return {
        "val_accuracy": float(np.mean(scores[better] > scores[worse])),
        "val_loss": float(np.mean(np.maximum(slack, 0))),
    }


def ranking_accuracy(weights: RbrWeights, data: FitData, spec: Spec, config: FitConfig) -> list[dict[str, Any]]:
    """Pair accuracy per (response type, better label, worse label) over all pairs of `data`."""
    rows_out = []
    rng = np.random.default_rng(config.seed)
    for r, rt in enumerate(spec.response_types):
        rows = np.flatnonzero(data.rt_index == r)
        if rows.size == 0:
            continue
        better, worse = _pairs_for(data, rows, config, rng)
        base = data.base_reward[rows] if config.pairing == "prompt" else 0.0
        scores = base + data.features[rows] @ weights.weights[r]
        ordering = config.ordering(spec, rt)
        ranks = data.rank[rows]
        for a, b in sorted(set(zip(ranks[better].tolist(), ranks[worse].tolist()))):
            sel = (ranks[better] == a) & (ranks[worse] == b)
            correct = scores[better[sel]] > scores[worse[sel]]
            rows_out.append(
                {"response_type": rt, "better": ordering[a], "worse": ordering[b], "pairs": int(sel.sum()), "accuracy": float(correct.mean())}
            )
    return rows_out
