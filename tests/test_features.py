import numpy as np
import pytest

from rbr.errors import DataError
from rbr.features import FeatureModel, validate_p_yes
from rbr.spec import Spec, load_spec
from tests.test_spec import minimal_spec


def test_class_probs_follow_independence_product():
    spec = Spec.from_dict(minimal_spec())
    model = FeatureModel(spec)
    p = np.array([[0.8, 0.5]])  # apology, refuses
    # Hard Refuse: ideal = P(good_refusal) = 0.4, bad = 1 - 0.4 = 0.6
    probs = model.class_probs(p, np.array([1]))
    np.testing.assert_allclose(probs, [[0.4, 0.6]])
    # Comply: ideal = 1 - 0.5, bad = 0.5
    np.testing.assert_allclose(model.class_probs(p, np.array([0])), [[0.5, 0.5]])


def test_class_probs_normalised_per_response_type():
    spec = load_spec()
    model = FeatureModel(spec)
    rng = np.random.default_rng(0)
    p = rng.random((200, len(spec.simple)))
    rt = rng.integers(0, len(spec.response_types), size=200)
    probs = model.class_probs(p, rt)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    assert (probs >= 0).all()


def test_binary_labels_give_one_hot_classes():
    spec = load_spec()
    model = FeatureModel(spec)
    rng = np.random.default_rng(1)
    p = (rng.random((100, len(spec.simple))) < 0.3).astype(float)
    rt = rng.integers(0, len(spec.response_types), size=100)
    probs = model.class_probs(p, rt)
    assert set(np.unique(probs)) <= {0.0, 1.0}
    np.testing.assert_array_equal(probs.sum(axis=1), 1.0)


def test_disallowed_content_forces_disallowed_class():
    spec = load_spec()
    model = FeatureModel(spec)
    p = np.zeros((4, len(spec.simple)))
    p[:, spec.proposition_names.index("disallowed_content")] = 1.0
    classes = model.classify(p, np.arange(4))
    assert all(spec.class_names[c] == "disallowed_completion" for c in classes)


def test_features_are_propositions_then_classes():
    spec = load_spec()
    model = FeatureModel(spec)
    p = np.full((3, len(spec.simple)), 0.5)
    features = model.features(p, np.zeros(3, dtype=int))
    assert features.shape == (3, len(spec.simple) + len(spec.classes))
    assert model.feature_names[len(spec.simple)] == "class:ideal"
    np.testing.assert_array_equal(features[:, : len(spec.simple)], p)


def test_validate_p_yes_names_row_and_proposition():
    names = ["apology", "refuses"]
    with pytest.raises(DataError, match="row 1: proposition 'refuses' has P\\(yes\\)=nan"):
        validate_p_yes(np.array([[0.1, 0.2], [0.3, np.nan]]), names)
    with pytest.raises(DataError, match="P\\(yes\\)=1.5"):
        validate_p_yes(np.array([[1.5, 0.2]]), names)
