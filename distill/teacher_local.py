"""A teacher run in this process with transformers: a Hugging Face causal-LM folder or a GGUF file.

Each grading prompt is sent as one user message through the model's chat template,
with the generation prompt added, and P(yes) is read from the logits of the next
token.

Prefix reuse: items whose token ids start the same are grouped, the shared prefix
runs once, and its key/value cache is expanded over a batch of the remaining
suffixes. With the question after the conversation in the template, the 20-odd
propositions of one conversation share everything up to the question.

Context limit: when a prompt is longer than the teacher's context, the oldest
tokens of the conversation are dropped and `TRUNCATION_MARKER` marks the cut.
The completion is never cut. An item that does not fit even without conversation gets
an error.
"""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

from distill.prompts import question_comes_last, question_text, render_prompt
from distill.teacher import NO_VARIANTS, YES_VARIANTS, Grade, GradeRequest
from rbr.errors import RbrError
from rbr.render import format_conversation

logger = logging.getLogger(__name__)

TRUNCATION_MARKER = "[earlier conversation truncated] "
_CHUNK_CONVERSATIONS = 256  # conversations tokenised and graded together
_TRUNCATION_MARGIN = 8  # tokens kept free because re-tokenising decoded text can grow it


@dataclass(frozen=True)
class LocalTeacherConfig:
    """Settings of a local teacher."""

    batch_size: int = 32  # max sequences per forward pass
    max_batch_tokens: int = 16384  # max batch rows x (prefix + suffix) tokens; bounds the expanded KV cache
    reuse_prefix: bool = True  # run a shared prompt prefix once per group
    context_tokens: int | None = None  # prompt limit in tokens; None: the model's max positions
    device: str | None = None  # "cpu", "cuda", ...; None: cuda when available
    dtype: str = "float32"  # torch dtype name of the weights and activations


@dataclass
class _Prefix:
    """The key/value cache of a shared prompt prefix, batch size 1."""

    length: int  # tokens
    layers: list[tuple[Any, Any]]  # (keys, values) per layer, each (1, heads, length, head_dim)


class LocalTeacher:
    """Grades with a causal LM loaded by transformers from a folder or a `.gguf` file."""

    def __init__(self, path: str | Path, config: LocalTeacherConfig = LocalTeacherConfig()):
        path = Path(path)
        if not path.exists():
            raise RbrError(f"teacher model {path} not found; pass a Hugging Face model folder, a .gguf file or 'embedded'.")
        if path.is_file() and path.suffix != ".gguf":
            raise RbrError(f"teacher file {path} is not a .gguf file; pass a GGUF file or a model folder.")
        self.path = path
        self.config = config
        self.teacher_id = f"local:{path.name}"
        self.truncated_conversations = 0
        self.model = None  # loaded by `load`, on the first `grade` with work to do

    def load(self) -> None:
        """Load the tokenizer and model; a no-op once loaded."""
        if self.model is not None:
            return
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path, config = self.path, self.config
        if path.is_file():
            folder, extra = path.parent, {"gguf_file": path.name}
        else:
            folder, extra = path, {}
        self._torch = torch
        self.device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = getattr(torch, config.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise RbrError(f"unknown dtype {config.dtype!r}; use float32, bfloat16 or float16.")

        logger.info("loading teacher %s on %s", path, self.device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **extra)
            model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype, **extra)
        except (OSError, ValueError) as exc:
            raise RbrError(f"cannot load teacher model from {path}: {exc}") from exc
        model.to(self.device).eval()
        # transformers 5.25 renamed the forward argument `past_key_values` to `cache`.
        forward_parameters = inspect.signature(model.forward).parameters
        self._cache_argument = "cache" if "cache" in forward_parameters else "past_key_values"

        self.context_tokens = config.context_tokens or int(getattr(model.config, "max_position_embeddings", 2048))
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.yes_ids = self._variant_ids(YES_VARIANTS)
        self.no_ids = self._variant_ids(NO_VARIANTS)
        if not self.yes_ids or not self.no_ids:
            raise RbrError(f"teacher tokenizer of {path} has no single-token spelling of yes or no.")
        if self.tokenizer.chat_template is None:
            logger.warning("teacher %s has no chat template; it reads the grading prompt as plain text", path)
        self.model = model

    def _variant_ids(self, variants: Sequence[str]) -> list[int]:
        """Token ids of the spellings that are one token; longer ones cannot be the next token alone."""
        ids = []
        for text in variants:
            encoded = self.tokenizer.encode(text, add_special_tokens=False)
            if len(encoded) == 1 and encoded[0] not in ids:
                ids.append(encoded[0])
        return ids

    # ------------------------------------------------------------ prompts

    def _chat_ids(self, prompt: str) -> list[int]:
        if self.tokenizer.chat_template is None:
            return self.tokenizer.encode(prompt, add_special_tokens=True)
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _fit_conversation(self, template: str, conversation_text: str, longest_question: str, response: str) -> tuple[str, bool]:
        """Drop the oldest conversation tokens until the longest prompt fits the context."""
        length = len(self._chat_ids(render_prompt(template, longest_question, conversation_text, response)))
        if length <= self.context_tokens or "{conversation}" not in template:
            return conversation_text, False

        ids = self.tokenizer.encode(conversation_text, add_special_tokens=False)
        keep = len(ids) - (length - self.context_tokens) - _TRUNCATION_MARGIN
        while True:
            kept = self.tokenizer.decode(ids[-keep:]) if keep > 0 else ""
            text = TRUNCATION_MARKER + kept
            length = len(self._chat_ids(render_prompt(template, longest_question, text, response)))
            if length <= self.context_tokens or keep <= 0:
                return text, True
            keep -= length - self.context_tokens + _TRUNCATION_MARGIN

    def _prepare(self, requests: Sequence[GradeRequest], template: str) -> tuple[list[tuple[GradeRequest, list[int]]], list[tuple[GradeRequest, Grade]]]:
        """Token ids per request, and errors for requests that cannot fit the context."""
        by_conversation: dict[str, list[GradeRequest]] = {}
        for request in requests:
            by_conversation.setdefault(request.conversation.id, []).append(request)

        ready, failed = [], []
        for items in by_conversation.values():
            conversation = items[0].conversation
            questions = [question_text(r.proposition) for r in items]
            conversation_text, truncated = self._fit_conversation(
                template, format_conversation(conversation.prompt), max(questions, key=len), conversation.completion
            )
            self.truncated_conversations += int(truncated)
            for request, question in zip(items, questions):
                ids = self._chat_ids(render_prompt(template, question, conversation_text, conversation.completion))
                if len(ids) > self.context_tokens:
                    message = (
                        f"the grading prompt is {len(ids)} tokens even without the earlier conversation; "
                        f"the teacher context is {self.context_tokens} tokens and the completion is never cut"
                    )
                    failed.append((request, Grade(None, None, message)))
                else:
                    ready.append((request, ids))
        return ready, failed

    # ------------------------------------------------------------ grading

    def grade(self, requests: Sequence[GradeRequest], template: str) -> Iterator[tuple[GradeRequest, Grade]]:
        """Yield (request, grade) pairs, one forward batch at a time.

        Requests are tokenised and graded in chunks of `_CHUNK_CONVERSATIONS`
        conversations, so memory does not grow with the data set.
        """
        if not requests:
            return
        self.load()
        for chunk in _conversation_chunks(requests, _CHUNK_CONVERSATIONS):
            yield from self._grade_chunk(chunk, template)

    def _grade_chunk(self, requests: Sequence[GradeRequest], template: str) -> Iterator[tuple[GradeRequest, Grade]]:
        ready, failed = self._prepare(requests, template)
        yield from failed

        if not self.config.reuse_prefix:
            yield from self._grade_batches(ready, prefix=None)
            return
        by_conversation = question_comes_last(template)
        groups: dict[str, list[tuple[GradeRequest, list[int]]]] = {}
        for request, ids in ready:
            key = request.conversation.id if by_conversation else request.proposition.name
            groups.setdefault(key, []).append((request, ids))
        for group in groups.values():
            yield from self._grade_group(group)

    def _grade_group(self, group: list[tuple[GradeRequest, list[int]]]) -> Iterator[tuple[GradeRequest, Grade]]:
        sequences = [ids for _, ids in group]
        shared = _common_prefix_length(sequences)
        if len(group) < 2 or shared < 1:
            yield from self._grade_batches(group, prefix=None)
            return
        prefix = self._run_prefix(sequences[0][:shared])
        if prefix is None:
            yield from self._grade_batches(group, prefix=None)
            return
        suffixes = [(request, ids[shared:]) for request, ids in group]
        yield from self._grade_batches(suffixes, prefix=prefix)

    def _grade_batches(self, items: list[tuple[GradeRequest, list[int]]], prefix: _Prefix | None) -> Iterator[tuple[GradeRequest, Grade]]:
        """Run items in length-sorted batches so that little padding is computed.

        A batch ends at `batch_size` rows or when rows x (prefix + longest suffix)
        would pass `max_batch_tokens`, because the prefix cache is copied per row.
        """
        items = sorted(items, key=lambda item: len(item[1]))
        past = prefix.length if prefix else 0
        batch: list[tuple[GradeRequest, list[int]]] = []
        for item in items:
            width = past + len(item[1])  # the maximum width so far, because items are sorted by length
            too_many = len(batch) >= self.config.batch_size
            too_large = (len(batch) + 1) * width > self.config.max_batch_tokens
            if batch and (too_many or too_large):
                yield from self._grade_batch(batch, prefix)
                batch = []
            batch.append(item)
        if batch:
            yield from self._grade_batch(batch, prefix)

    def _grade_batch(self, batch: list[tuple[GradeRequest, list[int]]], prefix: _Prefix | None) -> Iterator[tuple[GradeRequest, Grade]]:
        grades = self._next_token_grades([ids for _, ids in batch], prefix)
        yield from zip([request for request, _ in batch], grades)

    def _run_prefix(self, ids: list[int]) -> _Prefix | None:
        """Run the shared prefix once; None when the model's cache cannot be reused this way."""
        from transformers.cache_utils import DynamicLayer

        torch = self._torch
        with torch.inference_mode():
            input_ids = torch.tensor([ids], device=self.device)  # (1, P)
            out = self.model(input_ids=input_ids, use_cache=True)
        cache = out.get(self._cache_argument)
        # NOTE: only full-attention layers are reused; a sliding-window cache keeps a
        # window, not the whole prefix, so those models run without reuse.
        if cache is None or any(type(layer) is not DynamicLayer for layer in cache.layers):
            logger.info("teacher cache is not a plain dynamic cache; prefix reuse is off")
            self.config = replace(self.config, reuse_prefix=False)
            return None
        return _Prefix(len(ids), [(layer.keys, layer.values) for layer in cache.layers])

    def _next_token_grades(self, sequences: list[list[int]], prefix: _Prefix | None) -> list[Grade]:
        """P(yes) after each sequence, which continues `prefix` when one is given."""
        from transformers import DynamicCache

        torch = self._torch
        batch, width = len(sequences), max(len(s) for s in sequences)
        past = prefix.length if prefix else 0

        # left-pad, so that every row's last token sits in the last column
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((batch, past + width), dtype=torch.long)  # (B, P+T)
        attention_mask[:, :past] = 1
        for row, ids in enumerate(sequences):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, past + width - len(ids) :] = 1
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, past:]  # (B, T)

        cache = None
        if prefix is not None:
            expanded = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in prefix.layers]
            cache = DynamicCache(ddp_cache_data=expanded, config=self.model.config)

        with torch.inference_mode():
            out = self.model(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                position_ids=position_ids.to(self.device),
                **{self._cache_argument: cache},
                use_cache=cache is not None,
                logits_to_keep=1,
            )
            probs = torch.softmax(out.logits[:, -1, :].float(), dim=-1)  # (B, V)
            p_yes = probs[:, self.yes_ids].sum(-1).cpu().tolist()  # (B,)
            p_no = probs[:, self.no_ids].sum(-1).cpu().tolist()  # (B,)
        return [Grade.from_masses(y, n) for y, n in zip(p_yes, p_no)]


def _conversation_chunks(requests: Sequence[GradeRequest], size: int) -> Iterator[list[GradeRequest]]:
    """Split requests into lists that cover at most `size` conversations each."""
    chunk: list[GradeRequest] = []
    seen: set[str] = set()
    for request in requests:
        if request.conversation.id not in seen and len(seen) >= size:
            yield chunk
            chunk, seen = [], set()
        seen.add(request.conversation.id)
        chunk.append(request)
    if chunk:
        yield chunk


def _common_prefix_length(sequences: list[list[int]]) -> int:
    """Length of the longest common prefix, at most the shortest length minus one.

    Every sequence keeps at least one token after the prefix, because the logits
    of its last token are needed.
    """
    shortest = min(len(s) for s in sequences)
    first = sequences[0]
    length = 0
    while length < shortest - 1 and all(s[length] == first[length] for s in sequences):
        length += 1
    return length
