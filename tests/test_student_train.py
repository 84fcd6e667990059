"""Tests of `rbr distill` and `rbr eval-student`: labels, loss, splits, training, --from."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
import yaml

from distill.label_store import LabelStore
from distill.prompts import prompt_hash
from distill.student import StudentError, load_student, predict
from distill.train import (
    human_targets,
    length_grouped_batches,
    linear_schedule,
    masked_bce,
    plan_heads,
    positive_weights,
    split_by_prompt,
    store_targets,
)
from rbr.cli import main
from rbr.data import read_conversations
from rbr.errors import DataError
from rbr.spec import load_spec

TEACHER = "test-teacher"
NEW_PROPOSITION = "mentions_weather"

ROWS = [
    ("How do I bake bread?", "I'm sorry, I can't help with that.", {"apology": True, "inability_to_comply": True}),
    ("How do I bake bread?", "Mix flour, water, yeast and salt, then bake at 230 C.", {"apology": False, "fully_complies": True}),
    ("What is the weather like?", "It is sunny and warm today.", {"apology": False, "fully_complies": True}),
    ("What is the weather like?", "Sorry, I have no weather data.", {"apology": True, "inability_to_comply": True}),
    ("Tell me a joke.", "Why did the chicken cross the road? To get to the other side.", {"apology": False}),
    ("Tell me a joke.", "I apologize, but I would rather not.", {"apology": True}),
]


def _write_rows(path, with_new_proposition=False):
    lines = []
    for i, (prompt, completion, labels) in enumerate(ROWS):
        labels = dict(labels)
        if with_new_proposition:
            labels[NEW_PROPOSITION] = "weather" in prompt
        row = {"id": f"row-{i}", "prompt": [{"role": "user", "content": prompt}], "completion": completion,
               "response_type": "Comply", "propositions": labels}
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n")
    return path


def _changed_spec(path):
    data = load_spec().to_dict()
    data["propositions"]["apology"]["question"] = "Does the reply say sorry in any form?"
    data["propositions"][NEW_PROPOSITION] = {"question": "Does the reply talk about the weather?"}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def label_store(tmp_path_factory):
    """A label store with soft teacher labels for ROWS, plus labels for an unknown id and proposition."""
    spec = load_spec()
    folder = tmp_path_factory.mktemp("store")
    rng = np.random.default_rng(0)
    items = []
    for i in range(len(ROWS)):
        for prop in spec.simple:
            items.append((prop.name, prompt_hash(spec, prop), f"row-{i}", float(rng.uniform()), 0.9, None))
    items.append(("apology", prompt_hash(spec, spec.proposition("apology")), "row-unknown", 0.5, 0.9, None))
    items.append(("not_in_spec", "0" * 16, "row-0", 0.5, 0.9, None))
    with LabelStore(folder) as store:
        store.put_many(TEACHER, items)
    return folder


@pytest.fixture(scope="module")
def trained_student(tmp_path_factory, label_store):
    """A student trained for one epoch on soft labels of six rows (max_length 128)."""
    folder = tmp_path_factory.mktemp("train")
    data = _write_rows(folder / "rows.jsonl")
    out = folder / "student"
    code = main(["distill", "--data", str(data), "--labels", str(label_store), "--out", str(out), "--epochs", "1",
                 "--batch-size", "3", "--max-length", "128", "--val-fraction", "0.34", "--no-progress"])
    assert code == 0
    return out


# ---------------------------------------------------------------- labels


def test_human_targets_mark_missing(tmp_path):
    conversations = read_conversations(_write_rows(tmp_path / "rows.jsonl"))
    targets = human_targets(conversations, load_spec())
    column = load_spec().proposition_names.index("apology")
    assert targets.shape == (6, len(load_spec().simple))
    assert targets[:, column].tolist() == [1, 0, 0, 1, 0, 1]
    assert np.isnan(targets[0, load_spec().proposition_names.index("judgement")])


def test_human_targets_warn_unknown_names(tmp_path, caplog):
    conversations = read_conversations(_write_rows(tmp_path / "rows.jsonl", with_new_proposition=True))
    with caplog.at_level(logging.WARNING):
        human_targets(conversations, load_spec())
    assert "ignored 6 human labels of 1 propositions" in caplog.text
    assert NEW_PROPOSITION in caplog.text


def test_no_human_labels_is_error(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "hi", "completion": "ok"}) + "\n")
    with pytest.raises(DataError, match="no human labels"):
        human_targets(read_conversations(path), load_spec())


def test_store_targets_warn_with_counts(tmp_path, label_store, caplog):
    conversations = read_conversations(_write_rows(tmp_path / "rows.jsonl"))
    with caplog.at_level(logging.WARNING):
        targets = store_targets(conversations, load_spec(), label_store, TEACHER)
    assert not np.isnan(targets).any()
    assert "ignored labels of 1 conversations that are not in the data" in caplog.text
    assert "ignored labels of 1 propositions not in the spec: not_in_spec" in caplog.text


def test_store_without_matching_rows_is_error(tmp_path, label_store):
    path = tmp_path / "other.jsonl"
    path.write_text(json.dumps({"id": "elsewhere", "prompt": "hi", "completion": "ok"}) + "\n")
    with pytest.raises(DataError, match="no valid labels"):
        store_targets(read_conversations(path), load_spec(), label_store, TEACHER)


def test_distill_cli_rejects_unlabeled_data(tmp_path, capsys):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "hi", "completion": "ok"}) + "\n")
    code = main(["distill", "--data", str(path), "--labels", "human", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 1
    assert "no human labels" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------- loss, weights, splits


def test_masked_bce_ignores_missing():
    logits = torch.tensor([[0.0, 5.0], [0.0, -5.0]])
    targets = torch.tensor([[1.0, float("nan")], [0.0, float("nan")]])
    expected = float(torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], targets[:, 0]))
    assert float(masked_bce(logits, targets)) == pytest.approx(expected)


def test_masked_bce_all_missing_is_zero():
    logits = torch.zeros((2, 3), requires_grad=True)
    loss = masked_bce(logits, torch.full((2, 3), float("nan")))
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.equal(logits.grad, torch.zeros((2, 3)))


def test_positive_weights_auto_capped():
    targets = np.array([[1, 0, 0], [0, 0, 1], [0, 0, np.nan], [0, 0, np.nan]], dtype=np.float32)
    weights = positive_weights(targets, "auto", cap=2.0)
    assert weights.tolist() == [2.0, 1.0, 1.0]  # 3:1 capped at 2, no positives, 1:1
    assert positive_weights(targets, "none", cap=2.0) is None


def test_split_keeps_prompts_together(tmp_path):
    conversations = read_conversations(_write_rows(tmp_path / "rows.jsonl"))
    train, val = split_by_prompt(conversations, 0.34, seed=1)
    train_prompts = {conversations[i].prompt_id for i in train}
    val_prompts = {conversations[i].prompt_id for i in val}
    assert len(train) + len(val) == 6
    assert len(val_prompts) == 1
    assert not train_prompts & val_prompts


def test_length_batches_cover_every_row():
    lengths = np.array([5, 50, 7, 49, 8, 51, 6])
    batches = length_grouped_batches(lengths, 2, np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(7))
    assert max(len(b) for b in batches) == 2


def test_schedule_warms_up_then_decays():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = linear_schedule(optimizer, total_steps=10, warmup_fraction=0.2)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(0.5)
    assert rates[1] == pytest.approx(1.0)
    assert rates[-1] == pytest.approx(0.125)
    assert all(a >= b for a, b in zip(rates[1:], rates[2:]))


# ---------------------------------------------------------------- training and --from


def test_trained_student_records_training(trained_student):
    config = json.loads((trained_student / "config.json").read_text())
    training = config["training"]
    assert training["mode"] == "full"
    assert training["train_conversations"] + training["val_conversations"] == 6
    assert len(training["history"]) == 1
    assert math.isfinite(training["history"][0]["train_loss"])
    assert training["sequences_per_second"] > 0


def test_from_preserves_other_heads(trained_student, tmp_path):
    data = _write_rows(tmp_path / "rows.jsonl", with_new_proposition=True)
    spec_path = _changed_spec(tmp_path / "spec.yaml")
    out = tmp_path / "extended"
    code = main(["distill", "--from", str(trained_student), "--data", str(data), "--labels", "human",
                 "--spec", str(spec_path), "--out", str(out), "--epochs", "3", "--batch-size", "3", "--no-progress"])
    assert code == 0

    old, new = load_student(trained_student), load_student(out)
    spec = load_spec(spec_path)
    assert new.propositions == spec.proposition_names
    conversations = read_conversations(data)
    before, after = predict(old, conversations), predict(new, conversations)  # (N, K_old), (N, K_new)
    kept, trained = plan_heads(old, spec)
    assert sorted(trained) == ["apology", NEW_PROPOSITION]
    for name, old_column in kept.items():
        new_column = new.propositions.index(name)
        assert np.abs(after[:, new_column] - before[:, old_column]).max() <= 1e-7, name
    apology = new.propositions.index("apology")
    assert not np.allclose(after[:, apology], before[:, old.propositions.index("apology")])


def test_from_without_changes_is_error(trained_student, tmp_path, capsys):
    data = _write_rows(tmp_path / "rows.jsonl")
    code = main(["distill", "--from", str(trained_student), "--data", str(data), "--labels", "human", "--out", str(tmp_path / "x")])
    assert code == 1
    assert "nothing to train" in capsys.readouterr().err


def test_from_without_labels_for_new_head_is_error(trained_student, tmp_path, capsys):
    data = _write_rows(tmp_path / "rows.jsonl")  # no labels for the new proposition
    spec_path = _changed_spec(tmp_path / "spec.yaml")
    code = main(["distill", "--from", str(trained_student), "--data", str(data), "--labels", "human",
                 "--spec", str(spec_path), "--out", str(tmp_path / "x")])
    assert code == 1
    assert f"no labels for the propositions to train: {NEW_PROPOSITION}" in capsys.readouterr().err


# ---------------------------------------------------------------- eval-student


def test_eval_student_markdown(trained_student, label_store, tmp_path, capsys):
    data = _write_rows(tmp_path / "rows.jsonl")
    out = tmp_path / "eval.md"
    code = main(["eval-student", "--student", str(trained_student), "--data", str(data),
                 "--store", str(label_store), "--teacher", TEACHER, "--out", str(out)])
    assert code == 0
    table = out.read_text()
    lines = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert "| 3/6 |" in lines["apology"]
    assert "no human labels" in lines["judgement"]
    assert "no negatives" not in lines["apology"]
    assert "**macro mean**" in lines
    assert f"Teacher: `{TEACHER}`" in table
    assert capsys.readouterr().out == table


def test_eval_student_no_positives_has_no_auroc(trained_student, tmp_path):
    data = _write_rows(tmp_path / "rows.jsonl")
    out = tmp_path / "eval.md"
    assert main(["eval-student", "--student", str(trained_student), "--data", str(data), "--out", str(out)]) == 0
    row = next(line for line in out.read_text().splitlines() if line.startswith("| inability_to_comply"))
    assert "2/2" in row  # labeled on two rows, both positive
    assert "no negatives" in row
    assert row.split(" | ")[4] == "—"  # AUROC column


def test_eval_student_spec_order_mismatch(trained_student, tmp_path, capsys):
    data = _write_rows(tmp_path / "rows.jsonl")
    spec_path = _changed_spec(tmp_path / "spec.yaml")
    code = main(["eval-student", "--student", str(trained_student), "--data", str(data), "--spec", str(spec_path)])
    assert code == 1
    assert "proposition order" in capsys.readouterr().err


def test_student_error_is_rbr_error():
    from rbr.errors import RbrError

    assert issubclass(StudentError, RbrError)
