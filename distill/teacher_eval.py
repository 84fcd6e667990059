"""Teacher labels against human labels: a Markdown table per proposition.

Conversations are split in two halves by the first 8 hex digits of sha256(id): even
values form the tuning half, where each proposition's decision threshold is chosen,
and odd values the evaluation half, where accuracy, F1 and AUROC are measured.
"""

from __future__ import annotations

import hashlib
import math
from typing import Sequence

import numpy as np

from rbr.data import Conversation
from rbr.metrics import evaluate_binary, macro_mean, tune_threshold
from rbr.spec import Spec

DEFAULT_THRESHOLD = 0.5  # used when the tuning half lacks a class


def in_tuning_half(conversation_id: str) -> bool:
    """True for the conversations whose thresholds are tuned, by a hash of the id."""
    return int(hashlib.sha256(conversation_id.encode("utf-8")).hexdigest()[:8], 16) % 2 == 0


def _format(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def teacher_report(
    spec: Spec,
    conversations: Sequence[Conversation],
    targets: np.ndarray,
    teacher: str,
    tune_metric: str = "f1",
) -> str:
    """Markdown report of teacher P(yes) (`targets`, (N, K) with NaN gaps) vs human labels."""
    tuning = np.array([in_tuning_half(c.id) for c in conversations], dtype=bool)  # (N,)
    labeled = ~np.isnan(targets).all(axis=1)  # (N,) conversations with any teacher label
    lines = [
        f"Teacher `{teacher}`, {int(labeled.sum())} of {len(conversations)} conversations labeled. "
        f"Thresholds tuned for {tune_metric} on the {int((tuning & labeled).sum())} labeled conversations "
        f"whose sha256(id) is even; metrics on the other {int((~tuning & labeled).sum())}.",
        "",
        "| proposition | positives/total | threshold | accuracy | F1 | AUROC | note |",
        "|---|---|---|---|---|---|---|",
    ]

    accuracies, f1s, aurocs = [], [], []
    for column, name in enumerate(spec.proposition_names):
        human = np.array([_human_label(c, name) for c in conversations], dtype=np.float64)  # (N,) NaN: none
        scores = targets[:, column].astype(np.float64)  # (N,)
        usable = ~np.isnan(human) & ~np.isnan(scores)
        if not usable.any():
            lines.append(f"| {name} | 0/0 | | | | | no human and teacher labels together |")
            continue

        tune_rows, eval_rows = usable & tuning, usable & ~tuning
        threshold = tune_threshold(human[tune_rows] > 0.5, scores[tune_rows], tune_metric, DEFAULT_THRESHOLD)
        metrics = evaluate_binary(human[eval_rows] > 0.5, scores[eval_rows], threshold)
        notes = []
        tune_classes = np.unique(human[tune_rows]).size
        if tune_classes < 2:
            notes.append(f"tuning half has one class, threshold {DEFAULT_THRESHOLD}")
        if metrics.has_both_classes:
            accuracies.append(metrics.accuracy)
            f1s.append(metrics.f1)
            aurocs.append(metrics.auroc)
        else:
            notes.append(f"evaluation half has {metrics.status}")
        lines.append(
            f"| {name} | {metrics.positives}/{metrics.n} | {threshold:.3f} | {_format(metrics.accuracy)} | "
            f"{_format(metrics.f1)} | {_format(metrics.auroc)} | {'; '.join(notes)} |"
        )

    lines.append(
        f"| **macro mean** ({len(aurocs)} propositions with both classes) | | | "
        f"{_format(macro_mean(accuracies))} | {_format(macro_mean(f1s))} | {_format(macro_mean(aurocs))} | |"
    )
    return "\n".join(lines)


def _human_label(conversation: Conversation, name: str) -> float:
    labels = conversation.propositions or {}
    return float(labels[name]) if name in labels else float("nan")
