"""Distill labels into a student: full fine-tuning, or new heads on a frozen trunk.

Targets are a float32 (N, K) array in spec order: teacher P(yes) (soft targets) or
human booleans as 0/1, with NaN where a conversation has no label for a proposition.
The loss is binary cross-entropy on the logits, averaged over the labeled cells only.

`train_student` fine-tunes the whole encoder and the heads with AdamW, a linear
warmup and a linear decay, and keeps the weights of the epoch with the lowest
validation loss. The validation split holds out whole prompts (every completion of
a held-out prompt), so a reply never shares its conversation with a training row.

`extend_student` (`rbr distill --from`) trains only the heads of propositions that
are new or whose question changed. The trunk is frozen, so pooled vectors are
computed once and the new heads are fitted on them. The other heads keep their
weights, so their outputs are unchanged.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from distill.student import (
    Student,
    StudentError,
    batch_tensors,
    configure_threads,
    create_student,
    load_student,
    save_student,
)
from rbr.data import Conversation
from rbr.errors import DataError
from rbr.render import RenderSettings
from rbr.spec import Spec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    """Hyperparameters of `rbr distill`."""

    epochs: int = 4
    batch_size: int = 16  # conversations per optimizer step
    lr: float = 5e-5  # peak learning rate of the encoder
    head_lr: float = 2e-3  # peak learning rate of the freshly initialised heads
    weight_decay: float = 0.01  # AdamW, not applied to biases and LayerNorm weights
    warmup_fraction: float = 0.1  # share of all steps spent in linear warmup
    max_length: int = 256  # tokens per input; the render module truncates to it
    seed: int = 0  # head initialisation, validation split and batch order
    val_fraction: float = 0.1  # share of prompts held out for early stopping
    patience: int = 2  # epochs without a lower validation loss before stopping
    pos_weight: str = "none"  # "auto": weight positives by negatives/positives per head
    max_pos_weight: float = 10.0  # cap for "auto", so a head with 2 positives is not swamped
    max_grad_norm: float = 1.0
    pooling: str = "reply_mean"  # a new student's pooling: "reply_mean" or "mean"
    num_threads: int | None = None  # torch threads; None uses every CPU this process may use
    progress: bool = True  # tqdm bar per epoch


# ---------------------------------------------------------------- labels


def human_targets(conversations: Sequence[Conversation], spec: Spec) -> np.ndarray:
    """Human booleans as float32 (N, K) 0/1 in spec order; NaN where a row has no label."""
    column = {name: k for k, name in enumerate(spec.proposition_names)}
    targets = np.full((len(conversations), len(column)), np.nan, dtype=np.float32)  # (N, K)
    unknown: dict[str, int] = {}
    for i, conversation in enumerate(conversations):
        for name, value in (conversation.propositions or {}).items():
            if name in column:
                targets[i, column[name]] = float(value)
            else:
                unknown[name] = unknown.get(name, 0) + 1
    if unknown:
        logger.warning(
            "ignored %d human labels of %d propositions that are not in the spec: %s",
            sum(unknown.values()), len(unknown), ", ".join(f"{n} ({c})" for n, c in sorted(unknown.items())),
        )
    if np.isnan(targets).all():
        raise DataError(
            "no human labels: no conversation has a 'propositions' object with names from the spec; "
            "add human labels or pass --labels with a label store directory."
        )
    return targets


def store_targets(conversations: Sequence[Conversation], spec: Spec, store_dir: str | Path, teacher: str | None = None) -> np.ndarray:
    """Teacher P(yes) from a label store as float32 (N, K); NaN where no valid label exists.

    Labels in the store for conversations that are not in the data, or for
    propositions that are not in the spec, are ignored with one warning each that
    gives their count.
    """
    from distill.label_store import LabelStore

    ids = [c.id for c in conversations]
    with LabelStore(store_dir, create=False) as store:
        teacher = store.resolve_teacher(teacher)
        targets = store.targets(spec, ids, teacher)  # (N, K)
        known_ids, known_names = set(ids), set(spec.proposition_names)
        unknown_ids: set[str] = set()
        unknown_names: set[str] = set()
        for row in store.rows(teacher):
            if row["conversation_id"] not in known_ids:
                unknown_ids.add(row["conversation_id"])
            if row["proposition"] not in known_names:
                unknown_names.add(row["proposition"])
    if unknown_ids:
        logger.warning("label store %s: ignored labels of %d conversations that are not in the data", store_dir, len(unknown_ids))
    if unknown_names:
        logger.warning("label store %s: ignored labels of %d propositions not in the spec: %s", store_dir, len(unknown_names), ", ".join(sorted(unknown_names)))
    if np.isnan(targets).all():
        raise DataError(
            f"label store {store_dir} has no valid labels of teacher {teacher!r} for these conversations "
            "under the current questions; run `rbr label` on this data first."
        )
    return targets


def load_targets(conversations: Sequence[Conversation], spec: Spec, labels: str, teacher: str | None = None) -> np.ndarray:
    """Targets from `labels`: "human" for the rows' own booleans, or a label store directory."""
    if labels == "human":
        return human_targets(conversations, spec)
    if not Path(labels).is_dir():
        raise DataError(f"--labels {labels!r} is neither 'human' nor a label store directory.")
    return store_targets(conversations, spec, labels, teacher)


def describe_targets(targets: np.ndarray, names: Sequence[str]) -> str:
    """Summarise targets per proposition: sum of targets (positives for booleans) over labeled rows."""
    labeled = (~np.isnan(targets)).sum(axis=0)  # (K,)
    positives = np.nansum(targets, axis=0)  # (K,)
    return "; ".join(f"{n} {p:.0f}/{c}" for n, p, c in zip(names, positives, labeled))


# ---------------------------------------------------------------- pieces of the loop


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean binary cross-entropy over the cells whose target is not NaN."""
    mask = ~torch.isnan(targets)  # (B, K)
    filled = torch.where(mask, targets, torch.zeros_like(targets))  # (B, K)
    losses = F.binary_cross_entropy_with_logits(logits, filled, pos_weight=pos_weight, reduction="none")  # (B, K)
    count = mask.sum()
    if count == 0:
        return logits.sum() * 0.0  # keeps the graph for backward on a batch without labels
    return (losses * mask).sum() / count


def positive_weights(targets: np.ndarray, mode: str, cap: float) -> np.ndarray | None:
    """Per-head weights of positive targets: None for "none", negatives/positives for "auto"."""
    if mode == "none":
        return None
    if mode != "auto":
        raise DataError(f"--pos-weight {mode!r} is invalid; expected 'auto' or 'none'.")
    labeled = (~np.isnan(targets)).sum(axis=0)  # (K,)
    positives = np.nansum(targets, axis=0)  # (K,), soft targets count fractionally
    ratio = np.where(positives > 0, (labeled - positives) / np.maximum(positives, 1e-6), 1.0)
    return np.clip(ratio, 1.0, cap).astype(np.float32)


def split_by_prompt(conversations: Sequence[Conversation], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation row indices; all completions of one prompt land on the same side."""
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"--val-fraction {fraction} is invalid; expected a number in [0, 1).")
    prompts = sorted({c.prompt_id for c in conversations})
    rng = np.random.default_rng(seed)
    n_val = int(round(len(prompts) * fraction))
    if n_val >= len(prompts):
        n_val = len(prompts) - 1
    held_out = set(rng.permutation(prompts)[:n_val].tolist()) if n_val > 0 else set()
    is_val = np.array([c.prompt_id in held_out for c in conversations])
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def length_grouped_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar lengths, so padding wastes little compute."""
    order = rng.permutation(len(lengths))
    window = batch_size * 16
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def linear_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to the peak learning rate, then linear decay to zero."""
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _param_groups(student: Student, settings: TrainSettings) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, param in student.model.encoder.named_parameters():
        (no_decay if param.ndim == 1 else decay).append(param)  # biases and LayerNorm weights are 1-D
    return [
        {"params": decay, "lr": settings.lr, "weight_decay": settings.weight_decay},
        {"params": no_decay, "lr": settings.lr, "weight_decay": 0.0},
        {"params": [student.model.heads.weight], "lr": settings.head_lr, "weight_decay": settings.weight_decay},
        {"params": [student.model.heads.bias], "lr": settings.head_lr, "weight_decay": 0.0},
    ]


@torch.no_grad()
def _validation_loss(student: Student, rows: list, targets: np.ndarray, index: np.ndarray, batch_size: int) -> float:
    student.model.eval()
    total, cells = 0.0, 0
    for start in range(0, len(index), batch_size):
        chunk = index[start : start + batch_size]
        batch = batch_tensors([rows[i] for i in chunk], student.config.render.pad_id)
        logits = student.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])  # (b, K)
        target = torch.from_numpy(targets[chunk])  # (b, K)
        count = int((~torch.isnan(target)).sum())
        total += float(masked_bce(logits, target)) * count
        cells += count
    return total / cells if cells else float("nan")


# ---------------------------------------------------------------- full training


def train_student(
    conversations: Sequence[Conversation],
    targets: np.ndarray,
    spec: Spec,
    out_dir: str | Path,
    settings: TrainSettings = TrainSettings(),
    backbone_dir: str | Path | None = None,
    label_source: str = "",
) -> dict[str, Any]:
    """Fine-tune a new student on (N, K) targets and save it to `out_dir`; return the training record."""
    started = time.perf_counter()
    threads = configure_threads(settings.num_threads)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    _check_targets(conversations, targets, spec)
    unlabeled = [n for n, c in zip(spec.proposition_names, (~np.isnan(targets)).sum(axis=0)) if c == 0]
    if unlabeled:
        logger.warning("no labels for %d propositions; their heads stay untrained: %s", len(unlabeled), ", ".join(unlabeled))

    # build the student and render every conversation once
    student = create_student(spec, backbone_dir, RenderSettings(max_length=settings.max_length), seed=settings.seed,
                             pooling=settings.pooling)
    encoded = student.encode(conversations)
    rows = encoded.rows
    lengths = np.array([len(ids) for ids, _ in rows])  # (N,)
    logger.info("rendered %d conversations: mean %.0f tokens, %d contexts and %d replies truncated at %d tokens",
                len(rows), lengths.mean(), encoded.contexts_truncated, encoded.replies_truncated, settings.max_length)

    train_index, val_index = split_by_prompt(conversations, settings.val_fraction, settings.seed)
    weights = positive_weights(targets[train_index], settings.pos_weight, settings.max_pos_weight)
    pos_weight = None if weights is None else torch.from_numpy(weights)
    logger.info("training on %d conversations, validating on %d; labels (positives/labeled): %s",
                len(train_index), len(val_index), describe_targets(targets[train_index], spec.proposition_names))

    optimizer = torch.optim.AdamW(_param_groups(student, settings))
    steps_per_epoch = math.ceil(len(train_index) / settings.batch_size)
    scheduler = linear_schedule(optimizer, steps_per_epoch * settings.epochs, settings.warmup_fraction)

    history: list[dict[str, float]] = []
    best_loss, best_state, best_epoch, stale = math.inf, None, 0, 0
    train_seconds, train_sequences, train_tokens = 0.0, 0, 0
    for epoch in range(1, settings.epochs + 1):
        # one pass over the training rows
        epoch_start = time.perf_counter()
        train_loss = _train_epoch(student, rows, targets, train_index, lengths, rng, optimizer, scheduler, pos_weight, settings, epoch)
        train_seconds += time.perf_counter() - epoch_start
        train_sequences += len(train_index)
        train_tokens += int(lengths[train_index].sum())

        # validation loss decides which epoch's weights are kept
        val_loss = _validation_loss(student, rows, targets, val_index, settings.batch_size * 2) if len(val_index) else float("nan")
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
        logger.info("epoch %d: train loss %.4f, validation loss %.4f", epoch, train_loss, val_loss)
        if math.isnan(val_loss):
            best_epoch = epoch
            continue
        if val_loss < best_loss:
            best_loss, best_epoch, stale = val_loss, epoch, 0
            best_state = {k: v.detach().clone() for k, v in student.model.state_dict().items()}
        else:
            stale += 1
            if stale >= settings.patience:
                logger.info("early stopping after epoch %d; keeping epoch %d", epoch, best_epoch)
                break

    if best_state is not None:
        student.model.load_state_dict(best_state)
    student.model.eval()
    record = {
        "mode": "full",
        "label_source": label_source,
        "settings": asdict(settings),
        "conversations": len(rows),
        "train_conversations": int(len(train_index)),
        "val_conversations": int(len(val_index)),
        "history": history,
        "best_epoch": best_epoch,
        "torch_threads": threads,
        "train_seconds": round(train_seconds, 1),
        "sequences_per_second": round(train_sequences / train_seconds, 2) if train_seconds else None,
        "tokens_per_second": round(train_tokens / train_seconds, 1) if train_seconds else None,
        "seconds": round(time.perf_counter() - started, 1),
    }
    save_student(student, out_dir, training=record)
    return record


def _train_epoch(student, rows, targets, index, lengths, rng, optimizer, scheduler, pos_weight, settings, epoch) -> float:
    student.model.train()
    batches = length_grouped_batches(lengths[index], settings.batch_size, rng)
    losses = []
    bar = tqdm(batches, desc=f"epoch {epoch}/{settings.epochs}", unit="batch", disable=not settings.progress, leave=False)
    for local in bar:
        chunk = index[local]
        batch = batch_tensors([rows[i] for i in chunk], student.config.render.pad_id)
        logits = student.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])  # (b, K)
        loss = masked_bce(logits, torch.from_numpy(targets[chunk]), pos_weight)

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.model.parameters(), settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    bar.close()
    return float(np.mean(losses)) if losses else float("nan")


def _check_targets(conversations: Sequence[Conversation], targets: np.ndarray, spec: Spec) -> None:
    expected = (len(conversations), len(spec.simple))
    if targets.shape != expected:
        raise ValueError(f"targets have shape {targets.shape}, expected {expected}")
    labeled = targets[~np.isnan(targets)]
    if labeled.size == 0:
        raise DataError("no labels at all for these conversations; nothing to train on.")
    if labeled.min() < 0.0 or labeled.max() > 1.0:
        raise DataError(f"targets must be P(yes) in [0, 1]; found values from {labeled.min()} to {labeled.max()}.")


# ---------------------------------------------------------------- new heads on a frozen trunk


def plan_heads(student: Student, spec: Spec) -> tuple[dict[str, int], list[str]]:
    """Split the spec's propositions into kept heads (name -> old column) and heads to train.

    A head is kept when the student has a proposition of that name with the same
    question and examples. A new name or a changed question gets a fresh head.
    """
    old = {p.name: (k, p) for k, p in enumerate(student.spec.simple)}
    kept, to_train = {}, []
    for prop in spec.simple:
        if prop.name in old and (old[prop.name][1].question, old[prop.name][1].examples) == (prop.question, prop.examples):
            kept[prop.name] = old[prop.name][0]
        else:
            to_train.append(prop.name)
    return kept, to_train


@torch.no_grad()
def pooled_features(student: Student, rows: list, batch_size: int = 32) -> torch.Tensor:
    """Pooled trunk vectors of encoded rows, float32 (N, H), in eval mode."""
    student.model.eval()
    order = np.argsort([len(ids) for ids, _ in rows], kind="stable")
    features = torch.zeros((len(rows), student.model.heads.in_features))  # (N, H)
    for start in range(0, len(rows), batch_size):
        chunk = order[start : start + batch_size]
        batch = batch_tensors([rows[i] for i in chunk], student.config.render.pad_id)
        features[torch.from_numpy(chunk)] = student.model.pool(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    return features


def extend_student(
    from_dir: str | Path,
    conversations: Sequence[Conversation],
    targets: np.ndarray,
    spec: Spec,
    out_dir: str | Path,
    settings: TrainSettings = TrainSettings(),
    label_source: str = "",
) -> dict[str, Any]:
    """Add or retrain heads for new or changed propositions on a frozen trunk and save to `out_dir`."""
    started = time.perf_counter()
    configure_threads(settings.num_threads)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    _check_targets(conversations, targets, spec)
    student = load_student(from_dir)
    kept, to_train = plan_heads(student, spec)
    if not to_train:
        raise StudentError(
            f"{from_dir}: every proposition of the spec already has a head with the same question; "
            "nothing to train. Edit or add propositions, or train from scratch without --from."
        )
    columns = [spec.proposition_names.index(n) for n in to_train]
    labeled = (~np.isnan(targets[:, columns])).sum(axis=0)  # (k,)
    missing = [n for n, c in zip(to_train, labeled) if c == 0]
    if missing:
        raise DataError(f"no labels for the propositions to train: {', '.join(missing)}; label them first.")
    logger.info("keeping %d heads, training %d: %s", len(kept), len(to_train), ", ".join(to_train))

    # pooled vectors of the frozen trunk, computed once
    rows = student.encode(conversations).rows
    features = pooled_features(student, rows, settings.batch_size * 2)  # (N, H)
    new_targets = torch.from_numpy(targets[:, columns])  # (N, k)
    train_index, val_index = split_by_prompt(conversations, settings.val_fraction, settings.seed)
    weights = positive_weights(targets[train_index][:, columns], settings.pos_weight, settings.max_pos_weight)

    head, history, best_epoch = _fit_heads(features, new_targets, train_index, val_index, weights, student, settings, rng, len(to_train))

    # assemble the head in the new spec order: kept columns copied, trained ones from `head`
    old_heads = student.model.heads
    merged = torch.nn.Linear(old_heads.in_features, len(spec.simple))
    with torch.no_grad():
        for k, name in enumerate(spec.proposition_names):
            if name in kept:
                merged.weight[k] = old_heads.weight[kept[name]]
                merged.bias[k] = old_heads.bias[kept[name]]
            else:
                j = to_train.index(name)
                merged.weight[k] = head.weight[j]
                merged.bias[k] = head.bias[j]
    student.model.heads = merged
    student.spec = spec
    student.config = type(student.config)(**{
        **student.config.__dict__,
        "propositions": tuple(spec.proposition_names),
        "spec": spec.to_dict(),
        "spec_hash": spec.hash(),
    })
    record = {
        "mode": "heads",
        "from": str(from_dir),
        "label_source": label_source,
        "settings": asdict(settings),
        "kept_heads": sorted(kept),
        "trained_heads": to_train,
        "conversations": len(rows),
        "history": history,
        "best_epoch": best_epoch,
        "previous": dict(student.config.training),
        "seconds": round(time.perf_counter() - started, 1),
    }
    save_student(student, out_dir, training=record)
    return record


def _fit_heads(features, targets, train_index, val_index, weights, student, settings, rng, count):
    """Fit `count` linear heads on pooled vectors with AdamW; keep the best validation epoch."""
    generator = torch.Generator().manual_seed(settings.seed)
    head = torch.nn.Linear(features.shape[1], count)
    with torch.no_grad():
        bound = 1.0 / math.sqrt(features.shape[1])
        head.weight.copy_(torch.empty_like(head.weight).uniform_(-bound, bound, generator=generator))
        head.bias.zero_()
    optimizer = torch.optim.AdamW(head.parameters(), lr=settings.head_lr, weight_decay=settings.weight_decay)
    steps = math.ceil(len(train_index) / settings.batch_size) * settings.epochs
    scheduler = linear_schedule(optimizer, steps, settings.warmup_fraction)
    pos_weight = None if weights is None else torch.from_numpy(weights)
    dropout = student.config.head_dropout

    history, best_loss, best_state, best_epoch, stale = [], math.inf, None, settings.epochs, 0
    for epoch in range(1, settings.epochs + 1):
        head.train()
        losses = []
        order = rng.permutation(train_index)
        for start in range(0, len(order), settings.batch_size):
            chunk = torch.from_numpy(order[start : start + settings.batch_size])
            logits = head(F.dropout(features[chunk], dropout, training=True))  # (b, k)
            loss = masked_bce(logits, targets[chunk], pos_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        with torch.no_grad():
            val_loss = float(masked_bce(head(features[torch.from_numpy(val_index)]), targets[torch.from_numpy(val_index)])) if len(val_index) else float("nan")
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": val_loss})
        if math.isnan(val_loss):
            continue
        if val_loss < best_loss:
            best_loss, best_epoch, stale = val_loss, epoch, 0
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        else:
            stale += 1
            if stale >= settings.patience:
                break
    if best_state is not None:
        head.load_state_dict(best_state)
    return head, history, best_epoch
