"""Tests of the student model folder: creation, save/load round trip, rendering, load errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from distill.student import (
    StudentError,
    create_student,
    default_backbone_dir,
    load_student,
    predict,
)
from distill.export import synthetic_conversations, edge_case_conversations
from rbr.render import RenderSettings, encode_conversations, prepare_tokenizer
from rbr.spec import load_spec


def test_student_folder_files(tiny_student):
    names = {p.name for p in tiny_student.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    config = json.loads((tiny_student / "config.json").read_text())
    assert config["propositions"] == load_spec().proposition_names
    assert config["spec_hash"] == load_spec().hash()
    assert config["render"]["max_length"] == 128
    assert config["backbone"]["model_type"] == "bert"
    assert config["pooling"] == "reply_mean"


def test_load_gives_same_outputs(tiny_student):
    conversations = synthetic_conversations(5)
    first = predict(load_student(tiny_student), conversations)
    second = predict(load_student(tiny_student, attn_implementation="eager"), conversations)
    assert first.shape == (5, len(load_spec().simple))
    assert np.abs(first - second).max() <= 1e-5


def test_same_seed_same_heads():
    spec = load_spec()
    a = create_student(spec, render=RenderSettings(max_length=64), seed=3)
    b = create_student(spec, render=RenderSettings(max_length=64), seed=3)
    c = create_student(spec, render=RenderSettings(max_length=64), seed=4)
    assert torch.equal(a.model.heads.weight, b.model.heads.weight)
    assert not torch.equal(a.model.heads.weight, c.model.heads.weight)


def test_rendering_matches_bundle_tokenizer(tiny_student, tiny_bundle):
    # Training renders with the transformers backend tokenizer; the runtime reads tokenizer.json.
    conversations = synthetic_conversations(8) + edge_case_conversations()
    student = load_student(tiny_student)
    from_training = student.encode(conversations).rows
    runtime_tokenizer = prepare_tokenizer(Tokenizer.from_file(str(tiny_bundle / "tokenizer.json")))
    from_runtime = encode_conversations(
        runtime_tokenizer, [c.prompt for c in conversations], [c.completion for c in conversations], student.config.render
    ).rows
    assert from_training == from_runtime
    assert max(len(ids) for ids, _ in from_training) == 128


def test_rendering_pairs_conversation_and_reply(tiny_student):
    student = load_student(tiny_student)
    conversation = edge_case_conversations()[0]  # prompt "hi", completion "ok"
    ids, type_ids = student.encode([conversation]).rows[0]
    tokens = [student.hf_tokenizer.convert_ids_to_tokens(i) for i in ids]
    assert tokens == ["[CLS]", "user", ":", "hi", "[SEP]", "ok", "[SEP]"]
    assert type_ids == [0, 0, 0, 0, 0, 1, 1]


def test_padding_keeps_student_outputs(tiny_student):
    student = load_student(tiny_student)
    conversations = synthetic_conversations(6)
    batched = predict(student, conversations, batch_size=6)
    alone = np.concatenate([predict(student, [c], batch_size=1) for c in conversations])
    assert np.abs(batched - alone).max() <= 1e-5


def test_reordered_config_is_rejected(tiny_student, tmp_path):
    folder = tmp_path / "student"
    shutil.copytree(tiny_student, folder)
    config = json.loads((folder / "config.json").read_text())
    config["propositions"] = list(reversed(config["propositions"]))
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(StudentError, match="head order"):
        load_student(folder)


def test_edited_spec_is_rejected(tiny_student, tmp_path):
    folder = tmp_path / "student"
    shutil.copytree(tiny_student, folder)
    config = json.loads((folder / "config.json").read_text())
    config["spec"]["propositions"]["apology"]["question"] = "Is the reply polite?"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(StudentError, match="recorded hash"):
        load_student(folder)


def test_missing_weights_is_rejected(tiny_student, tmp_path):
    folder = tmp_path / "student"
    shutil.copytree(tiny_student, folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(StudentError, match="not a student folder"):
        load_student(folder)


def test_backbone_without_config_is_rejected(tmp_path):
    with pytest.raises(StudentError, match="no config.json"):
        create_student(load_spec(), backbone_dir=tmp_path)


def test_max_length_beyond_positions_is_rejected():
    with pytest.raises(StudentError, match="exceeds the 512 positions"):
        create_student(load_spec(), default_backbone_dir(), RenderSettings(max_length=1024))


def test_whole_input_pooling_round_trip(tmp_path):
    from distill.student import save_student

    student = create_student(load_spec(), render=RenderSettings(max_length=64), pooling="mean")
    folder = save_student(student, tmp_path / "student")
    conversations = synthetic_conversations(3)
    assert load_student(folder).model.pooling == "mean"
    assert np.abs(predict(load_student(folder), conversations) - predict(student, conversations)).max() <= 1e-5


def test_unknown_pooling_is_rejected(tiny_student, tmp_path):
    folder = tmp_path / "student"
    shutil.copytree(tiny_student, folder)
    config = json.loads((folder / "config.json").read_text())
    config["pooling"] = "cls"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(StudentError, match="pooling 'cls'"):
        load_student(folder)


def test_reply_pooling_still_reads_context(tiny_student):
    # The reply-only mean still sees the conversation through attention.
    student = load_student(tiny_student)
    base = synthetic_conversations(1)[0]
    other = type(base)(id="other", prompt=({"role": "user", "content": "a different question entirely"},), completion=base.completion)
    probs = predict(student, [base, other])
    assert not np.allclose(probs[0], probs[1])
