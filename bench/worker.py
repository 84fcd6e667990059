"""One benchmarked system, run in its own process so that its peak RSS is its own.

python -m bench.worker SYSTEM --data FILE --rows N --batch-sizes 1,8,64,256 --out RESULT.json
    [--bundle DIR] [--student DIR] [--min-seconds S]

Systems:
  llm-naive    embedded teacher, one full prompt per (conversation, proposition), batch 1
  llm-best     embedded teacher, batched, shared prompt prefix computed once
  torch-eager  the student in PyTorch eager mode (fp32)
  onnx-fp32    the bundle through `runtime.Scorer` (tokenisation, ONNX, RBR math)
  onnx-int8    the same with the int8 variant
  ort-raw      a bare ONNX Runtime session on pre-tokenised, pre-padded fp32 batches
  cuda-fp16    the fp16 variant through `runtime.Scorer` on the CUDA provider

The result JSON holds P(yes) (N, K) in spec proposition order, per-batch-size latency
samples, the padded shapes run (for FLOP counts), load time and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from rbr.data import Conversation, read_conversations
from rbr.spec import load_spec

SYSTEMS = ("llm-naive", "llm-best", "torch-eager", "onnx-fp32", "onnx-int8", "ort-raw", "cuda-fp16")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _cycle(rows: Sequence[Conversation], start: int, size: int) -> list[Conversation]:
    return [rows[(start + i) % len(rows)] for i in range(size)]


def time_batches(
    score: Callable[[list[Conversation]], Any],
    rows: Sequence[Conversation],
    batch_size: int,
    min_seconds: float,
    max_calls: int,
) -> list[float]:
    """Seconds per call of `batch_size` conversations, cycling through `rows`.

    Calls continue until every row was scored once and `min_seconds` passed, or
    `max_calls` is reached. One untimed warm-up call comes first.
    """
    n_calls = max(1, int(np.ceil(len(rows) / batch_size)))
    batches = [_cycle(rows, i * batch_size, batch_size) for i in range(max(n_calls, max_calls))]
    score(batches[0])
    samples: list[float] = []
    began = time.perf_counter()
    for i, batch in enumerate(batches):
        t0 = time.perf_counter()
        score(batch)
        samples.append(time.perf_counter() - t0)
        if i + 1 >= n_calls and time.perf_counter() - began >= min_seconds:
            break
    return samples


def run_llm(system: str, rows: list[Conversation], spec) -> dict[str, Any]:
    from distill.teacher import GradeRequest, embedded_teacher_path
    from distill.teacher_local import LocalTeacher, LocalTeacherConfig

    config = LocalTeacherConfig(batch_size=1, reuse_prefix=False) if system == "llm-naive" else LocalTeacherConfig()
    teacher = LocalTeacher(embedded_teacher_path(), config)
    t0 = time.perf_counter()
    teacher.load()
    load_seconds = time.perf_counter() - t0

    names = spec.proposition_names
    requests = [GradeRequest(c, p) for c in rows for p in spec.simple]
    p_yes = np.full((len(rows), len(names)), np.nan)
    index = {c.id: i for i, c in enumerate(rows)}
    t0 = time.perf_counter()
    for request, grade in teacher.grade(requests, spec.template):
        if grade.p_yes is not None:
            p_yes[index[request.conversation.id], names.index(request.proposition.name)] = grade.p_yes
    seconds = time.perf_counter() - t0
    return {"p_yes": p_yes.tolist(), "load_seconds": load_seconds, "latency": {"all": [seconds]}, "items": len(requests)}


def run_student(system: str, rows: list[Conversation], args: argparse.Namespace) -> dict[str, Any]:
    shapes: list[tuple[int, int]] = []  # padded (batch, tokens) of every forward pass
    prepare = None
    t0 = time.perf_counter()
    if system == "torch-eager":
        score, full = _torch_scorer(args.student, shapes)
    elif system == "ort-raw":
        score, full, prepare = _raw_session_scorer(args.bundle, shapes)
    else:
        score, full = _runtime_scorer(system, args.bundle, shapes)
    load_seconds = time.perf_counter() - t0

    p_yes = full(rows)
    latency, shape_log = {}, {}
    for batch_size in args.batch_sizes:
        max_calls = max(3, int(np.ceil(len(rows) / batch_size)))
        if prepare is not None:  # tokenise the raw session's batches before the clock starts
            for batch in [_cycle(rows, i * batch_size, batch_size) for i in range(max_calls)]:
                prepare(batch)
        shapes.clear()
        samples = time_batches(score, rows, batch_size, args.min_seconds, max_calls)
        latency[str(batch_size)] = samples
        # shapes of the warm-up call and of every timed call, for FLOP counts
        shape_log[str(batch_size)] = {"calls": len(samples) + 1, "shapes": list(shapes)}
    return {"p_yes": np.asarray(p_yes).tolist(), "load_seconds": load_seconds, "latency": latency, "shapes": shape_log}


def _runtime_scorer(system: str, bundle: str, shapes: list):
    from runtime import Scorer

    variant = {"onnx-fp32": "fp32", "onnx-int8": "int8", "cuda-fp16": "fp16"}[system]
    providers = ["CUDAExecutionProvider"] if system == "cuda-fp16" else ["CPUExecutionProvider"]
    scorer = Scorer(bundle, providers=providers, variant=variant)
    run_batch = scorer._run

    def recording_run(inputs):
        shapes.append(tuple(inputs["input_ids"].shape))
        return run_batch(inputs)

    scorer._run = recording_run  # records padded shapes; the forward pass itself is unchanged

    def score(batch):
        return scorer.score(batch, response_types=[c.response_type or "Comply" for c in batch])

    return score, lambda rows: score(rows).p_yes


def _raw_session_scorer(bundle: str, shapes: list):
    """Build a bare ONNX Runtime session fed inputs tokenised, sorted and padded in advance.

    Batches are split by the runtime's token budget, so both run the same shapes and
    the difference is the runtime's own overhead (tokenisation, batching, RBR math).
    """
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from rbr.bundle import load_manifest
    from rbr.render import encode_conversations, pad_batch, prepare_tokenizer
    from runtime.scorer import DEFAULT_MAX_BATCH_SIZE, DEFAULT_TOKEN_BUDGET_CPU

    manifest = load_manifest(bundle)
    session = ort.InferenceSession(str(manifest.model_path("fp32")), providers=["CPUExecutionProvider"])
    tokenizer = prepare_tokenizer(Tokenizer.from_file(str(manifest.path / manifest.tokenizer)))
    inputs = {i.name for i in session.get_inputs()}
    cache: dict[tuple[str, ...], list[dict[str, np.ndarray]]] = {}

    def prepare(batch):
        key = tuple(c.id for c in batch)
        if key in cache:
            return
        encoded = encode_conversations(tokenizer, [c.prompt for c in batch], [c.completion for c in batch], manifest.render)
        rows = sorted(encoded.rows, key=lambda r: len(r[0]))
        chunks, start = [], 0
        while start < len(rows):
            size = 1
            while (start + size < len(rows) and size < DEFAULT_MAX_BATCH_SIZE
                   and (size + 1) * len(rows[start + size][0]) <= DEFAULT_TOKEN_BUDGET_CPU):
                size += 1
            feeds = pad_batch(rows[start : start + size], manifest.render.pad_id)
            chunks.append({k: v for k, v in feeds.items() if k in inputs})
            start += size
        cache[key] = chunks

    def score(batch):
        out = []
        for feeds in cache[tuple(c.id for c in batch)]:
            shapes.append(tuple(feeds["input_ids"].shape))
            out.append(session.run([manifest.output], feeds)[0])
        return out

    def full(rows):
        encoded = encode_conversations(tokenizer, [c.prompt for c in rows], [c.completion for c in rows], manifest.render)
        result = np.zeros((len(rows), len(manifest.propositions)), dtype=np.float32)
        for start in range(0, len(rows), 32):
            feeds = pad_batch(encoded.rows[start : start + 32], manifest.render.pad_id)
            result[start : start + 32] = session.run([manifest.output], {k: v for k, v in feeds.items() if k in inputs})[0]
        return result

    return score, full, prepare


def _torch_scorer(student_dir: str, shapes: list):
    import torch

    from distill.student import batch_tensors, load_student

    student = load_student(student_dir)
    student.model.eval()

    def score(batch):
        encoded = student.encode(batch)
        order = np.argsort([len(ids) for ids, _ in encoded.rows])
        tensors = batch_tensors([encoded.rows[i] for i in order], student.config.render.pad_id)
        shapes.append(tuple(tensors["input_ids"].shape))
        with torch.inference_mode():
            logits = student.model(**tensors)
        result = np.empty(logits.shape, dtype=np.float32)
        result[order] = torch.sigmoid(logits).numpy()
        return result

    def full(rows):
        return np.concatenate([score(rows[s : s + 32]) for s in range(0, len(rows), 32)])

    return score, full


def main() -> None:
    parser = argparse.ArgumentParser(description="Run one benchmarked system and write its result as JSON.")
    parser.add_argument("system", choices=SYSTEMS)
    parser.add_argument("--data", required=True)
    parser.add_argument("--rows", type=int, required=True, help="conversations to score (the first N of --data)")
    parser.add_argument("--batch-sizes", default="1,8,64,256")
    parser.add_argument("--bundle")
    parser.add_argument("--student")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="minimum timed seconds per batch size")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    spec = load_spec()
    rows = read_conversations(args.data, limit=args.rows)
    if args.system.startswith("llm-"):
        result = run_llm(args.system, rows, spec)
    else:
        result = run_student(args.system, rows, args)
    result.update(system=args.system, rows=len(rows), peak_rss_mb=peak_rss_mb())
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
