"""Scoring as a Ray Data `map_batches` callable class.

Ray constructs one `ScoreBatch` per actor, so each actor opens the bundle once and
scores every batch it is given. This module does not import ray: the class only
reads a batch of columns and returns one, in numpy or pandas format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from rbr.errors import DataError
from runtime.scorer import Scorer

P_YES_PREFIX = "p_yes_"  # output column of each proposition: p_yes_<name>


class ScoreBatch:
    """Adds P(yes) per proposition, the most likely completion class and the reward to a batch.

    Input columns: `prompt` (a string or a list of chat messages), `completion` (a
    string or an assistant message), `response_type`, optional `base_reward`. Output:
    the input columns plus `p_yes_<proposition>` (float64), `completion_class`
    (string) and `reward` (float64).

    Example:
        import ray
        ds = ray.data.read_json("conversations.jsonl")
        scored = ds.map_batches(ScoreBatch, fn_constructor_kwargs={"bundle_dir": "runs/bundle-gold"},
                                batch_format="pandas", batch_size=256, concurrency=4)
    """

    def __init__(
        self,
        bundle_dir: str | Path,
        variant: str = "auto",
        intra_op_threads: int | None = None,
        prompt_column: str = "prompt",
        completion_column: str = "completion",
        response_type_column: str = "response_type",
        base_reward_column: str = "base_reward",
        default_response_type: str | None = None,
    ):
        self.scorer = Scorer(bundle_dir, variant=variant, intra_op_threads=intra_op_threads)
        self.prompt_column = prompt_column
        self.completion_column = completion_column
        self.response_type_column = response_type_column
        self.base_reward_column = base_reward_column
        self.default_response_type = default_response_type

    def __call__(self, batch: Any) -> Any:
        columns = _columns(batch)
        for name in (self.prompt_column, self.completion_column):
            if name not in columns:
                raise DataError(f"the batch has no {name!r} column; it has {', '.join(columns)}.")

        # build the conversations; numpy object arrays hold nested messages as arrays or lists
        prompts = [_plain(v) for v in columns[self.prompt_column]]
        completions = [_plain(v) for v in columns[self.completion_column]]
        response_types = columns.get(self.response_type_column)
        base = columns.get(self.base_reward_column)
        result = self.scorer.score(
            [{"prompt": p, "completion": c} for p, c in zip(prompts, completions)],
            response_types=None if response_types is None else [_plain(v) for v in response_types],
            base_rewards=None if base is None else [float(v) for v in base],
            default_response_type=self.default_response_type,
        )

        # write the new columns next to the input ones
        added: dict[str, np.ndarray] = {}
        for k, name in enumerate(result.proposition_names):
            added[P_YES_PREFIX + name] = result.p_yes[:, k]  # (N,)
        added["completion_class"] = np.array([c or "" for c in result.best_class()], dtype=object)  # (N,)
        added["reward"] = result.reward  # (N,)
        return _with_columns(batch, added)


def _columns(batch: Any) -> Mapping[str, Sequence[Any]]:
    if isinstance(batch, Mapping):
        return batch
    if hasattr(batch, "columns") and hasattr(batch, "__getitem__"):  # a pandas DataFrame
        return {str(name): batch[name].tolist() for name in batch.columns}
    raise DataError(f"expected a dict of columns or a pandas DataFrame, got {type(batch).__name__}.")


def _with_columns(batch: Any, added: Mapping[str, np.ndarray]) -> Any:
    if isinstance(batch, Mapping):
        return {**batch, **added}
    out = batch.copy()
    for name, values in added.items():
        out[name] = values
    return out


def _plain(value: Any) -> Any:
    """Numpy arrays and scalars from Arrow-backed batches as plain Python lists and values."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value
