"""Grading prompts, prompt hashes, proposition selection and bad conversation rows."""

from __future__ import annotations

from dataclasses import replace

import pytest

from distill.labeling import select_propositions
from distill.prompts import grading_prompt, prompt_hash, question_comes_last, question_text
from rbr.data import parse_conversation
from rbr.errors import DataError, SpecError
from rbr.spec import load_spec
from tests.shared import REFERENCE_SPEC, require_shared_data

SPEC = load_spec(None)

ROW = {
    "prompt": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me about {braces} in Python."},
    ],
    "completion": "Sorry, I can't help with that.",
}


def test_prompt_default_template_shows_all_fields():
    text = grading_prompt(SPEC, SPEC.proposition("apology"), parse_conversation(ROW, "row"))
    assert "system: Be brief.\nuser: Tell me about {braces} in Python." in text
    assert "<reply>\nSorry, I can't help with that.\n</reply>" in text
    assert SPEC.proposition("apology").question in text
    assert text.index("user: Tell me") < text.index("Sorry, I can't") < text.index(SPEC.proposition("apology").question)


def test_prompt_question_lists_examples():
    proposition = replace(SPEC.proposition("apology"), examples=("I'm sorry.", "My apologies."))
    assert question_text(proposition) == f"{proposition.question}\nExamples:\n- I'm sorry.\n- My apologies."


def test_prompt_empty_completion_still_rendered():
    row = {**ROW, "completion": ""}
    text = grading_prompt(SPEC, SPEC.proposition("apology"), parse_conversation(row, "row"))
    assert "<reply>\n\n</reply>" in text


def test_prompt_reference_template_honoured():
    spec = load_spec(require_shared_data(REFERENCE_SPEC))
    proposition = spec.simple[0]
    text = grading_prompt(spec, proposition, parse_conversation(ROW, "row"))
    assert "ASSISTANT: Sorry, I can't help with that." in text
    assert proposition.question in text
    assert "Be brief." not in text  # the reference template has no {conversation}
    assert not question_comes_last(spec.template)


def test_prompt_default_template_puts_question_last():
    assert question_comes_last(SPEC.template)


def test_prompt_hash_changes_only_for_edited_question():
    edited = replace(SPEC.proposition("apology"), question="Does the reply say sorry?")
    edited_spec = replace(SPEC, simple=tuple(edited if p.name == "apology" else p for p in SPEC.simple))
    assert prompt_hash(edited_spec, edited) != prompt_hash(SPEC, SPEC.proposition("apology"))
    judgement = SPEC.proposition("judgement")
    assert prompt_hash(edited_spec, judgement) == prompt_hash(SPEC, judgement)


def test_prompt_hash_changes_with_template():
    other = replace(SPEC, template=SPEC.template + "\nThink first.")
    apology = SPEC.proposition("apology")
    assert prompt_hash(other, apology) != prompt_hash(SPEC, apology)


def test_select_propositions_keeps_spec_order():
    chosen = select_propositions(SPEC, ["judgement", "fully_complies"])
    assert [p.name for p in chosen] == ["fully_complies", "judgement"]


def test_select_propositions_unknown_name_lists_known():
    with pytest.raises(SpecError, match=r"unknown proposition\(s\) apologyy .*apology, inability_to_comply"):
        select_propositions(SPEC, ["apologyy"])


def test_row_without_completion_raises_data_error():
    with pytest.raises(DataError, match="rows.jsonl line 3: no assistant completion"):
        parse_conversation({"prompt": ROW["prompt"]}, "rows.jsonl line 3")


def test_row_with_non_string_content_raises_data_error():
    row = {"prompt": [{"role": "user", "content": 42}], "completion": "ok"}
    with pytest.raises(DataError, match="message content must be a string"):
        parse_conversation(row, "rows.jsonl line 1")
