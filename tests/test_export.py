"""Tests of the ONNX export: graph signature, parity with PyTorch, manifest records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from distill.export import (
    FP32_MAX_ABS_DIFF,
    compare,
    edge_case_conversations,
    parity_batches,
    synthetic_conversations,
)
from distill.student import load_student, predict_rows
from rbr.bundle import load_manifest
from rbr.render import encode_conversations, prepare_tokenizer
from rbr.spec import load_spec


def _session(bundle: Path, name: str = "model.onnx") -> ort.InferenceSession:
    return ort.InferenceSession(str(bundle / name), providers=["CPUExecutionProvider"])


def _bundle_rows(bundle: Path, conversations):
    from tokenizers import Tokenizer

    manifest = load_manifest(bundle)
    tokenizer = prepare_tokenizer(Tokenizer.from_file(str(bundle / manifest.tokenizer)))
    encoded = encode_conversations(
        tokenizer, [c.prompt for c in conversations], [c.completion for c in conversations], manifest.render
    )
    return encoded.rows, manifest


def test_bundle_manifest_loads(tiny_bundle):
    manifest = load_manifest(tiny_bundle)
    assert list(manifest.propositions) == load_spec().proposition_names
    assert manifest.models == {"fp32": "model.onnx"}
    assert manifest.render.max_length == 128
    assert manifest.raw["parity"]["fp32"]["passed"] is True
    assert manifest.raw["parity"]["fp32"]["max_abs_diff"] <= FP32_MAX_ABS_DIFF
    assert "onnxruntime" in " ".join(manifest.raw["versions"])
    assert "torch" in manifest.raw["versions"]


def test_onnx_signature_dynamic_axes(tiny_bundle):
    model = onnx.load(str(tiny_bundle / "model.onnx"))
    inputs = {i.name: i for i in model.graph.input}
    assert sorted(inputs) == ["attention_mask", "input_ids", "token_type_ids"]
    for tensor in inputs.values():
        assert tensor.type.tensor_type.elem_type == onnx.TensorProto.INT64
        dims = tensor.type.tensor_type.shape.dim
        assert len(dims) == 2
        assert dims[0].dim_param and dims[1].dim_param  # symbolic batch and sequence axes
    outputs = [o.name for o in model.graph.output]
    assert outputs == ["p_yes"]
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_export_fuses_attention(tiny_bundle):
    fused = json.loads((tiny_bundle / "manifest.json").read_text())["export"]["fused_nodes"]
    op_types = [node.op_type for node in onnx.load(str(tiny_bundle / "model.onnx")).graph.node]
    assert fused.get("Attention") == 6
    assert op_types.count("Attention") == 6
    assert "EmbedLayerNormalization" in op_types
    assert "Sigmoid" in op_types


def test_onnx_matches_torch_mixed_lengths(tiny_bundle, tiny_student):
    conversations = synthetic_conversations(20) + edge_case_conversations()
    rows, manifest = _bundle_rows(tiny_bundle, conversations)
    lengths = [len(ids) for ids, _ in rows]
    assert min(lengths) < 10
    assert max(lengths) == manifest.render.max_length

    student = load_student(tiny_student)
    expected = predict_rows(student, rows)  # (N, K), batches sorted by length
    session = _session(tiny_bundle)
    got = np.concatenate([session.run(["p_yes"], batch)[0] for batch in parity_batches(rows, manifest.render.pad_id, 7)[1:]])
    assert got.shape == (len(rows), len(manifest.propositions))
    assert got.dtype == np.float32
    assert np.abs(got - expected).max() <= FP32_MAX_ABS_DIFF


def test_padding_does_not_change_scores(tiny_bundle):
    conversations = synthetic_conversations(6)
    rows, manifest = _bundle_rows(tiny_bundle, conversations)
    session = _session(tiny_bundle)
    alone = np.concatenate([session.run(["p_yes"], parity_batches([row], manifest.render.pad_id)[0])[0] for row in rows])
    batched = session.run(["p_yes"], parity_batches(rows, manifest.render.pad_id)[1])[0]
    assert np.abs(alone - batched).max() <= 1e-5


def test_tokenizer_json_has_no_truncation(tiny_bundle):
    config = json.loads((tiny_bundle / "tokenizer.json").read_text())
    assert config["truncation"] is None
    assert config["padding"] is None


def test_compare_flags_disagreement():
    reference = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.4]], dtype=np.float32)
    candidate = reference.copy()
    candidate[0, 1] = 0.6  # one flipped decision in the second proposition
    parity = compare("int8", reference, candidate, ["a", "b"], "CPUExecutionProvider")
    assert parity.passed is False
    assert parity.worst_proposition == "b"
    assert parity.min_head_agreement == pytest.approx(2 / 3)
    assert parity.max_abs_diff == pytest.approx(0.5)


def test_compare_fp32_uses_abs_gate():
    reference = np.full((4, 3), 0.3, dtype=np.float32)
    assert compare("fp32", reference, reference + 5e-5, ["a", "b", "c"], "cpu").passed is True
    assert compare("fp32", reference, reference + 1e-3, ["a", "b", "c"], "cpu").passed is False


def test_compare_min_agreement_is_configurable():
    reference = np.array([[0.9], [0.8], [0.7], [0.2]], dtype=np.float32)
    candidate = reference.copy()
    candidate[3, 0] = 0.6  # one flipped decision out of four
    assert compare("int8", reference, candidate, ["a"], "cpu", min_agreement=0.75).passed is True
    assert compare("int8", reference, candidate, ["a"], "cpu", min_agreement=0.76).passed is False


def test_export_rejects_invalid_min_agreement(tiny_student, tmp_path):
    from distill.export import ExportError, export_bundle

    with pytest.raises(ExportError, match="min_agreement=1.5"):
        export_bundle(tiny_student, tmp_path / "bundle", min_agreement=1.5)
