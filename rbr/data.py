"""Reading conversations and other JSONL rows, with errors that name the line.

Accepted conversation shapes, one JSON object per line:

- Gold-set shape: `prompt` (list of chat messages), `completion` (the assistant
  reply: a string, one message, or a list holding one assistant message),
  `response_type`, optional `category`, `propositions` (human booleans), `id`.
- OpenAI `messages` shape: the last message is the assistant reply being graded.

Every conversation gets a stable id: the row's `id`, or a hash of its content.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from rbr.errors import DataError

# Row fields that `Conversation` parses; everything else is kept in `extra`.
_KNOWN_FIELDS = {"id", "prompt", "completion", "messages", "response_type", "category", "propositions"}


@dataclass(frozen=True)
class Conversation:
    """A prompt (chat messages) and the assistant completion being graded."""

    id: str
    prompt: tuple[Mapping[str, str], ...]  # {"role": ..., "content": ...}
    completion: str
    response_type: str | None = None
    category: str | None = None
    propositions: Mapping[str, bool] | None = None  # human labels, when present
    extra: Mapping[str, Any] = field(default_factory=dict)  # prompt_id, label, base_reward, ...

    @property
    def prompt_id(self) -> str:
        """The row's `prompt_id`, or a hash of the prompt messages."""
        given = self.extra.get("prompt_id")
        return str(given) if given is not None else content_hash(list(self.prompt))


def content_hash(value: Any) -> str:
    """Hash a JSON value to 16 hex digits of its sha256, stable across runs and machines."""
    blob = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; raise DataError on bad JSON."""
    path = Path(path)
    try:
        handle = path.open("r", encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}.") from exc
    with handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path} line {line_no}: invalid JSON ({exc.msg} at column {exc.colno}); "
                    "each line must be one JSON object."
                ) from None
            if not isinstance(obj, dict):
                raise DataError(f"{path} line {line_no}: expected a JSON object, got {type(obj).__name__}.")
            yield line_no, obj


def _message_text(content: Any, where: str) -> str:
    """Message content as text: a string, or OpenAI-style parts with `text`."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, Mapping) and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise DataError(
        f"{where}: message content must be a string (or a list of {{'type': 'text', 'text': ...}} parts), "
        f"got {type(content).__name__} {str(content)[:60]!r}."
    )


def _parse_messages(raw: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(raw, list):
        raise DataError(f"{where}: expected a list of chat messages, got {type(raw).__name__}.")
    messages = []
    for i, msg in enumerate(raw):
        if not isinstance(msg, Mapping) or "role" not in msg or "content" not in msg:
            raise DataError(f"{where}: message {i} must be an object with 'role' and 'content'.")
        messages.append({"role": str(msg["role"]), "content": _message_text(msg["content"], f"{where}, message {i}")})
    return messages


def _parse_completion(raw: Any, where: str) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, Mapping):
        raw = [raw]
    if isinstance(raw, list) and len(raw) >= 1:
        messages = _parse_messages(raw, where)
        if messages[-1]["role"] != "assistant":
            raise DataError(f"{where}: the completion's last message has role {messages[-1]['role']!r}; expected 'assistant'.")
        return messages[-1]["content"]
    raise DataError(f"{where}: no assistant completion (got {raw!r}); add a 'completion' string or message.")


def parse_conversation(obj: Mapping[str, Any], where: str) -> Conversation:
    """Build a Conversation from one row; `where` names the row in errors."""
    if "messages" in obj and "prompt" not in obj:
        messages = _parse_messages(obj["messages"], where)
        if not messages or messages[-1]["role"] != "assistant":
            raise DataError(f"{where}: no assistant completion: the last message of 'messages' must have role 'assistant'.")
        prompt, completion = messages[:-1], messages[-1]["content"]
    elif "prompt" in obj:
        raw_prompt = obj["prompt"]
        if isinstance(raw_prompt, str):
            raw_prompt = [{"role": "user", "content": raw_prompt}]
        prompt = _parse_messages(raw_prompt, where)
        if "completion" not in obj or obj["completion"] is None:
            raise DataError(f"{where}: no assistant completion; add a 'completion' field.")
        completion = _parse_completion(obj["completion"], where)
    else:
        raise DataError(f"{where}: expected 'prompt' and 'completion', or 'messages'.")

    labels = obj.get("propositions")
    if labels is not None:
        labels = _parse_human_labels(labels, where)

    response_type = obj.get("response_type")
    if response_type is not None and not isinstance(response_type, str):
        raise DataError(f"{where}: response_type must be a string, got {response_type!r}.")

    row_id = obj.get("id")
    if row_id is None:
        row_id = content_hash({"prompt": prompt, "completion": completion})
    extra = {k: v for k, v in obj.items() if k not in _KNOWN_FIELDS}
    category = obj.get("category")
    return Conversation(
        id=str(row_id),
        prompt=tuple(prompt),
        completion=completion,
        response_type=response_type,
        category=None if category is None else str(category),
        propositions=labels,
        extra=extra,
    )


def _parse_human_labels(labels: Any, where: str) -> dict[str, bool]:
    if not isinstance(labels, Mapping):
        raise DataError(f"{where}: 'propositions' must map proposition names to true/false.")
    parsed = {}
    for name, value in labels.items():
        if isinstance(value, bool):
            parsed[str(name)] = value
        elif isinstance(value, (int, float)) and value in (0, 1):
            parsed[str(name)] = bool(value)
        else:
            raise DataError(f"{where}: proposition {name!r} has label {value!r}; expected true or false.")
    return parsed


def read_conversations(path: str | Path, limit: int | None = None) -> list[Conversation]:
    """Read conversations from a JSONL file (at most `limit` rows)."""
    rows = []
    for line_no, obj in iter_jsonl(path):
        if limit is not None and len(rows) >= limit:
            break
        rows.append(parse_conversation(obj, f"{path} line {line_no}"))
    if not rows:
        raise DataError(f"{path}: no conversations found; the file is empty.")
    return rows


def check_probability(value: Any, where: str, name: str) -> float:
    """Validate one P(yes) value; raise DataError naming the row and the fix."""
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, (int, float)) or math.isnan(value) or not 0.0 <= value <= 1.0:
        raise DataError(
            f"{where}: proposition {name!r} has P(yes)={value!r}; expected a number in [0, 1]. "
            "Re-run labeling for that row or remove it."
        )
    return float(value)
