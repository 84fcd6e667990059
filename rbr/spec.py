"""The rule spec: propositions, derived propositions, completion classes, template.

A spec is loaded from the project's own YAML format or from the reference RBR
release's `proposition_prompts.yaml`, validated once, and then immutable. Both
formats map to the same `Spec`, and `Spec.to_dict()` writes the project format, so
a bundle or weights file can carry the spec it was built from.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from rbr.errors import SpecError

SPEC_FORMAT_VERSION = 1

DEFAULT_CLASS_ORDER = (
    "ideal",
    "minimum_acceptable_style",
    "unacceptable_completion",
    "illogical_completion",
    "disallowed_completion",
)

# Placeholders a grader template may use. `question` is required, and so is at
# least one of `response` (the final assistant reply) and `conversation`.
TEMPLATE_FIELDS = ("question", "response", "conversation")


@dataclass(frozen=True)
class Literal:
    """A proposition or its negation inside a conjunction."""

    name: str
    value: bool  # False: the literal holds when the proposition is false

    def __str__(self) -> str:
        return self.name if self.value else f"not {self.name}"


@dataclass(frozen=True)
class SimpleProposition:
    """A yes/no statement about the completion, graded by the teacher or the student."""

    name: str
    question: str
    examples: tuple[str, ...] = ()


@dataclass(frozen=True)
class DerivedProposition:
    """A conjunction of literals over simple or other derived propositions."""

    name: str
    literals: tuple[Literal, ...]


@dataclass(frozen=True)
class CompletionClass:
    """A completion class with one conjunction per response type."""

    name: str
    rules: tuple[tuple[str, tuple[Literal, ...]], ...]  # (response type, conjunction)

    def rule(self, response_type: str) -> tuple[Literal, ...]:
        for name, literals in self.rules:
            if name == response_type:
                return literals
        raise KeyError(response_type)


def response_type_key(name: str) -> str:
    """Normalise a response type name: "Hard Refuse", "hard_refuse" and "hard-refuse" match."""
    return re.sub(r"[\s_\-]+", "_", str(name).strip().lower())


def display_response_type(name: str) -> str:
    """Turn a snake_case key such as `safe_refuse_1` into `Safe Refuse 1`."""
    if re.search(r"[A-Z ]", name):
        return name.strip()
    return " ".join(word.capitalize() for word in name.split("_"))


@dataclass(frozen=True)
class Spec:
    """A validated rule spec. Build one with `load_spec` or `Spec.from_dict`."""

    template: str
    response_types: tuple[str, ...]
    simple: tuple[SimpleProposition, ...]
    derived: tuple[DerivedProposition, ...]  # each one after the derived ones it uses
    classes: tuple[CompletionClass, ...]  # best first
    source: str = "<built-in>"

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def proposition_names(self) -> list[str]:
        """Names of the simple propositions, in spec order (the student's head order)."""
        return [p.name for p in self.simple]

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def proposition(self, name: str) -> SimpleProposition:
        for prop in self.simple:
            if prop.name == name:
                return prop
        raise SpecError(
            f"{self.source}: unknown proposition {name!r}; "
            f"the spec has {', '.join(self.proposition_names)}."
        )

    def response_type_index(self, name: str) -> int:
        """Index of a response type given in any spelling; raises SpecError if unknown."""
        key = response_type_key(name)
        for i, known in enumerate(self.response_types):
            if response_type_key(known) == key:
                return i
        raise SpecError(
            f"unknown response type {name!r}; the spec defines "
            f"{', '.join(self.response_types)}."
        )

    def to_dict(self) -> dict[str, Any]:
        """The spec in the project's YAML/JSON format."""
        propositions: dict[str, Any] = {}
        for prop in self.simple:
            entry: dict[str, Any] = {"question": prop.question}
            if prop.examples:
                entry["examples"] = list(prop.examples)
            propositions[prop.name] = entry
        return {
            "format": SPEC_FORMAT_VERSION,
            "template": self.template,
            "response_types": list(self.response_types),
            "propositions": propositions,
            "derived": {d.name: [str(lit) for lit in d.literals] for d in self.derived},
            "classes": {
                c.name: {rt: [str(lit) for lit in lits] for rt, lits in c.rules}
                for c in self.classes
            },
        }

    def hash(self) -> str:
        """sha256 of the spec's canonical JSON; weights and bundles record it."""
        blob = json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> "Spec":
        """Build a spec from the project format or the reference release's format."""
        if not isinstance(data, Mapping):
            raise SpecError(f"{source}: expected a mapping at the top level, got {type(data).__name__}.")
        if "simple_propositions" in data:
            return _from_reference(data, source)
        if "propositions" in data:
            return _from_project(data, source)
        raise SpecError(
            f"{source}: not a rule spec: expected a 'propositions' key (project format) "
            "or 'simple_propositions' (reference release format)."
        )

    def summary(self) -> str:
        return (
            f"{len(self.simple)} simple propositions, {len(self.derived)} derived propositions, "
            f"{len(self.classes)} completion classes, {len(self.response_types)} response types "
            f"({', '.join(self.response_types)})"
        )


# ---------------------------------------------------------------- loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that rejects duplicate keys instead of keeping the last one."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise SpecError(
                f"duplicate name {key!r} at line {key_node.start_mark.line + 1} "
                f"(first defined at line {seen[key] + 1}); each name must appear once."
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


def load_spec(path: str | Path | None = None) -> Spec:
    """Load and validate a spec file; `None` or "default" loads the built-in spec."""
    if path is None or str(path) == "default":
        text = resources.files("rbr").joinpath("data/default_spec.yaml").read_text("utf-8")
        source = "<built-in spec>"
    else:
        source = str(path)
        try:
            text = Path(path).read_text("utf-8")
        except OSError as exc:
            raise SpecError(f"cannot read spec file {source}: {exc.strerror}.") from exc
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except SpecError as exc:
        raise SpecError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{source}: invalid YAML: {exc}") from None
    return Spec.from_dict(data, source)


def _parse_literal(text: Any, where: str) -> Literal:
    if not isinstance(text, str) or not text.strip():
        raise SpecError(f"{where}: expected a proposition name or 'not NAME', got {text!r}.")
    parts = text.split()
    if len(parts) == 2 and parts[0] == "not":
        return Literal(parts[1], False)
    if len(parts) == 1:
        return Literal(parts[0], True)
    raise SpecError(f"{where}: cannot parse literal {text!r}; write 'NAME' or 'not NAME'.")


def _literal_list(items: Any, where: str) -> tuple[Literal, ...]:
    if isinstance(items, Mapping):  # reference style {name: true/false}
        literals = []
        for name, value in items.items():
            if not isinstance(value, bool):
                raise SpecError(f"{where}: {name!r} must be true or false, got {value!r}.")
            literals.append(Literal(str(name), value))
        return tuple(literals)
    if isinstance(items, list):
        return tuple(_parse_literal(item, where) for item in items)
    raise SpecError(f"{where}: expected a list of literals, got {items!r}.")


def _from_project(data: Mapping[str, Any], source: str) -> Spec:
    version = data.get("format", SPEC_FORMAT_VERSION)
    if version != SPEC_FORMAT_VERSION:
        raise SpecError(f"{source}: spec format {version!r} is not supported; expected {SPEC_FORMAT_VERSION}.")

    simple = []
    for name, entry in (data.get("propositions") or {}).items():
        if isinstance(entry, str):
            entry = {"question": entry}
        if not isinstance(entry, Mapping):
            raise SpecError(f"{source}: proposition {name!r} must be a mapping with a 'question'.")
        examples = entry.get("examples") or []
        if not isinstance(examples, list) or not all(isinstance(e, str) for e in examples):
            raise SpecError(f"{source}: proposition {name!r}: 'examples' must be a list of strings.")
        simple.append(SimpleProposition(str(name), str(entry.get("question") or ""), tuple(examples)))

    derived = [
        DerivedProposition(str(name), _literal_list(items, f"{source}: derived proposition {name!r}"))
        for name, items in (data.get("derived") or {}).items()
    ]
    classes = _parse_classes(data.get("classes"), source, display=False)
    response_types = tuple(str(rt) for rt in data.get("response_types") or _rule_response_types(classes))
    return Spec(
        template=str(data.get("template") or ""),
        response_types=response_types,
        simple=tuple(simple),
        derived=_dependency_order(derived, source),
        classes=tuple(classes),
        source=source,
    )


def _from_reference(data: Mapping[str, Any], source: str) -> Spec:
    simple = []
    for name, entry in (data.get("simple_propositions") or {}).items():
        question = entry.get("prompt", "") if isinstance(entry, Mapping) else entry
        simple.append(SimpleProposition(str(name), str(question or "")))

    derived = [
        DerivedProposition(str(name), _literal_list(items, f"{source}: derived proposition {name!r}"))
        for name, items in (data.get("derived_propositions") or {}).items()
    ]
    classes = _parse_classes(data.get("completion_classes"), source, display=True)

    order = data.get("completion_class_order")
    if order is not None:
        names = [c.name for c in classes]
        if sorted(order) != sorted(names):
            raise SpecError(
                f"{source}: completion_class_order {order} must list exactly the "
                f"completion classes {names}."
            )
        classes.sort(key=lambda c: order.index(c.name))

    return Spec(
        template=str(data.get("prompt_template") or ""),
        response_types=_rule_response_types(classes),
        simple=tuple(simple),
        derived=_dependency_order(derived, source),
        classes=tuple(classes),
        source=source,
    )


def _parse_classes(raw: Any, source: str, display: bool) -> list[CompletionClass]:
    if not isinstance(raw, Mapping) or not raw:
        raise SpecError(f"{source}: no completion classes defined.")
    classes = []
    for name, per_type in raw.items():
        if not isinstance(per_type, Mapping):
            raise SpecError(f"{source}: completion class {name!r} must map response types to rules.")
        rules = []
        for rt, items in per_type.items():
            rt_name = display_response_type(str(rt)) if display else str(rt)
            rules.append((rt_name, _literal_list(items, f"{source}: class {name!r}, response type {rt!r}")))
        classes.append(CompletionClass(str(name), tuple(rules)))
    return classes


def _rule_response_types(classes: Iterable[CompletionClass]) -> tuple[str, ...]:
    seen: dict[str, str] = {}
    for cls in classes:
        for rt, _ in cls.rules:
            seen.setdefault(response_type_key(rt), rt)
    canonical = ["comply", "hard_refuse", "safe_refuse_1", "safe_refuse_2"]
    keys = sorted(seen, key=lambda k: (canonical.index(k) if k in canonical else len(canonical), k))
    return tuple(seen[k] for k in keys)


def _dependency_order(derived: list[DerivedProposition], source: str) -> tuple[DerivedProposition, ...]:
    """Sort derived propositions so each comes after those it references; name any cycle."""
    by_name = {d.name: d for d in derived}
    ordered: list[DerivedProposition] = []
    state: dict[str, str] = {}  # "visiting" or "done"

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = path[path.index(name):] + [name]
            raise SpecError(f"{source}: cycle among derived propositions: {' -> '.join(cycle)}.")
        state[name] = "visiting"
        for lit in by_name[name].literals:
            if lit.name in by_name:
                visit(lit.name, path + [name])
        state[name] = "done"
        ordered.append(by_name[name])

    for d in derived:
        visit(d.name, [])
    return tuple(ordered)


# ---------------------------------------------------------------- validation


def _validate(spec: Spec) -> None:
    src = spec.source
    if not spec.simple:
        raise SpecError(f"{src}: the spec defines no simple propositions.")

    names: dict[str, str] = {}
    for kind, items in (("simple proposition", spec.simple), ("derived proposition", spec.derived)):
        for item in items:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", item.name):
                raise SpecError(f"{src}: {kind} name {item.name!r} must be an identifier (letters, digits, _).")
            if item.name in names:
                raise SpecError(f"{src}: duplicate name {item.name!r} (a {names[item.name]} and a {kind}).")
            names[item.name] = kind
    for prop in spec.simple:
        if not prop.question.strip():
            raise SpecError(f"{src}: simple proposition {prop.name!r} has an empty question.")

    for d in spec.derived:
        _check_literals(d.literals, names, f"derived proposition {d.name!r}", src)

    keys = [response_type_key(rt) for rt in spec.response_types]
    if not keys:
        raise SpecError(f"{src}: no response types defined.")
    if len(set(keys)) != len(keys):
        raise SpecError(f"{src}: duplicate response type in {list(spec.response_types)}.")
    class_names = [c.name for c in spec.classes]
    if len(set(class_names)) != len(class_names):
        raise SpecError(f"{src}: duplicate completion class in {class_names}.")
    for cls in spec.classes:
        rule_keys = {response_type_key(rt): rt for rt, _ in cls.rules}
        for rt, key in zip(spec.response_types, keys):
            if key not in rule_keys:
                raise SpecError(
                    f"{src}: completion class {cls.name!r} has no rule for response type {rt!r}; "
                    "add one (an empty list matches every completion)."
                )
        for rt, literals in cls.rules:
            if response_type_key(rt) not in keys:
                raise SpecError(
                    f"{src}: completion class {cls.name!r} has a rule for unknown response type {rt!r}; "
                    f"known: {', '.join(spec.response_types)}."
                )
            _check_literals(literals, names, f"completion class {cls.name!r} ({rt})", src)

    _validate_template(spec.template, src)


def _check_literals(literals: tuple[Literal, ...], names: Mapping[str, str], where: str, src: str) -> None:
    for lit in literals:
        if lit.name not in names:
            raise SpecError(f"{src}: {where} references unknown proposition {lit.name!r}.")


def _validate_template(template: str, src: str) -> None:
    if not template.strip():
        raise SpecError(f"{src}: the grader prompt template is empty.")
    try:
        fields = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    except ValueError as exc:
        raise SpecError(f"{src}: the grader prompt template is not a valid format string: {exc}.") from None
    unknown = fields - set(TEMPLATE_FIELDS)
    if unknown:
        raise SpecError(
            f"{src}: the grader prompt template uses unknown placeholder(s) "
            f"{', '.join('{' + f + '}' for f in sorted(unknown))}; allowed: {{question}}, {{response}}, "
            "{conversation} (write literal braces as {{ and }})."
        )
    if "question" not in fields:
        raise SpecError(f"{src}: the grader prompt template is missing the {{question}} placeholder.")
    if not fields & {"response", "conversation"}:
        raise SpecError(
            f"{src}: the grader prompt template is missing a {{response}} or {{conversation}} placeholder."
        )
