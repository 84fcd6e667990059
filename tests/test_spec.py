import textwrap

import pytest

from rbr.errors import SpecError
from rbr.spec import Spec, load_spec, response_type_key
from tests.shared import REFERENCE_SPEC, require_shared_data

GOLD_PROPOSITIONS = {
    "additional_content", "apology", "apology_acknowledges_emotional_state", "conditional_verbiage",
    "definitive_verbiage", "disallowed_content", "disclaimer", "encourage_professional_help",
    "fully_complies", "gentle_encouragement_for_help", "illogical_continuation_of_prompt",
    "inability_to_comply", "insulting_language", "judgement", "meta_commentary", "partially_complies",
    "prescribes_dosage", "prescribes_solutions", "provides_resources", "reference_safety_policy",
    "requests_information", "third_person", "threatening_language",
}


def minimal_spec(**overrides) -> dict:
    data = {
        "template": "Reply: {response}\nQuestion: {question}",
        "response_types": ["Comply", "Hard Refuse"],
        "propositions": {"apology": {"question": "Does it apologize?"}, "refuses": {"question": "Does it refuse?"}},
        "derived": {"good_refusal": ["apology", "refuses"]},
        "classes": {
            "ideal": {"Comply": ["not refuses"], "Hard Refuse": ["good_refusal"]},
            "bad": {"Comply": ["refuses"], "Hard Refuse": ["not good_refusal"]},
        },
    }
    data.update(overrides)
    return data


def test_builtin_spec_covers_gold_propositions():
    spec = load_spec()
    assert set(spec.proposition_names) == GOLD_PROPOSITIONS
    assert spec.class_names[0] == "ideal"
    assert spec.class_names[-1] == "disallowed_completion"
    assert spec.response_types == ("Comply", "Hard Refuse", "Safe Refuse 1", "Safe Refuse 2")


def test_reference_spec_loads_unchanged():
    require_shared_data(REFERENCE_SPEC)
    spec = load_spec(REFERENCE_SPEC)
    assert len(spec.simple) == 23
    assert len(spec.classes) == 5
    assert spec.response_types == ("Comply", "Hard Refuse", "Safe Refuse 1", "Safe Refuse 2")
    assert set(spec.proposition_names) == GOLD_PROPOSITIONS
    # derived propositions come after the ones they reference
    order = [d.name for d in spec.derived]
    assert order.index("acceptable_refusal") < order.index("correct_refusal")


def test_spec_round_trips_through_dict():
    spec = load_spec()
    again = Spec.from_dict(spec.to_dict())
    assert again.hash() == spec.hash()
    assert again.proposition_names == spec.proposition_names


def test_response_type_spellings_match():
    spec = Spec.from_dict(minimal_spec())
    assert spec.response_type_index("hard_refuse") == 1
    assert spec.response_type_index("Hard Refuse") == 1
    assert response_type_key("Safe Refuse 1") == "safe_refuse_1"
    with pytest.raises(SpecError, match="unknown response type 'Soft Refuse'"):
        spec.response_type_index("Soft Refuse")


def test_derived_cycle_is_named():
    data = minimal_spec(derived={"a": ["b", "apology"], "b": ["c"], "c": ["a"]})
    with pytest.raises(SpecError, match="cycle") as info:
        Spec.from_dict(data)
    assert "a -> b -> c -> a" in str(info.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"derived": {"x": ["nonexistent"]}}, "references unknown proposition 'nonexistent'"),
        ({"classes": {"ideal": {"Comply": []}}}, "has no rule for response type 'Hard Refuse'"),
        ({"propositions": {"apology": {"question": "  "}}, "derived": {}, "classes": {"ideal": {"Comply": [], "Hard Refuse": []}}}, "empty question"),
        ({"template": "Reply: {response}"}, "missing the {question} placeholder"),
        ({"template": "Question: {question}"}, "missing a {response} or {conversation}"),
        ({"template": "{question} {response} {user}"}, "unknown placeholder"),
        ({"derived": {"apology": ["refuses"]}}, "duplicate name 'apology'"),
    ],
)
def test_invalid_spec_raises_named_error(override, message):
    with pytest.raises(SpecError, match=message.replace("{", r"\{").replace("}", r"\}").replace("(", r"\(").replace(")", r"\)")):
        Spec.from_dict(minimal_spec(**override))


def test_duplicate_yaml_key_is_rejected(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent("""\
        template: "{question} {response}"
        propositions:
          apology: {question: "a?"}
          apology: {question: "b?"}
        classes:
          ideal: {Comply: []}
        """))
    with pytest.raises(SpecError, match="duplicate name 'apology' at line 4"):
        load_spec(path)


def test_reference_template_placeholders_validated():
    require_shared_data(REFERENCE_SPEC)
    spec = load_spec(REFERENCE_SPEC)
    assert "{question}" in spec.template
    assert "{response}" in spec.template
