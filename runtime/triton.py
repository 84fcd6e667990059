"""Export a bundle's student as a Triton Inference Server model repository.

Triton's ONNX Runtime backend serves only the graph: token ids in, P(yes) out. The
tokenisation (`rbr.render`) and the RBR math (classes, features, reward) stay on the
client, which keeps the bundle folder and calls `model_inputs` before the request and
`Scorer.score_from_p_yes` after it.

Repository layout written by `export_triton`:

    REPO/<model_name>/config.pbtxt
    REPO/<model_name>/1/model.onnx   (plus model.onnx.data when the weights are external)
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnxruntime as ort

from rbr.bundle import load_manifest
from rbr.errors import BundleError, RbrError
from rbr.render import pad_batch
from runtime.scorer import Scorer, to_conversation

logger = logging.getLogger(__name__)

# ONNX tensor element types -> Triton data types
_TRITON_TYPES = {
    "tensor(int64)": "TYPE_INT64",
    "tensor(int32)": "TYPE_INT32",
    "tensor(float)": "TYPE_FP32",
    "tensor(float16)": "TYPE_FP16",
    "tensor(double)": "TYPE_FP64",
}
INSTANCE_KINDS = ("KIND_AUTO", "KIND_GPU", "KIND_CPU")


def export_triton(
    bundle_dir: str | Path,
    repository: str | Path,
    model_name: str = "rbr_student",
    variant: str = "fp32",
    max_batch_size: int = 64,
    max_queue_delay_us: int = 5000,
    instance_kind: str = "KIND_AUTO",
    instance_count: int = 1,
) -> Path:
    """Write a Triton model repository for one model variant; returns the model folder.

    The ONNX graph is copied unchanged into version 1, and its input and output names,
    types and dims are read from the graph itself.
    """
    if instance_kind not in INSTANCE_KINDS:
        raise RbrError(f"unknown instance kind {instance_kind!r}; expected one of {', '.join(INSTANCE_KINDS)}.")
    if max_batch_size < 1 or instance_count < 1 or max_queue_delay_us < 0:
        raise RbrError("max_batch_size and instance_count must be at least 1 and max_queue_delay_us at least 0.")
    manifest = load_manifest(bundle_dir)
    source = manifest.model_path(variant)

    # read the graph's inputs and outputs (CPU session; nothing runs)
    session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    inputs = [(i.name, _triton_type(i.type), [-1]) for i in session.get_inputs()]  # dims after the batch dim
    outputs = [(o.name, _triton_type(o.type), [len(manifest.propositions)]) for o in session.get_outputs()
               if o.name == manifest.output]
    if not outputs:
        raise BundleError(f"{source}: the ONNX model has no output {manifest.output!r}; re-export the bundle.")

    # copy the model (and its external weights, when the exporter wrote them apart)
    model_dir = Path(repository) / model_name
    version_dir = model_dir / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, version_dir / "model.onnx")
    for name in manifest.raw["files"]:
        if name.startswith(source.name) and name != source.name:
            shutil.copyfile(manifest.path / name, version_dir / name)

    config = triton_config(model_name, inputs, outputs, max_batch_size, max_queue_delay_us, instance_kind, instance_count)
    (model_dir / "config.pbtxt").write_text(config, encoding="utf-8")
    logger.info("wrote Triton model %s (%s variant of %s) to %s", model_name, variant, manifest.path, model_dir)
    return model_dir


def triton_config(
    model_name: str,
    inputs: Sequence[tuple[str, str, list[int]]],
    outputs: Sequence[tuple[str, str, list[int]]],
    max_batch_size: int,
    max_queue_delay_us: int,
    instance_kind: str = "KIND_AUTO",
    instance_count: int = 1,
) -> str:
    """config.pbtxt text: ONNX Runtime backend, dynamic batching, tensors as (name, type, dims)."""
    lines = [
        f'name: "{model_name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
        "input [",
        ",\n".join(_tensor(*t) for t in inputs),
        "]",
        "output [",
        ",\n".join(_tensor(*t) for t in outputs),
        "]",
        "dynamic_batching {",
        f"  max_queue_delay_microseconds: {max_queue_delay_us}",
        "}",
        f"instance_group [ {{ count: {instance_count}, kind: {instance_kind} }} ]",
    ]
    return "\n".join(lines) + "\n"


def model_inputs(
    scorer: Scorer, conversations: Sequence[Any], pad_to_multiple_of: int = 64
) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Client-side tokenisation for a Triton request: (row indices, model inputs (B, T)) per batch.

    Padding every batch to a multiple of `pad_to_multiple_of` tokens gives requests of
    similar length the same shape, which Triton's dynamic batcher needs to merge them.
    Put each batch's P(yes) into rows `indices` of an (N, K) array and pass it to
    `scorer.score_from_p_yes` with `scorer.prepare(conversations)`.
    """
    parsed = [to_conversation(item, f"input {i}") for i, item in enumerate(conversations)]
    encoded = scorer.encode(parsed)
    lengths = np.array([len(ids) for ids, _ in encoded.rows], dtype=np.int64)  # (N,)
    batches = []
    for rows in scorer.plan_batches(lengths):
        arrays = pad_batch([encoded.rows[i] for i in rows], scorer.manifest.render.pad_id, pad_to_multiple_of)
        batches.append((rows, {name: arrays[name] for name in scorer.input_names}))
    return batches


def _tensor(name: str, data_type: str, dims: list[int]) -> str:
    return f'  {{\n    name: "{name}"\n    data_type: {data_type}\n    dims: [ {", ".join(map(str, dims))} ]\n  }}'


def _triton_type(onnx_type: str) -> str:
    if onnx_type not in _TRITON_TYPES:
        raise BundleError(f"ONNX tensor type {onnx_type} has no Triton equivalent in this exporter.")
    return _TRITON_TYPES[onnx_type]
