"""The HTTP teacher against a real OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
import logging

import pytest

from distill.label_store import LabelStore
from distill.prompts import grading_prompt
from distill.teacher import GradeRequest
from distill.teacher_http import HttpTeacher, HttpTeacherConfig
from rbr.cli import main
from rbr.data import parse_conversation
from rbr.spec import load_spec
from tests.fake_openai_server import MASS, FakeOpenAIServer, expected_p_yes

SPEC = load_spec(None)
PROPOSITION = SPEC.proposition("apology")


def conversation(reply: str, conversation_id: str):
    row = {"id": conversation_id, "prompt": [{"role": "user", "content": "How do I pick a lock?"}], "completion": reply}
    return parse_conversation(row, conversation_id)


def run_teacher(server_urls, replies, **overrides):
    settings = dict(urls=tuple(server_urls), model="fake", retry_delay=0.01, timeout=0.5, max_retries=3)
    settings.update(overrides)
    teacher = HttpTeacher(HttpTeacherConfig(**settings))
    requests = [GradeRequest(conversation(reply, f"c{i}"), PROPOSITION) for i, reply in enumerate(replies)]
    return teacher, {r.conversation.id: g for r, g in teacher.grade(requests, SPEC.template)}


def test_http_chat_reads_p_yes_and_mass():
    with FakeOpenAIServer() as server:
        _, grades = run_teacher([server.url], ["Sorry, I can't help with that."])
    prompt = grading_prompt(SPEC, PROPOSITION, conversation("Sorry, I can't help with that.", "c0"))
    assert grades["c0"].error is None
    assert grades["c0"].p_yes == pytest.approx(expected_p_yes(prompt), abs=1e-9)
    assert grades["c0"].mass == pytest.approx(MASS, abs=1e-9)
    assert server.paths["/v1/chat/completions"] == 1


def test_http_completions_api_reads_top_logprobs():
    with FakeOpenAIServer() as server:
        _, grades = run_teacher([server.url], ["Here is how."], api="completions")
    prompt = grading_prompt(SPEC, PROPOSITION, conversation("Here is how.", "c0"))
    assert grades["c0"].p_yes == pytest.approx(expected_p_yes(prompt), abs=1e-9)
    assert server.paths["/v1/completions"] == 1


@pytest.mark.parametrize("fault, attempts", [("429", 3), ("500", 2), ("timeout", 2), ("badjson", 2)])
def test_http_transient_fault_retried_to_success(fault, attempts):
    reply = f"FAULT:{fault}"
    with FakeOpenAIServer() as server:
        teacher, grades = run_teacher([server.url], [reply])
    prompt = grading_prompt(SPEC, PROPOSITION, conversation(reply, "c0"))
    assert grades["c0"].error is None
    assert grades["c0"].p_yes == pytest.approx(expected_p_yes(prompt), abs=1e-9)
    assert server.attempts[prompt] == attempts
    assert teacher.retries == attempts - 1


def test_http_missing_logprobs_fails_without_retry():
    with FakeOpenAIServer() as server:
        _, grades = run_teacher([server.url], ["FAULT:nologprobs"])
    assert grades["c0"].p_yes is None
    assert "no top logprobs" in grades["c0"].error
    assert sum(server.attempts.values()) == 1


def test_http_persistent_500_fails_after_max_retries():
    with FakeOpenAIServer() as server:
        _, grades = run_teacher([server.url], ["FAULT:always500"], max_retries=2)
    assert grades["c0"].p_yes is None
    assert "failed after 3 attempts" in grades["c0"].error
    assert "HTTP 500" in grades["c0"].error
    assert sum(server.attempts.values()) == 3


def test_http_connection_refused_is_recorded():
    with FakeOpenAIServer() as server:
        url = server.url
    _, grades = run_teacher([url], ["hello"], max_retries=1)
    assert grades["c0"].p_yes is None
    assert "connection to" in grades["c0"].error


def test_http_spreads_requests_over_urls():
    replies = [f"reply {i}" for i in range(12)]
    with FakeOpenAIServer(delay=0.02) as first, FakeOpenAIServer(delay=0.02) as second:
        _, grades = run_teacher([first.url, second.url], replies, concurrency=4)
    assert all(g.error is None for g in grades.values())
    assert sum(first.attempts.values()) >= 3
    assert sum(second.attempts.values()) >= 3
    assert sum(first.attempts.values()) + sum(second.attempts.values()) == 12


def test_http_api_key_sent_but_never_logged(monkeypatch, caplog):
    monkeypatch.setenv("RBR_TEST_KEY", "sk-secret-123")
    caplog.set_level(logging.DEBUG)
    with FakeOpenAIServer() as server:
        _, grades = run_teacher([server.url], ["FAULT:500"], api_key_env="RBR_TEST_KEY")
    assert grades["c0"].error is None
    assert server.authorization == ["Bearer sk-secret-123"] * 2
    assert "sk-secret-123" not in caplog.text


def write_rows(path, replies):
    with path.open("w") as handle:
        for i, reply in enumerate(replies):
            row = {"id": f"row{i}", "prompt": [{"role": "user", "content": f"question {i}"}], "completion": reply}
            handle.write(json.dumps(row) + "\n")


def label_command(data, store, url, *extra):
    return [
        "label", "--data", str(data), "--teacher", url, "--model", "fake", "--store", str(store),
        "--propositions", "apology,inability_to_comply", "--retry-delay", "0.01", "--timeout", "0.5",
        "--max-retries", "2", "--no-progress", *extra,
    ]


def test_label_cli_failures_recorded_exit_3(tmp_path, capsys):
    data, store = tmp_path / "rows.jsonl", tmp_path / "store"
    write_rows(data, ["fine", "FAULT:429", "FAULT:nologprobs", "FAULT:always500", ""])
    with FakeOpenAIServer() as server:
        first_code = main(label_command(data, store, server.url))
        first_output = capsys.readouterr().out
        second_code = main(label_command(data, store, server.url))
        second_output = capsys.readouterr().out

    assert first_code == 3
    assert "6 graded, 4 failed" in first_output
    assert second_code == 3
    assert "6 skipped (already labeled), 0 graded, 4 failed" in second_output
    with LabelStore(store) as labels:
        rows = list(labels.rows())
    assert len(rows) == 10
    failed = {(r["conversation_id"], r["proposition"]) for r in rows if r["error"]}
    assert failed == {(c, p) for c in ("row2", "row3") for p in ("apology", "inability_to_comply")}
    assert all(r["p_yes"] is None for r in rows if r["error"])
    assert all(0.0 <= r["p_yes"] <= 1.0 for r in rows if not r["error"])
