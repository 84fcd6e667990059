"""Evaluate a student against human labels and teacher labels, per proposition.

Against human booleans: accuracy and F1 at P(yes) >= 0.5, AUROC, and positives out
of labeled rows. A proposition without both classes in the data gets no AUROC, and
none without positives gets an F1. The table names the missing class instead of
showing a perfect score. Against a label store: mean absolute error of P(yes) and the share
of rows where student and teacher take the same decision at 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from rbr.data import Conversation
from rbr.metrics import BinaryMetrics, evaluate_binary, macro_mean

DECISION_THRESHOLD = 0.5


@dataclass(frozen=True)
class PropositionResult:
    """Scores of one proposition; None where that label source was not given or has no labels."""

    name: str
    human: BinaryMetrics | None
    teacher_rows: int  # rows with a valid teacher label
    teacher_mae: float | None
    teacher_agreement: float | None


@dataclass(frozen=True)
class StudentEvaluation:
    """Per-proposition results plus macro means over the propositions where each metric is defined."""

    results: tuple[PropositionResult, ...]
    conversations: int
    teacher: str | None

    def macro(self, metric: str) -> float:
        if metric in ("accuracy", "f1", "auroc"):
            return macro_mean([getattr(r.human, metric) for r in self.results if r.human is not None])
        return macro_mean([getattr(r, metric) for r in self.results if getattr(r, metric) is not None])


def evaluate_student(
    probabilities: np.ndarray,
    conversations: Sequence[Conversation],
    propositions: Sequence[str],
    teacher_targets: np.ndarray | None = None,
    teacher: str | None = None,
) -> StudentEvaluation:
    """Compare student P(yes) (N, K) with the rows' human labels and optional teacher targets (N, K)."""
    results = []
    for k, name in enumerate(propositions):
        # human labels: only rows that carry this proposition
        rows = [i for i, c in enumerate(conversations) if c.propositions and name in c.propositions]
        human = None
        if rows:
            labels = np.array([conversations[i].propositions[name] for i in rows], dtype=bool)  # (n,)
            human = evaluate_binary(labels, probabilities[rows, k], DECISION_THRESHOLD)

        # teacher labels: rows with a valid P(yes) in the store
        mae = agreement = None
        count = 0
        if teacher_targets is not None:
            valid = ~np.isnan(teacher_targets[:, k])  # (N,)
            count = int(valid.sum())
            if count:
                student, target = probabilities[valid, k], teacher_targets[valid, k]
                mae = float(np.abs(student - target).mean())
                agreement = float(((student >= DECISION_THRESHOLD) == (target >= DECISION_THRESHOLD)).mean())
        results.append(PropositionResult(name, human, count, mae, agreement))
    return StudentEvaluation(tuple(results), len(conversations), teacher)


def _number(value: float | None) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{value:.3f}"


def render_markdown(evaluation: StudentEvaluation, title: str = "Student evaluation") -> str:
    """Format a Markdown table with one row per proposition and a row of macro means."""
    has_human = any(r.human is not None for r in evaluation.results)
    has_teacher = evaluation.teacher is not None
    header = ["proposition"]
    if has_human:
        header += ["positives/total", "accuracy", "F1", "AUROC", "note"]
    if has_teacher:
        header += ["teacher rows", "MAE vs teacher", "agreement (0.5)"]
    lines = [f"### {title}", "", f"{evaluation.conversations} conversations.", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    for r in evaluation.results:
        cells = [r.name]
        if has_human:
            if r.human is None:
                cells += ["0/0", "—", "—", "—", "no human labels"]
            else:
                note = "" if r.human.status == "ok" else r.human.status
                cells += [f"{r.human.positives}/{r.human.n}", _number(r.human.accuracy), _number(r.human.f1), _number(r.human.auroc), note]
        if has_teacher:
            cells += [str(r.teacher_rows), _number(r.teacher_mae), _number(r.teacher_agreement)]
        lines.append("| " + " | ".join(cells) + " |")

    macro = ["**macro mean**"]
    if has_human:
        defined = sum(1 for r in evaluation.results if r.human is not None and r.human.status == "ok")
        macro += ["", _number(evaluation.macro("accuracy")), _number(evaluation.macro("f1")),
                  _number(evaluation.macro("auroc")), f"AUROC over {defined} propositions with both classes"]
    if has_teacher:
        macro += ["", _number(evaluation.macro("teacher_mae")), _number(evaluation.macro("teacher_agreement"))]
    lines.append("| " + " | ".join(macro) + " |")
    if has_teacher:
        lines += ["", f"Teacher: `{evaluation.teacher}`."]
    return "\n".join(lines) + "\n"


def write_markdown(text: str, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text, encoding="utf-8")
