import itertools
import json

import numpy as np
import pytest

from rbr.errors import DataError
from rbr.features import FeatureModel
from rbr.fit import (
    FitConfig,
    FitData,
    cross_prompt_pairs,
    fit_weights,
    hinge_objective,
    load_fit_rows,
    prompt_pairs,
)
from rbr.spec import load_spec


def brute_force_objective(w, x, base, prompt, rank, margin_of_worse, decay, prior):
    """All pairs of the same prompt, in Python loops: the definition, not the fast path."""
    terms = []
    for i, j in itertools.permutations(range(len(x)), 2):
        if prompt[i] == prompt[j] and rank[i] < rank[j]:
            r_better = base[i] + x[i] @ w
            r_worse = base[j] + x[j] @ w
            terms.append(max(0.0, margin_of_worse[j] + r_worse - r_better))
    return np.mean(terms) + 0.5 * decay * np.sum((w - prior) ** 2)


def test_vectorised_objective_matches_brute_force():
    rng = np.random.default_rng(0)
    n, f = 40, 6
    x = rng.random((n, f))
    base = rng.normal(size=n)
    prompt = rng.integers(0, 7, size=n)
    rank = rng.integers(0, 4, size=n)
    margin_of_worse = rng.random(n)
    w = rng.normal(size=f)
    prior = rng.normal(size=f)

    better, worse = prompt_pairs(prompt, rank)
    loss, grad = hinge_objective(w, x, base, better, worse, margin_of_worse[worse], 0.01, prior)
    expected = brute_force_objective(w, x, base, prompt, rank, margin_of_worse, 0.01, prior)
    assert loss == pytest.approx(expected, rel=1e-12)

    # the gradient matches central finite differences (the hinge is smooth almost everywhere)
    eps = 1e-6
    numeric = np.array([
        (brute_force_objective(w + eps * e, x, base, prompt, rank, margin_of_worse, 0.01, prior)
         - brute_force_objective(w - eps * e, x, base, prompt, rank, margin_of_worse, 0.01, prior)) / (2 * eps)
        for e in np.eye(f)
    ])
    np.testing.assert_allclose(grad, numeric, atol=1e-5)


def test_prompt_pairs_equal_all_pairs():
    rng = np.random.default_rng(3)
    prompt = rng.integers(0, 20, size=150)
    rank = rng.integers(0, 5, size=150)
    better, worse = prompt_pairs(prompt, rank)
    expected = {(i, j) for i, j in itertools.permutations(range(150), 2) if prompt[i] == prompt[j] and rank[i] < rank[j]}
    assert set(zip(better.tolist(), worse.tolist())) == expected
    assert len(better) == len(expected)


def test_cross_prompt_pairs_cover_label_pairs():
    rank = np.array([0, 0, 1, 2, 2, 2])
    better, worse = cross_prompt_pairs(rank, cap=100, rng=np.random.default_rng(0))
    assert len(better) == 2 * 1 + 2 * 3 + 1 * 3
    assert (rank[better] < rank[worse]).all()
    capped_b, capped_w = cross_prompt_pairs(rank, cap=2, rng=np.random.default_rng(0))
    assert len(capped_b) == 2 * 3
    assert (rank[capped_b] < rank[capped_w]).all()


def synthetic_rows(spec, n_prompts, per_prompt, seed):
    """Completions whose true class drives their propositions, several per prompt."""
    rng = np.random.default_rng(seed)
    model = FeatureModel(spec)
    names = spec.proposition_names
    rows = []
    for prompt in range(n_prompts):
        rt = spec.response_types[prompt % 2]  # Comply, Hard Refuse
        for _ in range(per_prompt):
            p = rng.random(len(names)) * 0.3
            kind = rng.integers(0, 3)
            if kind == 0:  # clean: ideal for Comply, an acceptable refusal for Hard Refuse
                for name in ("partially_complies", "fully_complies") if rt == "Comply" else ("apology", "inability_to_comply"):
                    p[names.index(name)] = 0.9 + 0.1 * rng.random()
            elif kind == 2:
                p[names.index("disallowed_content")] = 0.9
            rt_idx = spec.response_type_index(rt)
            label = spec.class_names[model.classify(p[None, :], np.array([rt_idx]))[0]]
            rows.append({"prompt_id": f"p{prompt}", "response_type": rt, "label": label,
                         "propositions": dict(zip(names, p.tolist()))})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_fit_ranks_ideal_above_disallowed(tmp_path):
    spec = load_spec()
    config = FitConfig(seed=1, prior="zero")
    train = load_fit_rows(write_jsonl(tmp_path / "train.jsonl", synthetic_rows(spec, 60, 6, seed=0)), spec, config)
    test = load_fit_rows(write_jsonl(tmp_path / "test.jsonl", synthetic_rows(spec, 30, 6, seed=1)), spec, config)
    weights, report = fit_weights(train, spec, config)

    rewards = weights.reward(test.features, test.rt_index)
    ideal = test.rank == spec.class_names.index("ideal")
    disallowed = test.rank == spec.class_names.index("disallowed_completion")
    assert ideal.any()
    assert disallowed.any()
    assert rewards[ideal].min() > rewards[disallowed].max()
    assert report.per_type["Comply"]["val_accuracy"] > 0.9


def test_validation_split_is_by_prompt(tmp_path):
    spec = load_spec()
    data = load_fit_rows(write_jsonl(tmp_path / "d.jsonl", synthetic_rows(spec, 50, 4, seed=2)), spec, FitConfig())
    from rbr.fit import split_prompts

    is_val = split_prompts(data.prompt_key, 0.3, seed=5)
    for key in np.unique(data.prompt_key):
        assert len(set(is_val[data.prompt_key == key])) == 1


def test_ignored_feature_keeps_zero_weight(tmp_path):
    spec = load_spec()
    data = load_fit_rows(write_jsonl(tmp_path / "d.jsonl", synthetic_rows(spec, 40, 4, seed=4)), spec, FitConfig())
    weights, _ = fit_weights(data, spec, FitConfig(ignore_features=("apology", "class:ideal")))
    names = list(weights.feature_names)
    assert (weights.weights[:, names.index("apology")] == 0).all()
    assert (weights.weights[:, names.index("class:ideal")] == 0).all()


def test_no_pairs_error_explains_why(tmp_path):
    spec = load_spec()
    rows = synthetic_rows(spec, 10, 1, seed=0)  # one completion per prompt
    data = load_fit_rows(write_jsonl(tmp_path / "d.jsonl", rows), spec, FitConfig())
    with pytest.raises(DataError, match="no valid pairs: read 10 rows.*cross-prompt"):
        fit_weights(data, spec, FitConfig())


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r["propositions"].update(apology=float("nan")), "line 2: proposition 'apology' has P\\(yes\\)=nan"),
        (lambda r: r["propositions"].update(apology=1.2), "P\\(yes\\)=1.2"),
        (lambda r: r.update(response_type="Soft Refuse"), "line 2: unknown response type 'Soft Refuse'"),
        (lambda r: r.update(label="great"), "label 'great' is not in the ordering"),
        (lambda r: r["propositions"].pop("judgement"), "line 2: missing P\\(yes\\) for proposition\\(s\\) judgement"),
    ],
)
def test_bad_fit_row_names_line_and_value(tmp_path, mutate, message):
    spec = load_spec()
    rows = synthetic_rows(spec, 2, 2, seed=0)
    mutate(rows[1])
    with pytest.raises(DataError, match=message):
        load_fit_rows(write_jsonl(tmp_path / "d.jsonl", rows), spec, FitConfig())


def test_malformed_jsonl_line_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('\n{not json\n')
    with pytest.raises(DataError, match="line 2: invalid JSON"):
        load_fit_rows(path, load_spec(), FitConfig())


def test_custom_ordering_and_margins(tmp_path):
    spec = load_spec()
    labels = ["perfect refusal", "bad refusal", "disallowed content"]
    rng = np.random.default_rng(0)
    names = spec.proposition_names
    rows = []
    for prompt in range(30):
        for rank, label in enumerate(labels):
            p = rng.random(len(names)) * 0.2
            p[names.index("apology")] = 1.0 - 0.4 * rank
            p[names.index("disallowed_content")] = 0.45 * rank
            rows.append({"prompt_id": prompt, "response_type": "Hard Refuse", "label": label,
                         "propositions": dict(zip(names, p.tolist()))})
    config = FitConfig(orderings={"hard_refuse": labels}, margins={"disallowed content": 2.0}, prior="zero")
    data = load_fit_rows(write_jsonl(tmp_path / "d.jsonl", rows), spec, config)
    weights, report = fit_weights(data, spec, config)
    assert report.per_type["Hard Refuse"]["val_accuracy"] == 1.0
    r = spec.response_type_index("Hard Refuse")
    assert weights.weights[r, names.index("disallowed_content")] < 0
