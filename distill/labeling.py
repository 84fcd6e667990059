"""Label conversations with a teacher into a label store, resumably.

Items (conversation, proposition) that already have a valid label for the current
prompt hash are skipped; failed ones are tried again. Results are committed after
every batch and at least every `commit_seconds`, so a killed run loses at most
the items in flight.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Sequence

from distill.label_store import LabelStore
from distill.prompts import prompt_hash
from distill.teacher import GradeRequest, Teacher, warn_if_low_mass
from rbr.data import Conversation
from rbr.errors import SpecError
from rbr.spec import SimpleProposition, Spec

logger = logging.getLogger(__name__)


@dataclass
class LabelSummary:
    """Counts of one labeling run."""

    teacher: str
    total: int = 0  # items requested (conversations x propositions, duplicates removed)
    skipped: int = 0  # items that already had a valid label
    graded: int = 0  # items labeled by this run
    failed: int = 0  # items whose grading failed; they are retried on the next run
    truncated_conversations: int = 0  # conversations whose oldest context was cut
    low_mass_fraction: float = 0.0  # share of graded items with yes/no mass below 0.5
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)  # the first few error messages

    def lines(self) -> list[str]:
        rate = self.graded / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"teacher: {self.teacher}",
            f"items: {self.total} requested, {self.skipped} skipped (already labeled), "
            f"{self.graded} graded, {self.failed} failed",
            f"conversations truncated to fit the teacher context: {self.truncated_conversations}",
            f"graded items with yes/no mass below 0.5: "
            + (f"{100 * self.low_mass_fraction:.1f}%" if self.graded else "n/a (none graded)"),
            f"time: {self.seconds:.1f} s ({rate:.2f} items/s)",
        ]
        lines += [f"error: {message}" for message in self.errors]
        return lines


def select_propositions(spec: Spec, names: Sequence[str] | None) -> list[SimpleProposition]:
    """Return the spec's propositions, or the named ones in spec order; raise on unknown names."""
    if not names:
        return list(spec.simple)
    known = spec.proposition_names
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SpecError(
            f"unknown proposition(s) {', '.join(unknown)} in --propositions; "
            f"the spec {spec.source} has: {', '.join(known)}."
        )
    wanted = set(names)
    return [p for p in spec.simple if p.name in wanted]


def label_conversations(
    conversations: Sequence[Conversation],
    spec: Spec,
    propositions: Sequence[SimpleProposition],
    teacher: Teacher,
    store: LabelStore,
    batch_size: int = 32,
    commit_seconds: float = 2.0,
    progress: bool = True,
) -> LabelSummary:
    """Grade every (conversation, proposition) without a valid label and store the results."""
    started = time.monotonic()
    summary = LabelSummary(teacher=teacher.teacher_id)
    hashes = {p.name: prompt_hash(spec, p) for p in propositions}

    # plan: one request per key not labeled yet
    done = store.labeled_keys(teacher.teacher_id, hashes)
    seen: set[tuple[str, str]] = set()
    requests = []
    for conversation in conversations:
        for proposition in propositions:
            key = (proposition.name, conversation.id)
            if key in seen:
                continue
            seen.add(key)
            if key in done:
                summary.skipped += 1
            else:
                requests.append(GradeRequest(conversation, proposition))
    summary.total = len(seen)
    logger.info(
        "%d items: %d skipped (already labeled in %s), %d to grade",
        summary.total, summary.skipped, store.path, len(requests),
    )

    # grade, committing every batch
    masses: list[float] = []
    buffer: list[tuple] = []
    last_commit = time.monotonic()
    bar = _progress_bar(len(requests), progress)
    try:
        for request, grade in teacher.grade(requests, spec.template):
            name = request.proposition.name
            buffer.append((name, hashes[name], request.conversation.id, grade.p_yes, grade.mass, grade.error))
            if grade.error is None:
                summary.graded += 1
                masses.append(grade.mass if grade.mass is not None else 0.0)
            else:
                summary.failed += 1
                if len(summary.errors) < 5:
                    summary.errors.append(f"conversation {request.conversation.id}, proposition {name}: {grade.error}")
                logger.debug("conversation %s, proposition %s failed: %s", request.conversation.id, name, grade.error)
            bar.update(1)
            if len(buffer) >= batch_size or time.monotonic() - last_commit >= commit_seconds:
                store.put_many(teacher.teacher_id, buffer)
                buffer, last_commit = [], time.monotonic()
    finally:
        if buffer:
            store.put_many(teacher.teacher_id, buffer)
        bar.close()

    summary.truncated_conversations = teacher.truncated_conversations
    summary.low_mass_fraction = warn_if_low_mass(masses)
    summary.seconds = time.monotonic() - started
    return summary


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="item", desc="labeling", disable=not enabled or total == 0, dynamic_ncols=True)
