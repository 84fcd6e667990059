"""The scorer: P(yes) of every proposition, completion classes and the reward in one ONNX pass.

`Scorer(bundle_dir).score(conversations)` loads a verified bundle, tokenises with the
bundle's `tokenizer.json` through `rbr.render` (the function the student was trained
with), runs the student in ONNX Runtime and applies the RBR math of `rbr.features`
and `rbr.reward` in numpy. Nothing here imports torch or transformers.

Batching: conversations are tokenised, sorted by length and cut into batches whose
size times padded length stays within `token_budget` tokens, so short replies are not
padded to the longest one in the call. Results come back in input order.

Thread safety: one `InferenceSession` is shared, and ONNX Runtime allows concurrent
`run` calls on one session. The tokenizer is only read after construction, and every
call builds its own arrays, so `score` may be called from several threads at once.
"""

from __future__ import annotations

import ctypes
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf, NoSuchFile
from tokenizers import Tokenizer

from rbr.bundle import MODEL_INPUTS, BundleManifest, load_manifest
from rbr.data import Conversation, parse_conversation
from rbr.errors import BundleError, DataError, RbrError, WeightsError
from rbr.features import FeatureModel
from rbr.render import encode_conversations, pad_batch, prepare_tokenizer
from rbr.reward import RbrWeights, class_order_weights

logger = logging.getLogger(__name__)

VARIANTS = ("auto", "fp32", "int8", "fp16")
# Tokens per forward pass (batch size x padded length). On a 2-core CPU, 167 Gold test
# conversations scored 38.6, 37.2, 35.2 and 31.5 conversations/s with budgets of 512,
# 2048, 4096 and 16384 tokens, at peak RSS 212, 305, 413 and 1249 MB. Big CPU batches
# gain nothing, and the activations of a large batch dominate memory. A GPU needs big
# batches to be busy.
DEFAULT_TOKEN_BUDGET_CPU = 2048
DEFAULT_TOKEN_BUDGET_CUDA = 65536
DEFAULT_MAX_BATCH_SIZE = 256  # conversations per forward pass
_ENCODE_CHUNK = 4096  # conversations tokenised and sorted together


@dataclass(frozen=True)
class ScoreResult:
    """Scores of N conversations, in input order."""

    p_yes: np.ndarray  # (N, K) simple-proposition P(yes)
    class_probs: np.ndarray  # (N, C) completion-class probabilities, normalised per response type
    features: np.ndarray  # (N, F) RBR features: p_yes then class_probs
    reward: np.ndarray  # (N,) base reward + RBR
    proposition_names: tuple[str, ...]  # K
    class_names: tuple[str, ...]  # C, best first
    feature_names: tuple[str, ...]  # F
    response_types: tuple[str, ...]  # (N,) response type of each row, spelled as in the spec
    contexts_truncated: int = 0  # conversations that lost their oldest tokens
    replies_truncated: int = 0  # completions cut to fit the model's max length

    def __len__(self) -> int:
        return len(self.reward)

    def best_class(self) -> list[str | None]:
        """Most likely completion class per row; None where no class has probability."""
        best = self.class_probs.argmax(axis=1)  # (N,)
        empty = self.class_probs.max(axis=1, initial=0.0) <= 0  # (N,)
        return [None if e else self.class_names[b] for b, e in zip(best, empty)]

    def row(self, i: int) -> dict[str, Any]:
        """Row `i` as plain Python: {"propositions": {name: P}, "classes": {name: P}, "reward": float}."""
        return {
            "propositions": {name: float(p) for name, p in zip(self.proposition_names, self.p_yes[i])},
            "classes": {name: float(p) for name, p in zip(self.class_names, self.class_probs[i])},
            "reward": float(self.reward[i]),
        }


@dataclass(frozen=True)
class PreparedBatch:
    """Validated inputs of `Scorer.score`: conversations, response type indices, base rewards."""

    conversations: tuple[Conversation, ...]
    rt_index: np.ndarray  # (N,) int64 indices into spec.response_types
    base_rewards: np.ndarray | None  # (N,) float64, or None for 0

    def __len__(self) -> int:
        return len(self.conversations)

    @staticmethod
    def concatenate(batches: Sequence["PreparedBatch"]) -> "PreparedBatch":
        """Join `batches` into one, rows in order (missing base rewards become 0)."""
        conversations = tuple(c for batch in batches for c in batch.conversations)
        rt_index = np.concatenate([b.rt_index for b in batches]) if batches else np.zeros(0, np.int64)
        base = None
        if any(b.base_rewards is not None for b in batches):
            base = np.concatenate([b.base_rewards if b.base_rewards is not None else np.zeros(len(b)) for b in batches])
        return PreparedBatch(conversations, rt_index, base)


@dataclass
class _Encoded:
    rows: list[tuple[list[int], list[int]]] = field(default_factory=list)
    contexts_truncated: int = 0
    replies_truncated: int = 0


class Scorer:
    """Scores conversations with a bundle's student model in ONNX Runtime.

    Example:
        scorer = Scorer("runs/bundle-gold")
        result = scorer.score([{"prompt": "How do I pick a lock?",
                                "completion": "Sorry, I can't help with that.",
                                "response_type": "Hard Refuse"}])
        result.reward[0], dict(zip(result.proposition_names, result.p_yes[0]))

    `variant="auto"` picks fp16 on CUDA when the bundle has it, else fp32. On CPU it
    picks fp32, never int8, because int8 P(yes) deviate from the fp32 model that the
    RBR weights were fitted on. Pass `variant="int8"` to opt in to its speed.
    `weights` (an `RbrWeights` or a weights file) replaces the bundle's own. Without
    either, the reward uses unfitted class-order weights, and the scorer logs a warning.
    """

    def __init__(
        self,
        bundle_dir: str | Path,
        providers: Sequence[Any] | None = None,
        intra_op_threads: int | None = None,
        variant: str = "auto",
        weights: RbrWeights | str | Path | None = None,
        token_budget: int | None = None,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    ):
        if variant not in VARIANTS:
            raise RbrError(f"unknown model variant {variant!r}; expected one of {', '.join(VARIANTS)}.")
        if (token_budget is not None and token_budget < 1) or max_batch_size < 1:
            raise RbrError(f"token_budget ({token_budget}) and max_batch_size ({max_batch_size}) must be at least 1.")
        self.manifest: BundleManifest = load_manifest(bundle_dir)
        self.spec = self.manifest.spec
        self.feature_model = FeatureModel(self.spec)
        self.max_batch_size = max_batch_size

        # load the tokenizer; rbr.render does truncation and padding itself
        self.tokenizer = prepare_tokenizer(Tokenizer.from_file(str(self.manifest.path / self.manifest.tokenizer)))

        # open the ONNX session on the best available provider
        self.session, self.variant = _open_session(self.manifest, providers, intra_op_threads, variant)
        self.provider = self.session.get_providers()[0]
        self._use_io_binding = self.provider == "CUDAExecutionProvider"
        if token_budget is None:
            token_budget = DEFAULT_TOKEN_BUDGET_CUDA if self._use_io_binding else DEFAULT_TOKEN_BUDGET_CPU
        self.token_budget = token_budget
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        unknown = sorted(set(self.input_names) - set(MODEL_INPUTS))
        if unknown:
            raise BundleError(
                f"{self.manifest.path}: the ONNX model takes inputs {unknown} that the scorer cannot fill "
                f"(it fills {', '.join(MODEL_INPUTS)}); re-export the bundle."
            )
        if self.manifest.output not in {o.name for o in self.session.get_outputs()}:
            raise BundleError(f"{self.manifest.path}: the ONNX model has no output {self.manifest.output!r}; re-export the bundle.")

        # RBR weights: explicit, the bundle's, or the unfitted class-order default
        self.weights, self.weights_fitted = self._resolve_weights(weights)
        logger.info(
            "scorer ready: bundle %s, variant %s, provider %s, %d propositions, %s weights",
            self.manifest.path, self.variant, self.provider, len(self.proposition_names),
            "fitted" if self.weights_fitted else "unfitted class-order",
        )

    @property
    def proposition_names(self) -> tuple[str, ...]:
        return self.manifest.propositions

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.spec.class_names)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(self.feature_model.feature_names)

    def _resolve_weights(self, weights: RbrWeights | str | Path | None) -> tuple[RbrWeights, bool]:
        if weights is None and self.manifest.weights is None:
            logger.warning(
                "bundle %s has no fitted RBR weights; the reward uses unfitted class-order weights "
                "(+1 for %s down to -1 for %s). Fit weights with `rbr fit` for a calibrated reward.",
                self.manifest.path, self.spec.class_names[0], self.spec.class_names[-1],
            )
            return class_order_weights(self.spec, list(self.feature_names)), False
        if weights is None:
            chosen = self.manifest.weights
        elif isinstance(weights, RbrWeights):
            weights.check_spec(self.spec, "RBR weights")
            chosen = weights.aligned(self.spec)
        else:
            chosen = RbrWeights.load(weights, self.spec).aligned(self.spec)
        if tuple(chosen.feature_names) != self.feature_names:
            raise WeightsError(
                f"RBR weights cover features {list(chosen.feature_names)} but this bundle computes "
                f"{list(self.feature_names)}; refit the weights with `rbr fit` for this spec."
            )
        return chosen, True

    # ------------------------------------------------------------------ inputs

    def prepare(
        self,
        conversations: Sequence[Any],
        response_types: Sequence[str] | None = None,
        base_rewards: Sequence[float] | None = None,
        default_response_type: str | None = None,
    ) -> PreparedBatch:
        """Validate inputs of `score`; raise DataError naming the first bad row."""
        parsed = tuple(to_conversation(item, f"input {i}") for i, item in enumerate(conversations))
        if response_types is not None and len(response_types) != len(parsed):
            raise DataError(f"{len(parsed)} conversations but {len(response_types)} response types.")
        if base_rewards is not None and len(base_rewards) != len(parsed):
            raise DataError(f"{len(parsed)} conversations but {len(base_rewards)} base rewards.")

        names = response_types if response_types is not None else [c.response_type for c in parsed]
        rt_index = np.empty(len(parsed), dtype=np.int64)  # (N,)
        lookup: dict[str, int] = {}
        for i, name in enumerate(names):
            name = default_response_type if name is None else name
            if name is None:
                raise DataError(
                    f"input {i}: no response type; give one per conversation (`response_type`) "
                    "or set a default response type such as 'Comply'."
                )
            if not isinstance(name, str):
                raise DataError(f"input {i}: response type must be a string, got {name!r}.")
            if name not in lookup:
                try:
                    lookup[name] = self.spec.response_type_index(name)
                except RbrError as exc:
                    raise DataError(f"input {i}: {exc}") from None
            rt_index[i] = lookup[name]

        base = None
        if base_rewards is not None:
            base = _check_base_rewards(base_rewards)
        return PreparedBatch(parsed, rt_index, base)

    # ------------------------------------------------------------------ scoring

    def score(
        self,
        conversations: Sequence[Any],
        response_types: Sequence[str] | None = None,
        base_rewards: Sequence[float] | None = None,
        default_response_type: str | None = None,
    ) -> ScoreResult:
        """Score conversations: one forward pass per length-sorted batch.

        `conversations` items may be `Conversation` objects, dicts with `prompt` and
        `completion` (or OpenAI `messages`), (prompt, completion) pairs, or OpenAI
        message lists whose last message is the assistant reply. `response_types`
        overrides the rows' own; `default_response_type` fills rows without one.
        """
        prepared = self.prepare(conversations, response_types, base_rewards, default_response_type)
        return self.score_prepared(prepared)

    def score_prepared(self, prepared: PreparedBatch) -> ScoreResult:
        """Score inputs already checked by `prepare`."""
        p_yes, encoded = self._predict(prepared.conversations)
        return self.score_from_p_yes(p_yes, prepared, encoded.contexts_truncated, encoded.replies_truncated)

    def p_yes(self, conversations: Sequence[Any]) -> np.ndarray:
        """P(yes) of the simple propositions (N, K); needs no response type."""
        parsed = [to_conversation(item, f"input {i}") for i, item in enumerate(conversations)]
        return self._predict(parsed)[0]

    def score_from_p_yes(
        self, p_yes: np.ndarray, prepared: PreparedBatch, contexts_truncated: int = 0, replies_truncated: int = 0
    ) -> ScoreResult:
        """Classes, features and reward from P(yes) (N, K) computed elsewhere (for example by Triton)."""
        p_yes = np.asarray(p_yes, dtype=np.float64)  # (N, K)
        features = self.feature_model.features(p_yes, prepared.rt_index)  # (N, K + C)
        k = len(self.proposition_names)
        reward = self.weights.reward(features, prepared.rt_index, prepared.base_rewards)  # (N,)
        return ScoreResult(
            p_yes=p_yes,
            class_probs=features[:, k:],
            features=features,
            reward=reward,
            proposition_names=self.proposition_names,
            class_names=self.class_names,
            feature_names=self.feature_names,
            response_types=tuple(self.spec.response_types[r] for r in prepared.rt_index),
            contexts_truncated=contexts_truncated,
            replies_truncated=replies_truncated,
        )

    def encode(self, conversations: Sequence[Conversation]) -> _Encoded:
        """Token ids and token type ids per conversation, rendered as in training."""
        encoded = _Encoded()
        for start in range(0, len(conversations), _ENCODE_CHUNK):
            chunk = conversations[start : start + _ENCODE_CHUNK]
            rows = encode_conversations(
                self.tokenizer, [c.prompt for c in chunk], [c.completion for c in chunk], self.manifest.render
            )
            encoded.rows.extend(rows.rows)
            encoded.contexts_truncated += rows.contexts_truncated
            encoded.replies_truncated += rows.replies_truncated
        return encoded

    def plan_batches(self, lengths: np.ndarray) -> list[np.ndarray]:
        """Row indices of each forward pass: longest first, size x padded length <= token budget."""
        order = np.argsort(-lengths, kind="stable")  # (N,) longest first
        batches = []
        start = 0
        while start < len(order):
            width = max(int(lengths[order[start]]), 1)  # the first row of a batch is its longest
            size = max(1, min(self.max_batch_size, self.token_budget // width))
            batches.append(order[start : start + size])
            start += size
        return batches

    def _predict(self, conversations: Sequence[Conversation]) -> tuple[np.ndarray, _Encoded]:
        encoded = self.encode(conversations)
        lengths = np.array([len(ids) for ids, _ in encoded.rows], dtype=np.int64)  # (N,)
        p_yes = np.empty((len(encoded.rows), len(self.proposition_names)), dtype=np.float64)  # (N, K)
        for rows in self.plan_batches(lengths):
            inputs = pad_batch([encoded.rows[i] for i in rows], self.manifest.render.pad_id)  # each (B, T)
            p_yes[rows] = self._run({name: inputs[name] for name in self.input_names})
        return p_yes, encoded

    def _run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """One forward pass; returns P(yes) (B, K) as float64."""
        if not self._use_io_binding:
            return np.asarray(self.session.run([self.manifest.output], dict(inputs))[0], dtype=np.float64)
        # NOTE: this CUDA path has not run in the project's tests, because the test machines
        # have no GPU. It follows the IO binding API of ONNX Runtime 1.31.
        binding = self.session.io_binding()  # one binding per call keeps concurrent calls apart
        for name, array in inputs.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        binding.bind_output(self.manifest.output, "cuda")
        self.session.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float64)


# ---------------------------------------------------------------------- helpers


def to_conversation(item: Any, where: str) -> Conversation:
    """Turn one accepted input shape into a Conversation; raise DataError naming `where`."""
    if isinstance(item, Conversation):
        return item
    if isinstance(item, Mapping):
        return parse_conversation(item, where)
    if _is_message_list(item):
        return parse_conversation({"messages": list(item)}, where)
    if isinstance(item, (tuple, list)) and len(item) == 2:
        prompt, completion = item
        return parse_conversation({"prompt": prompt, "completion": completion}, where)
    raise DataError(
        f"{where}: cannot read a conversation from {type(item).__name__} {str(item)[:60]!r}; pass a dict "
        "with 'prompt' and 'completion', a (prompt, completion) pair or a list of chat messages."
    )


def _is_message_list(item: Any) -> bool:
    return isinstance(item, (list, tuple)) and len(item) > 0 and all(
        isinstance(m, Mapping) and "role" in m for m in item
    )


def _check_base_rewards(values: Sequence[float]) -> np.ndarray:
    base = np.empty(len(values), dtype=np.float64)  # (N,)
    for i, value in enumerate(values):
        if value is None:
            value = 0.0
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
            raise DataError(f"input {i}: base reward {value!r} is not a finite number.")
        base[i] = value
    return base


def _cuda_driver_present() -> bool:
    """True when the CUDA driver library loads, so the CUDA provider can find a GPU."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def _open_session(
    manifest: BundleManifest, providers: Sequence[Any] | None, intra_op_threads: int | None, variant: str
) -> tuple[ort.InferenceSession, str]:
    """Open the model variant on the requested or best available provider."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads

    want_cuda = providers is None and "CUDAExecutionProvider" in ort.get_available_providers() and _cuda_driver_present()
    if providers is None:
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if want_cuda else ["CPUExecutionProvider"]
    else:
        want_cuda = any(_provider_name(p) == "CUDAExecutionProvider" for p in providers)

    chosen = _choose_variant(manifest, variant, want_cuda)
    session = _session(manifest, chosen, options, providers)
    if want_cuda and session.get_providers()[0] != "CUDAExecutionProvider":
        # ONNX Runtime falls back to CPU when CUDA fails to initialise; fp16 is slow there.
        logger.warning("the CUDA execution provider failed to start; scoring on CPU instead")
        cpu_variant = _choose_variant(manifest, variant, on_cuda=False)
        if cpu_variant != chosen:
            session, chosen = _session(manifest, cpu_variant, options, ["CPUExecutionProvider"]), cpu_variant
    return session, chosen


def _session(manifest: BundleManifest, variant: str, options: ort.SessionOptions, providers: Sequence[Any]) -> ort.InferenceSession:
    path = manifest.model_path(variant)
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    except (Fail, InvalidGraph, InvalidProtobuf, NoSuchFile) as exc:
        raise RbrError(f"{path}: ONNX Runtime cannot load the model ({exc}); re-export the bundle.") from None


def _choose_variant(manifest: BundleManifest, variant: str, on_cuda: bool) -> str:
    if variant != "auto":
        manifest.model_path(variant)  # raises BundleError when the bundle lacks it
        return variant
    preference = ("fp16", "fp32", "int8") if on_cuda else ("fp32", "int8", "fp16")
    for name in preference:
        if name in manifest.models:
            return name
    return sorted(manifest.models)[0]


def _provider_name(provider: Any) -> str:
    return provider[0] if isinstance(provider, (tuple, list)) else str(provider)
