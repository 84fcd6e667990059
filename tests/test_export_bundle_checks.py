"""Bundle loading checks on exported bundles, the `rbr export` command and the int8 variant."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from distill.export import MIN_HEAD_AGREEMENT, export_bundle, synthetic_conversations
from rbr.bundle import load_manifest
from rbr.cli import main
from rbr.errors import BundleError


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    folder = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, folder)
    return folder


def _edit_manifest(folder, **changes):
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_appended_byte_fails_checksum(bundle_copy):
    with (bundle_copy / "model.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match="checksum mismatch for model.onnx"):
        load_manifest(bundle_copy)


def test_missing_tokenizer_is_named(bundle_copy):
    (bundle_copy / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="tokenizer.json is missing"):
        load_manifest(bundle_copy)


def test_unknown_format_version(bundle_copy):
    _edit_manifest(bundle_copy, format_version=99)
    with pytest.raises(BundleError, match="format version 99 is not supported"):
        load_manifest(bundle_copy)


def test_proposition_order_differs_from_spec(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    _edit_manifest(bundle_copy, propositions=list(reversed(manifest["propositions"])))
    with pytest.raises(BundleError, match="proposition order"):
        load_manifest(bundle_copy)


def test_score_cli_reports_tampering(bundle_copy, tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"prompt": "hi", "completion": "ok", "response_type": "Comply"}) + "\n")
    with (bundle_copy / "model.onnx").open("ab") as handle:
        handle.write(b"\0")
    code = main(["score", str(bundle_copy), "--data", str(data), "--out", str(tmp_path / "out.jsonl"), "--variant", "fp32"])
    err = capsys.readouterr().err
    assert code == 1
    assert "checksum mismatch" in err
    assert "Traceback" not in err


def test_export_cli_replaces_bundle(tiny_student, tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    rows = [{"prompt": c.prompt[0]["content"], "completion": c.completion} for c in synthetic_conversations(5)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "bundle"
    assert main(["export", str(tiny_student), "--out", str(out), "--data", str(data)]) == 0
    assert main(["export", str(tiny_student), "--out", str(out), "--data", str(data)]) == 0
    printed = capsys.readouterr().out
    assert "fused nodes: Attention 6" in printed
    assert "fp32 parity on 8 rows" in printed  # 5 rows, the 2 edge cases, and the batch of one
    assert load_manifest(out).models == {"fp32": "model.onnx"}


def test_export_refuses_foreign_folder(tiny_student, tmp_path, capsys):
    out = tmp_path / "not-a-bundle"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["export", str(tiny_student), "--out", str(out)]) == 1
    assert "contains no bundle" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"


def test_int8_and_fp16_variants_gated(tiny_student, tmp_path):
    # Untrained heads put P(yes) near 0.5, where int8 noise flips decisions, so the
    # gate may reject int8 here. Either way the manifest must agree with the files.
    report = export_bundle(tiny_student, tmp_path / "bundle", int8=True, fp16=True, parity_batch_size=16)
    manifest = load_manifest(report.bundle_dir)
    for variant in ("int8", "fp16"):
        parity = manifest.raw["parity"][variant]
        written = (report.bundle_dir / f"model.{variant}.onnx").exists()
        if not parity["checked"]:
            assert written
            assert parity["reason"].startswith("unchecked")
        elif parity["min_head_agreement"] >= MIN_HEAD_AGREEMENT:
            assert parity["max_abs_diff"] >= 0.0
            assert written
            assert manifest.models[variant] == f"model.{variant}.onnx"
        else:
            assert not written
            assert variant not in manifest.models
            assert "below 0.99" in manifest.raw["export"]["rejected"][variant]


def test_int8_graph_is_quantized(tiny_student, tmp_path):
    import onnx

    from distill.export import _quantize_int8

    report = export_bundle(tiny_student, tmp_path / "bundle", parity_batch_size=8)
    _quantize_int8(report.bundle_dir / "model.onnx", tmp_path / "int8.onnx")
    op_types = {node.op_type for node in onnx.load(str(tmp_path / "int8.onnx")).graph.node}
    assert "QAttention" in op_types
    assert "MatMulInteger" in op_types
    assert "EmbedLayerNormalization" in op_types  # embeddings stay float32
    # The float word embeddings are about half of the fp32 file; the int8 matrices shrink the rest.
    assert (tmp_path / "int8.onnx").stat().st_size < (report.bundle_dir / "model.onnx").stat().st_size * 0.75
    assert np.isfinite(report.parity["fp32"].max_abs_diff)
