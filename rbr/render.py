"""Render and tokenise a conversation for the student, identically in training and runtime.

The student reads a sentence pair: segment A is the role-marked conversation before
the reply ("user: ..." one message per line), segment B is the completion. The
tokenizer's own post-processor adds the special tokens ([CLS] A [SEP] B [SEP] for
BERT), so any Hugging Face encoder's tokenizer works.

Truncation, when the pair exceeds `max_length` tokens:
- the completion is kept whole up to `reply_max_tokens`, which is max_length minus the
  special tokens minus `context_min_tokens`. A longer completion keeps its head,
  because refusals, apologies and the first steps of any disallowed content appear early.
- The conversation gets the remaining tokens and loses its oldest tokens first.

Both sides are truncated by this module before the special tokens are added, so a
reply longer than the limit never triggers the tokenizer's pair-truncation error.

`tokenizer` is a `tokenizers.Tokenizer` (training passes the backend of a
transformers fast tokenizer). This module only calls its methods, so `rbr` itself
does not import `tokenizers`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

RENDER_VERSION = 1


@dataclass(frozen=True)
class RenderSettings:
    """Settings that turn conversations into token ids; stored in the bundle manifest."""

    max_length: int = 512  # tokens per input, special tokens included
    context_min_tokens: int = 64  # tokens kept for the conversation when the reply is long
    pad_id: int = 0  # token id used for padding
    version: int = RENDER_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RenderSettings":
        return cls(**{k: data[k] for k in ("max_length", "context_min_tokens", "pad_id", "version") if k in data})


@dataclass
class EncodedRows:
    """Unpadded (token ids, token type ids) per conversation, plus truncation counts."""

    rows: list[tuple[list[int], list[int]]]
    contexts_truncated: int  # conversations that lost their oldest tokens
    replies_truncated: int  # completions cut at reply_max_tokens


def format_conversation(messages: Sequence[Mapping[str, str]]) -> str:
    """Role-marked text of chat messages, one message per line."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Turn off the tokenizer's own truncation and padding; this module does both."""
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def encode_conversations(
    tokenizer: Any,
    prompts: Sequence[Sequence[Mapping[str, str]]],
    completions: Sequence[str],
    settings: RenderSettings,
) -> EncodedRows:
    """Tokenise conversations as sentence pairs, truncated as described above."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    n_special = tokenizer.num_special_tokens_to_add(True)
    budget = settings.max_length - n_special
    reply_cap = max(1, budget - settings.context_min_tokens)

    contexts = tokenizer.encode_batch([format_conversation(p) for p in prompts], add_special_tokens=False)
    replies = tokenizer.encode_batch(list(completions), add_special_tokens=False)

    rows = []
    contexts_truncated = replies_truncated = 0
    for context, reply in zip(contexts, replies):
        if len(reply.ids) > reply_cap:
            reply.truncate(reply_cap, direction="right")
            replies_truncated += 1
        context_room = budget - len(reply.ids)
        if len(context.ids) > context_room:
            contexts_truncated += 1
            # Encoding.truncate(0) leaves the encoding whole, so an empty context is re-encoded.
            if context_room > 0:
                context.truncate(context_room, direction="left")
            else:
                context = tokenizer.encode("", add_special_tokens=False)
        pair = tokenizer.post_process(context, reply, add_special_tokens=True)
        rows.append((pair.ids, pair.type_ids))
    return EncodedRows(rows, contexts_truncated, replies_truncated)


def pad_batch(rows: Sequence[tuple[list[int], list[int]]], pad_id: int, pad_to_multiple_of: int = 1) -> dict[str, np.ndarray]:
    """Right-pad rows of (ids, type_ids) into int64 arrays of shape (B, T)."""
    lengths = np.array([len(ids) for ids, _ in rows], dtype=np.int64)  # (B,)
    width = int(lengths.max()) if len(rows) else 0
    if pad_to_multiple_of > 1:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)  # (B, T)
    token_type_ids = np.zeros((len(rows), width), dtype=np.int64)  # (B, T)
    for i, (ids, type_ids) in enumerate(rows):
        input_ids[i, : len(ids)] = ids
        token_type_ids[i, : len(ids)] = type_ids
    attention_mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)  # (B, T)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
