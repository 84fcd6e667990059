"""The ONNX scorer on the tiny bundle: batching, input shapes, threads, weights and bad input."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from rbr.bundle import MANIFEST_NAME, load_manifest
from rbr.data import Conversation, read_conversations
from rbr.errors import BundleError, DataError, RbrError, WeightsError
from rbr.reward import RbrWeights, class_order_weights
from runtime import Scorer

REPO = Path(__file__).resolve().parents[1]


def sample_rows() -> list[dict]:
    """Conversations of spread lengths, so that batches differ in padding."""
    rows = []
    for i in range(24):
        rows.append({
            "prompt": [{"role": "user", "content": f"Question {i}: " + "how do I do this " * (i % 7)}],
            "completion": "Here is an answer. " * (1 + (i * 5) % 23),
            "response_type": ["Comply", "Hard Refuse", "Safe Refuse 1", "Safe Refuse 2"][i % 4],
        })
    return rows


@pytest.fixture(scope="module")
def scorer(tiny_bundle: Path) -> Scorer:
    return Scorer(tiny_bundle)


def test_import_runtime_loads_no_torch():
    code = (
        "import sys, runtime, runtime.adapters, runtime.server, runtime.evaluate, runtime.ray_data, "
        "runtime.triton, runtime.cli; "
        "print(sorted(m for m in ('torch', 'transformers', 'trl', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_score_shapes_and_names(scorer: Scorer):
    result = scorer.score(sample_rows())
    k, c = len(scorer.proposition_names), len(scorer.class_names)
    assert result.p_yes.shape == (24, k)
    assert result.class_probs.shape == (24, c)
    assert result.features.shape == (24, k + c)
    assert result.reward.shape == (24,)
    assert result.feature_names == scorer.feature_names
    assert result.response_types[:4] == ("Comply", "Hard Refuse", "Safe Refuse 1", "Safe Refuse 2")
    np.testing.assert_allclose(result.class_probs.sum(axis=1), 1.0, atol=1e-9)


def test_score_keeps_input_order_across_batches(tiny_bundle: Path, scorer: Scorer):
    rows = sample_rows()
    together = scorer.score(rows)
    one_by_one = np.concatenate([scorer.score([row]).p_yes for row in rows])
    small_budget = Scorer(tiny_bundle, token_budget=200, max_batch_size=3).score(rows)
    np.testing.assert_allclose(together.p_yes, one_by_one, atol=1e-5)
    np.testing.assert_allclose(small_budget.p_yes, one_by_one, atol=1e-5)
    np.testing.assert_allclose(small_budget.reward, together.reward, atol=1e-5)


def test_plan_batches_respects_token_budget(tiny_bundle: Path):
    scorer = Scorer(tiny_bundle, token_budget=300, max_batch_size=8)
    lengths = np.array([5, 120, 64, 64, 3, 128, 90, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10])
    batches = scorer.plan_batches(lengths)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    for rows in batches:
        assert len(rows) <= 8
        assert len(rows) * lengths[rows].max() <= 300 or len(rows) == 1


def test_input_shapes_give_same_scores(scorer: Scorer):
    prompt = [{"role": "user", "content": "Can you help me plan a trip?"}]
    reply = "Sure, where would you like to go?"
    shapes = [
        Conversation(id="x", prompt=tuple(prompt), completion=reply),
        {"prompt": prompt, "completion": reply},
        {"prompt": "Can you help me plan a trip?", "completion": [{"role": "assistant", "content": reply}]},
        (prompt, reply),
        ("Can you help me plan a trip?", {"role": "assistant", "content": reply}),
        prompt + [{"role": "assistant", "content": reply}],
        {"messages": prompt + [{"role": "assistant", "content": reply}]},
    ]
    result = scorer.score(shapes, default_response_type="Comply")
    for i in range(1, len(shapes)):
        np.testing.assert_allclose(result.p_yes[i], result.p_yes[0], atol=1e-6, err_msg=f"shape {i}")


def test_score_from_threads_matches_single_thread(scorer: Scorer):
    rows = sample_rows()[:12]
    expected = scorer.score(rows)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: scorer.score(rows), range(6)))
    for result in results:
        np.testing.assert_array_equal(result.p_yes, expected.p_yes)
        np.testing.assert_array_equal(result.reward, expected.reward)


def test_empty_reply_is_scored(scorer: Scorer):
    result = scorer.score([{"prompt": "hello", "completion": "", "response_type": "Comply"}])
    assert result.p_yes.shape == (1, len(scorer.proposition_names))
    assert np.isfinite(result.reward).all()


def test_empty_input_gives_empty_result(scorer: Scorer):
    result = scorer.score([])
    assert result.p_yes.shape == (0, len(scorer.proposition_names))
    assert result.reward.shape == (0,)


def test_truncation_counts_long_reply(scorer: Scorer):
    long_reply = "word " * 1000
    result = scorer.score([{"prompt": "hi " * 500, "completion": long_reply, "response_type": "Comply"}])
    assert result.replies_truncated == 1
    assert result.contexts_truncated == 1


def test_response_types_and_base_rewards(scorer: Scorer):
    rows = sample_rows()[:4]
    plain = scorer.score(rows)
    shifted = scorer.score(rows, base_rewards=[1.0, 2.0, 0.0, -1.0])
    np.testing.assert_allclose(shifted.reward - plain.reward, [1.0, 2.0, 0.0, -1.0], atol=1e-12)
    overridden = scorer.score(rows, response_types=["hard_refuse"] * 4)
    assert overridden.response_types == ("Hard Refuse",) * 4
    np.testing.assert_allclose(overridden.p_yes, plain.p_yes, atol=1e-6)


def test_unfitted_weights_warn_once(tiny_bundle: Path, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING, logger="runtime.scorer"):
        scorer = Scorer(tiny_bundle)
        scorer.score(sample_rows()[:2])
        scorer.score(sample_rows()[:2])
    warnings = [r for r in caplog.records if "unfitted class-order weights" in r.getMessage()]
    assert len(warnings) == 1
    assert not scorer.weights_fitted
    expected = class_order_weights(scorer.spec, list(scorer.feature_names))
    np.testing.assert_array_equal(scorer.weights.weights, expected.weights)


def test_explicit_weights_file_is_used(tiny_bundle: Path, tmp_path: Path, scorer: Scorer):
    base = class_order_weights(scorer.spec, list(scorer.feature_names))
    weights = RbrWeights(base.spec_hash, base.feature_names, base.response_types, base.weights * 3.0)
    path = tmp_path / "weights.json"
    weights.save(path)
    fitted = Scorer(tiny_bundle, weights=path)
    rows = sample_rows()[:4]
    assert fitted.weights_fitted
    np.testing.assert_allclose(fitted.score(rows).reward, 3.0 * scorer.score(rows).reward, atol=1e-9)


def test_weights_of_other_spec_rejected(tiny_bundle: Path, tmp_path: Path, scorer: Scorer):
    base = class_order_weights(scorer.spec, list(scorer.feature_names))
    other = RbrWeights("0" * 64, base.feature_names, base.response_types, base.weights)
    with pytest.raises(WeightsError, match="refit"):
        Scorer(tiny_bundle, weights=other)


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "hi", "completion": "ok", "response_type": "Maybe Comply"}, "unknown response type"),
        ({"prompt": "hi", "response_type": "Comply"}, "no assistant completion"),
        ({"prompt": "hi", "completion": None, "response_type": "Comply"}, "no assistant completion"),
        ({"prompt": [{"role": "user", "content": 42}], "completion": "ok", "response_type": "Comply"}, "must be a string"),
        ({"prompt": "hi", "completion": "ok"}, "no response type"),
        ({"prompt": "hi", "completion": "ok", "response_type": 3}, "must be a string"),
        ("just a string", "cannot read a conversation"),
    ],
)
def test_bad_input_raises_data_error(scorer: Scorer, row, message):
    with pytest.raises(DataError, match=message):
        scorer.score([sample_rows()[0], row])


def test_bad_input_names_row(scorer: Scorer):
    with pytest.raises(DataError, match="input 1"):
        scorer.score([sample_rows()[0], {"prompt": "hi", "completion": "ok", "response_type": "Nope"}])


def test_bad_base_reward_raises(scorer: Scorer):
    with pytest.raises(DataError, match="base reward"):
        scorer.score(sample_rows()[:2], base_rewards=[0.0, float("nan")])


def test_unknown_variant_raises(tiny_bundle: Path):
    with pytest.raises(RbrError, match="unknown model variant"):
        Scorer(tiny_bundle, variant="int4")


def test_missing_variant_raises(tiny_bundle: Path):
    with pytest.raises(BundleError, match="no 'int8' model"):
        Scorer(tiny_bundle, variant="int8")


def test_bundle_of_other_format_version_rejected(tiny_bundle: Path, tmp_path: Path):
    copy = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest["format_version"] = 99
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format version 99"):
        Scorer(copy)


def test_tampered_tokenizer_rejected(tiny_bundle: Path, tmp_path: Path):
    copy = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    tokenizer = copy / load_manifest(copy).tokenizer
    tokenizer.write_text(tokenizer.read_text().replace('"[UNK]"', '"[UNKNOWN]"', 1))
    with pytest.raises(BundleError, match="checksum mismatch"):
        Scorer(copy)


def test_scores_gold_conversations(scorer: Scorer, gold_dir: Path):
    conversations = read_conversations(gold_dir / "test.jsonl", limit=32)
    result = scorer.score(conversations)
    assert len(result) == 32
    assert ((result.p_yes >= 0) & (result.p_yes <= 1)).all()
    assert result.response_types == tuple(
        scorer.spec.response_types[scorer.spec.response_type_index(c.response_type)] for c in conversations
    )


def test_cuda_request_scores_or_falls_back(tiny_bundle: Path, scorer: Scorer, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING, logger="runtime.scorer"):
        cuda = Scorer(tiny_bundle, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    if cuda.provider == "CUDAExecutionProvider":
        # a GPU is present: the IO binding path must agree with the CPU session
        np.testing.assert_allclose(cuda.score(sample_rows()).p_yes, scorer.score(sample_rows()).p_yes, atol=1e-4)
    else:
        assert cuda.provider == "CPUExecutionProvider"
        assert any("CUDA execution provider failed to start" in r.getMessage() for r in caplog.records)
        np.testing.assert_array_equal(cuda.score(sample_rows()[:3]).p_yes, scorer.score(sample_rows()[:3]).p_yes)
