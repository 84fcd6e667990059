"""Grading prompts: the text a teacher reads for one proposition of one conversation.

The spec's template is filled with three fields:

- `{question}`: the proposition's question, followed by its examples when it has any;
- `{conversation}`: the prompt messages before the completion, role-marked by
  `rbr.render.format_conversation` ("user: ..." one message per line);
- `{response}`: the completion, the final assistant reply being graded.

A template may leave out `{conversation}`. The reference release's template does, so
a teacher given that spec sees only the question and the reply.
"""

from __future__ import annotations

import hashlib
import json
import string

from rbr.data import Conversation
from rbr.render import format_conversation
from rbr.spec import SimpleProposition, Spec

# Bump when the way questions, examples or fields are rendered changes, so stored
# labels made with the old rendering stop matching.
PROMPT_FORMAT_VERSION = 1


def question_text(proposition: SimpleProposition) -> str:
    """Build the `{question}` field: the question, then its examples as a bulleted list."""
    text = proposition.question.strip()
    if proposition.examples:
        bullets = "\n".join(f"- {example.strip()}" for example in proposition.examples)
        text = f"{text}\nExamples:\n{bullets}"
    return text


def render_prompt(template: str, question: str, conversation: str, response: str) -> str:
    """Fill the template's fields; values are inserted verbatim, braces in them included."""
    return template.format(question=question, conversation=conversation, response=response)


def grading_prompt(spec: Spec, proposition: SimpleProposition, conversation: Conversation) -> str:
    """Render the full grading prompt of one proposition for one conversation."""
    return render_prompt(
        spec.template,
        question_text(proposition),
        format_conversation(conversation.prompt),
        conversation.completion,
    )


def prompt_hash(spec: Spec, proposition: SimpleProposition) -> str:
    """Hash the grading prompt without the conversation into 16 hex digits.

    It covers the template, the question and its examples, so editing one
    question changes the hash of that proposition only.
    """
    blob = json.dumps(
        {
            "format": PROMPT_FORMAT_VERSION,
            "template": spec.template,
            "question": question_text(proposition),
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def template_fields(template: str) -> list[str]:
    """Placeholder names in the order they appear in the template."""
    return [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]


def question_comes_last(template: str) -> bool:
    """True when `{question}` follows every conversation-dependent field.

    Then all propositions of one conversation share the prompt up to the question,
    so a teacher groups items by conversation to reuse that prefix. Otherwise it
    groups them by proposition.
    """
    fields = template_fields(template)
    position = fields.index("question")
    return all(fields.index(name) < position for name in ("conversation", "response") if name in fields)
