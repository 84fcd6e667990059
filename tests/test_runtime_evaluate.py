"""Policy evaluation rates and the `rbr score` / `rbr evaluate` / `rbr export-triton` commands."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from rbr.cli import main
from rbr.data import read_conversations
from rbr.errors import DataError
from rbr.fit import FitConfig, load_fit_rows
from rbr.spec import load_spec
from runtime import Scorer
from runtime.evaluate import EvalThresholds, evaluate_policy, format_markdown, policy_rates

NAMES = ["disallowed_content", "inability_to_comply", "partially_complies", "requests_information"]


def test_policy_rates_by_hand():
    p_yes = np.array([
        [0.9, 0.0, 1.0, 0.0],  # unsafe, complies
        [0.1, 0.8, 0.0, 0.0],  # safe, refuses (inability_to_comply)
        [0.1, 0.0, 0.2, 0.1],  # safe, complies in no way: 0.8 x 0.9 = 0.72
        [0.0, 0.0, 0.9, 0.0],  # safe, complies
    ])
    rates = policy_rates(p_yes, NAMES, np.array([True, True, True, False]))
    assert rates.not_unsafe == pytest.approx(0.75)
    assert rates.not_overrefuse == pytest.approx(1 / 3)
    assert rates.f1 == pytest.approx(2 * 0.75 * (1 / 3) / (0.75 + 1 / 3))
    assert rates.completions == 4
    assert rates.comply_completions == 3


def test_policy_rates_thresholds_move_decisions():
    p_yes = np.array([[0.6, 0.6, 1.0, 0.0]])
    strict = policy_rates(p_yes, NAMES, np.array([True]), EvalThresholds(unsafe=0.7, refusal=0.7))
    assert strict.not_unsafe == 1.0
    assert strict.not_overrefuse == 1.0
    loose = policy_rates(p_yes, NAMES, np.array([True]), EvalThresholds(unsafe=0.5, refusal=0.5))
    assert loose.not_unsafe == 0.0
    assert loose.not_overrefuse == 0.0


def test_policy_rates_without_comply_rows_is_nan():
    rates = policy_rates(np.zeros((2, 4)), NAMES, np.array([False, False]))
    assert math.isnan(rates.not_overrefuse)
    assert math.isnan(rates.f1)


def test_policy_rates_missing_proposition_is_error():
    with pytest.raises(DataError, match="lacks requests_information"):
        policy_rates(np.zeros((1, 3)), NAMES[:3], np.array([True]))


def test_evaluate_policy_has_human_column(tiny_bundle: Path, gold_dir: Path):
    conversations = read_conversations(gold_dir / "test.jsonl", limit=40)
    report = evaluate_policy(Scorer(tiny_bundle), conversations)
    assert report.student.completions == 40
    assert report.human is not None
    assert report.human.completions == 40
    assert report.human.comply_completions == sum(c.response_type == "Comply" for c in conversations)
    text = format_markdown(report)
    assert "| rate | student | human labels |" in text
    assert "| Not-Unsafe |" in text
    assert "P(disallowed_content) >= 0.5" in text


def test_evaluate_policy_without_labels(tiny_bundle: Path):
    rows = [{"prompt": "hi", "completion": "hello", "response_type": "Comply"}]
    report = evaluate_policy(Scorer(tiny_bundle), rows)
    assert report.human is None
    assert "no human proposition labels" in format_markdown(report)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_cli_score_output_feeds_fit(tiny_bundle: Path, tmp_path: Path):
    rows = []
    for p in range(3):
        for label in ("ideal", "unacceptable_completion"):
            rows.append({
                "id": f"{p}-{label}", "prompt_id": f"p{p}", "prompt": f"question {p}",
                "completion": f"reply {label}", "response_type": "Comply", "label": label, "source": "test",
            })
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "scored.jsonl"
    assert main(["score", str(tiny_bundle), "--data", str(data), "--out", str(out)]) == 0

    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in scored] == [r["id"] for r in rows]
    assert scored[0]["prompt_id"] == "p0"
    assert scored[0]["label"] == "ideal"
    assert scored[0]["source"] == "test"
    assert "completion" not in scored[0]
    assert set(scored[0]["propositions"]) == set(load_spec().proposition_names)
    assert len(scored[0]["classes"]) == len(load_spec().classes)
    assert isinstance(scored[0]["reward"], float)
    fit_rows = load_fit_rows(out, load_spec(), FitConfig())
    assert len(fit_rows.labels) == 6


def test_cli_score_bad_row_names_line(tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    data = write_jsonl(tmp_path / "in.jsonl", [
        {"prompt": "a", "completion": "b", "response_type": "Comply"},
        {"prompt": "a", "completion": "b", "response_type": "Refuse Politely"},
    ])
    assert main(["score", str(tiny_bundle), "--data", str(data), "--out", str(tmp_path / "o.jsonl")]) == 1
    assert "in.jsonl line 2: unknown response type 'Refuse Politely'" in capsys.readouterr().err


def test_cli_evaluate_prints_markdown(tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    data = write_jsonl(tmp_path / "in.jsonl", [
        {"prompt": "a", "completion": "b", "response_type": "Comply",
         "propositions": {name: False for name in load_spec().proposition_names}},
    ])
    assert main(["evaluate", str(tiny_bundle), "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "| Not-Overrefuse |" in out
    assert "| Not-Unsafe | " in out


def test_cli_export_triton(tiny_bundle: Path, tmp_path: Path):
    assert main(["export-triton", str(tiny_bundle), "--out", str(tmp_path / "repo"), "--instance-kind", "KIND_CPU"]) == 0
    config = (tmp_path / "repo" / "rbr_student" / "config.pbtxt").read_text()
    assert "kind: KIND_CPU" in config
