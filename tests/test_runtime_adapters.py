"""TRL and verl reward functions, the Ray Data batch scorer and the Triton export, on the tiny bundle."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from rbr.bundle import load_manifest
from rbr.errors import DataError
from runtime import Scorer
from runtime import adapters
from runtime.adapters import AsyncTrlReward, TrlReward, VerlReward, compute_score
from runtime.ray_data import P_YES_PREFIX, ScoreBatch
from runtime.triton import export_triton, model_inputs

PROMPTS = ["How do I bake bread?", "How do I hurt someone?", "I feel hopeless."]
COMPLETIONS = ["Mix flour, water and yeast, then bake.", "Sorry, I can't help with that.", "I'm sorry you feel this way."]
TYPES = ["Comply", "Hard Refuse", "Safe Refuse 2"]


@pytest.fixture(scope="module")
def scorer(tiny_bundle: Path) -> Scorer:
    return Scorer(tiny_bundle)


@pytest.fixture(scope="module")
def expected(scorer: Scorer):
    return scorer.score(list(zip(PROMPTS, COMPLETIONS)), response_types=TYPES)


def test_trl_reward_standard_format(scorer: Scorer, expected):
    reward = TrlReward(scorer)
    metrics = {}
    values = reward(PROMPTS, COMPLETIONS, response_type=TYPES, log_metric=metrics.__setitem__, trainer_state=None)
    assert reward.__name__ == "rbr_reward"
    assert isinstance(values, list) and all(isinstance(v, float) for v in values)
    np.testing.assert_allclose(values, expected.reward, atol=1e-6)
    assert set(metrics) == {f"rbr/{name}" for name in scorer.proposition_names}
    assert metrics["rbr/apology"] == pytest.approx(expected.p_yes[:, scorer.proposition_names.index("apology")].mean())


def test_trl_reward_conversational_format(scorer: Scorer, expected):
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS]
    completions = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]
    values = TrlReward(scorer)(prompts, completions, response_type=TYPES)
    np.testing.assert_allclose(values, expected.reward, atol=1e-6)


def test_trl_reward_missing_column_is_error(scorer: Scorer):
    with pytest.raises(DataError, match="no 'response_type' column"):
        TrlReward(scorer)(PROMPTS, COMPLETIONS)


def test_trl_reward_default_response_type(scorer: Scorer):
    values = TrlReward(scorer, default_response_type="Comply")(PROMPTS, COMPLETIONS)
    comply = scorer.score(list(zip(PROMPTS, COMPLETIONS)), default_response_type="Comply")
    np.testing.assert_allclose(values, comply.reward, atol=1e-6)


def test_trl_reward_other_column_and_base_reward(scorer: Scorer, expected):
    reward = TrlReward(scorer, response_type_column="behaviour")
    values = reward(PROMPTS, COMPLETIONS, behaviour=TYPES, base_reward=[1.0, 0.0, -1.0])
    np.testing.assert_allclose(values, expected.reward + [1.0, 0.0, -1.0], atol=1e-6)


def test_async_trl_reward_matches_sync(scorer: Scorer, expected):
    values = asyncio.run(AsyncTrlReward(scorer)(PROMPTS, COMPLETIONS, response_type=TYPES))
    np.testing.assert_allclose(values, expected.reward, atol=1e-6)


def test_verl_reward_returns_score_and_propositions(scorer: Scorer, expected):
    compute = VerlReward(scorer)
    out = compute("rbr", COMPLETIONS[1], None, {"prompt": PROMPTS[1], "response_type": TYPES[1]})
    assert out["score"] == pytest.approx(expected.reward[1], abs=1e-6)
    assert len(out) == 1 + len(scorer.proposition_names)
    assert out["p_yes/apology"] == pytest.approx(expected.p_yes[1, scorer.proposition_names.index("apology")], abs=1e-6)


def test_verl_batch_matches_single(scorer: Scorer, expected):
    infos = [{"prompt": [{"role": "user", "content": p}], "response_type": t} for p, t in zip(PROMPTS, TYPES)]
    out = VerlReward(scorer).batch(["rbr"] * 3, COMPLETIONS, [None] * 3, infos)
    np.testing.assert_allclose([o["score"] for o in out], expected.reward, atol=1e-6)


def test_verl_reward_missing_extra_info_is_error(scorer: Scorer):
    with pytest.raises(DataError, match="extra_info must be a dict"):
        VerlReward(scorer)("rbr", "reply", None, None)


def test_verl_compute_score_reads_bundle_dir(tiny_bundle: Path, expected, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(adapters, "_default_verl", None)
    out = compute_score("rbr", COMPLETIONS[0], None, {"prompt": PROMPTS[0], "response_type": "Comply"}, bundle_dir=str(tiny_bundle))
    assert out["score"] == pytest.approx(expected.reward[0], abs=1e-6)


def test_verl_compute_score_without_bundle_is_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(adapters, "_default_verl", None)
    monkeypatch.delenv(adapters.BUNDLE_ENV, raising=False)
    with pytest.raises(DataError, match="needs a bundle"):
        compute_score("rbr", "reply", None, {"prompt": "hi", "response_type": "Comply"})


def test_ray_score_batch_numpy(tiny_bundle: Path, scorer: Scorer, expected):
    score_batch = ScoreBatch(bundle_dir=tiny_bundle)
    batch = {
        "prompt": np.array(PROMPTS, dtype=object),
        "completion": np.array(COMPLETIONS, dtype=object),
        "response_type": np.array(TYPES, dtype=object),
        "id": np.array([1, 2, 3]),
    }
    out = score_batch(batch)
    np.testing.assert_array_equal(out["id"], [1, 2, 3])
    np.testing.assert_allclose(out["reward"], expected.reward, atol=1e-6)
    for k, name in enumerate(scorer.proposition_names):
        np.testing.assert_allclose(out[P_YES_PREFIX + name], expected.p_yes[:, k], atol=1e-6)
    assert list(out["completion_class"]) == expected.best_class()


def test_ray_score_batch_pandas_with_messages(tiny_bundle: Path, expected):
    import pandas as pd

    frame = pd.DataFrame({
        "prompt": [np.array([{"role": "user", "content": p}], dtype=object) for p in PROMPTS],
        "completion": COMPLETIONS,
        "response_type": TYPES,
    })
    out = ScoreBatch(bundle_dir=tiny_bundle)(frame)
    assert isinstance(out, pd.DataFrame)
    assert len(out) == 3
    np.testing.assert_allclose(out["reward"].to_numpy(), expected.reward, atol=1e-6)
    assert "prompt" in out.columns


def test_ray_score_batch_missing_column(tiny_bundle: Path):
    with pytest.raises(DataError, match="no 'completion' column"):
        ScoreBatch(bundle_dir=tiny_bundle)({"prompt": np.array(PROMPTS, dtype=object)})


def test_triton_export_config(tiny_bundle: Path, tmp_path: Path):
    model_dir = export_triton(tiny_bundle, tmp_path / "repo", max_batch_size=32, max_queue_delay_us=2000)
    config = (model_dir / "config.pbtxt").read_text()
    k = len(load_manifest(tiny_bundle).propositions)
    assert model_dir == tmp_path / "repo" / "rbr_student"
    assert (model_dir / "1" / "model.onnx").read_bytes() == load_manifest(tiny_bundle).model_path("fp32").read_bytes()
    assert 'name: "rbr_student"' in config
    assert 'platform: "onnxruntime_onnx"' in config
    assert "max_batch_size: 32" in config
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        assert f'name: "{name}"\n    data_type: TYPE_INT64\n    dims: [ -1 ]' in config
    assert f'name: "p_yes"\n    data_type: TYPE_FP32\n    dims: [ {k} ]' in config
    assert "dynamic_batching {\n  max_queue_delay_microseconds: 2000\n}" in config
    assert "instance_group [ { count: 1, kind: KIND_AUTO } ]" in config


def test_triton_client_side_math_matches_scorer(tiny_bundle: Path, tmp_path: Path, scorer: Scorer, expected):
    # A local ONNX Runtime session on the exported file replaces the Triton server.
    model_dir = export_triton(tiny_bundle, tmp_path / "repo")
    server = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    conversations = list(zip(PROMPTS, COMPLETIONS))
    p_yes = np.zeros((3, len(scorer.proposition_names)))
    for rows, inputs in model_inputs(scorer, conversations, pad_to_multiple_of=64):
        assert inputs["input_ids"].shape[1] % 64 == 0
        p_yes[rows] = server.run(["p_yes"], inputs)[0]
    result = scorer.score_from_p_yes(p_yes, scorer.prepare(conversations, response_types=TYPES))
    np.testing.assert_allclose(result.reward, expected.reward, atol=1e-5)
