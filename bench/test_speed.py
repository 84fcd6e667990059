"""pytest-benchmark suite: the scorer's paths on the same 40 conversations, and the fitter.

Run with `make bench`. Compare rows of one run as ratios; the full side-by-side report
against LLM grading is `rbr bench`.
"""

from __future__ import annotations

import numpy as np
import pytest

BATCH = 40  # all quickstart conversations in one call


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_runtime_scorer(benchmark, bench_bundle, conversations, variant):
    from runtime import Scorer

    scorer = Scorer(bench_bundle, providers=["CPUExecutionProvider"], variant=variant)
    result = benchmark.pedantic(scorer.score, args=(conversations,), rounds=5, warmup_rounds=1)
    assert result.p_yes.shape == (BATCH, len(scorer.spec.simple))


def test_raw_onnx_session(benchmark, bench_bundle, conversations):
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from rbr.bundle import load_manifest
    from rbr.render import encode_conversations, pad_batch, prepare_tokenizer

    manifest = load_manifest(bench_bundle)
    session = ort.InferenceSession(str(manifest.model_path("fp32")), providers=["CPUExecutionProvider"])
    tokenizer = prepare_tokenizer(Tokenizer.from_file(str(bench_bundle / manifest.tokenizer)))
    encoded = encode_conversations(tokenizer, [c.prompt for c in conversations], [c.completion for c in conversations], manifest.render)
    feeds = pad_batch(sorted(encoded.rows, key=lambda r: len(r[0])), manifest.render.pad_id)
    names = {i.name for i in session.get_inputs()}
    feeds = {k: v for k, v in feeds.items() if k in names}
    p_yes = benchmark.pedantic(session.run, args=([manifest.output], feeds), rounds=5, warmup_rounds=1)[0]
    assert p_yes.shape[0] == BATCH


def test_torch_eager(benchmark, bench_student, conversations):
    from distill.student import load_student, predict

    student = load_student(bench_student)
    p_yes = benchmark.pedantic(predict, args=(student, conversations), kwargs={"batch_size": BATCH}, rounds=3, warmup_rounds=1)
    assert p_yes.shape[0] == BATCH


def test_class_probabilities_100k(benchmark):
    from rbr.features import FeatureModel
    from rbr.spec import load_spec

    spec = load_spec()
    model = FeatureModel(spec)
    rng = np.random.default_rng(0)
    p_yes = rng.random((100_000, len(spec.simple)))
    rt_index = rng.integers(0, len(spec.response_types), size=100_000)
    features = benchmark(model.features, p_yes, rt_index)
    assert features.shape == (100_000, len(model.feature_names))


def test_fit_100k_rows(benchmark):
    from bench.fit_scale import synthetic_data, synthetic_spec
    from rbr.fit import FitConfig, fit_weights

    spec = synthetic_spec()
    data = synthetic_data(spec, 100_000, per_prompt=8, seed=0)
    weights, report = benchmark.pedantic(fit_weights, args=(data, spec, FitConfig(steps=100)), rounds=1)
    assert report.per_type["Comply"]["val_accuracy"] > 0.5
