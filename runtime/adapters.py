"""Reward functions for RL trainers: TRL's GRPOTrainer and verl's custom reward function.

Each adapter is a plain callable around one `Scorer`, so the ONNX session is opened
once per process and shared by every call.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from rbr.errors import DataError
from runtime.scorer import Scorer

RESPONSE_TYPE_COLUMN = "response_type"
BUNDLE_ENV = "RBR_BUNDLE_DIR"  # bundle folder read by `compute_score` when none is passed


def _as_scorer(scorer_or_bundle: Scorer | str | Path, scorer_kwargs: Mapping[str, Any] | None) -> Scorer:
    if isinstance(scorer_or_bundle, Scorer):
        return scorer_or_bundle
    return Scorer(scorer_or_bundle, **dict(scorer_kwargs or {}))


class TrlReward:
    """A reward function for TRL's `GRPOTrainer(reward_funcs=...)`.

    Prompts and completions may be standard strings or conversational message lists.
    The response type of each prompt comes from the dataset column
    `response_type_column`, which TRL passes to reward functions as a keyword
    argument. Without that column the call raises DataError, unless
    `default_response_type` (for example "Comply") is set. An optional `base_reward`
    column is added to the RBR. When TRL passes `log_metric`, the mean P(yes) of each
    proposition is logged as `rbr/<proposition>`.

    Example:
        from trl import GRPOConfig, GRPOTrainer
        reward = TrlReward("runs/bundle-gold")
        trainer = GRPOTrainer(model="my-policy", reward_funcs=reward,
                              train_dataset=dataset,  # columns: prompt, response_type
                              args=GRPOConfig(output_dir="out"))
    """

    def __init__(
        self,
        scorer_or_bundle: Scorer | str | Path,
        response_type_column: str = RESPONSE_TYPE_COLUMN,
        default_response_type: str | None = None,
        base_reward_column: str | None = "base_reward",
        log_propositions: bool = True,
        name: str = "rbr_reward",
        scorer_kwargs: Mapping[str, Any] | None = None,
    ):
        self.scorer = _as_scorer(scorer_or_bundle, scorer_kwargs)
        self.response_type_column = response_type_column
        self.default_response_type = default_response_type
        self.base_reward_column = base_reward_column
        self.log_propositions = log_propositions
        self.__name__ = name  # TRL names the reward's metrics after it

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        result = self.scorer.score(
            list(zip(prompts, completions)),
            response_types=self._response_types(len(prompts), kwargs),
            base_rewards=kwargs.get(self.base_reward_column) if self.base_reward_column else None,
        )
        log_metric = kwargs.get("log_metric")
        if self.log_propositions and callable(log_metric) and len(result):
            for name, mean in zip(result.proposition_names, result.p_yes.mean(axis=0)):
                log_metric(f"rbr/{name}", float(mean))
        return [float(r) for r in result.reward]

    def _response_types(self, n: int, kwargs: Mapping[str, Any]) -> list[str | None]:
        column = kwargs.get(self.response_type_column)
        if column is None:
            if self.default_response_type is None:
                raise DataError(
                    f"the reward needs the response type of each prompt, but the dataset has no "
                    f"{self.response_type_column!r} column; add that column, name another one with "
                    "response_type_column=, or set default_response_type='Comply'."
                )
            return [self.default_response_type] * n
        if len(column) != n:
            raise DataError(f"column {self.response_type_column!r} has {len(column)} values for {n} completions.")
        return [self.default_response_type if value is None else value for value in column]


class AsyncTrlReward(TrlReward):
    """`TrlReward` as a coroutine: TRL runs async rewards on its event loop, in parallel.

    Scoring runs in a worker thread, so the event loop stays free meanwhile.

    Example:
        trainer = GRPOTrainer(..., reward_funcs=[AsyncTrlReward("runs/bundle-gold"), other_reward])
    """

    async def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        return await asyncio.to_thread(TrlReward.__call__, self, prompts, completions, **kwargs)


# ---------------------------------------------------------------------- verl


class VerlReward:
    """A verl custom reward function: `compute_score(data_source, solution_str, ground_truth, extra_info)`.

    `solution_str` is the completion. `extra_info` must carry:
    - `prompt`: the prompt, a string or a list of chat messages;
    - `response_type`: the prompt's response type (or set `default_response_type`);
    - `base_reward` (optional): a number added to the RBR.
    Returns {"score": reward, "p_yes/<proposition>": P(yes), ...}; verl uses "score" as
    the reward and logs the other keys.

    Example (verl config):
        custom_reward_function:
          path: my_reward.py          # contains: compute_score = VerlReward("runs/bundle-gold")
          name: compute_score
    """

    def __init__(
        self,
        scorer_or_bundle: Scorer | str | Path,
        default_response_type: str | None = None,
        scorer_kwargs: Mapping[str, Any] | None = None,
    ):
        self.scorer = _as_scorer(scorer_or_bundle, scorer_kwargs)
        self.default_response_type = default_response_type
        self.__name__ = "compute_score"

    def __call__(
        self,
        data_source: Any,
        solution_str: str,
        ground_truth: Any = None,
        extra_info: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> dict[str, float]:
        return self.batch([data_source], [solution_str], [ground_truth], [extra_info])[0]

    def batch(
        self,
        data_sources: Sequence[Any],
        solution_strs: Sequence[str],
        ground_truths: Sequence[Any],
        extra_infos: Sequence[Mapping[str, Any] | None],
        **kwargs: Any,
    ) -> list[dict[str, float]]:
        """Score many rows in one call, for verl's batch reward manager (same keys as above)."""
        rows = [self._row(i, s, e) for i, (s, e) in enumerate(zip(solution_strs, extra_infos))]
        result = self.scorer.score(
            rows,
            base_rewards=[row.get("base_reward") for row in rows],
            default_response_type=self.default_response_type,
        )
        scores = []
        for i in range(len(result)):
            entry = {"score": float(result.reward[i])}
            entry.update({f"p_yes/{name}": float(p) for name, p in zip(result.proposition_names, result.p_yes[i])})
            scores.append(entry)
        return scores

    @staticmethod
    def _row(i: int, solution_str: Any, extra_info: Mapping[str, Any] | None) -> dict[str, Any]:
        if not isinstance(extra_info, Mapping) or "prompt" not in extra_info:
            raise DataError(
                f"row {i}: extra_info must be a dict with the 'prompt' (and 'response_type') of the row; "
                f"got {type(extra_info).__name__}. Add them to extra_info when you build the verl dataset."
            )
        prompt = extra_info["prompt"]
        if isinstance(prompt, np.ndarray):  # parquet list columns arrive as numpy arrays
            prompt = prompt.tolist()
        return {
            "prompt": prompt,
            "completion": solution_str,
            "response_type": extra_info.get("response_type"),
            "base_reward": extra_info.get("base_reward"),
        }


_default_verl: VerlReward | None = None
_default_verl_lock = threading.Lock()


def compute_score(
    data_source: Any,
    solution_str: str,
    ground_truth: Any = None,
    extra_info: Mapping[str, Any] | None = None,
    bundle_dir: str | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """verl entry point: a `VerlReward` on `bundle_dir` or the RBR_BUNDLE_DIR environment variable.

    The scorer is opened on the first call and reused. Pass the bundle folder through
    verl's `custom_reward_function.reward_kwargs: {bundle_dir: ...}` or set
    RBR_BUNDLE_DIR in the workers' environment.

    Example (verl config):
        custom_reward_function:
          path: <site-packages>/runtime/adapters.py
          name: compute_score
          reward_kwargs: {bundle_dir: /models/bundle-gold}
    """
    return _verl_default(bundle_dir)(data_source, solution_str, ground_truth, extra_info)


def _verl_default(bundle_dir: str | None) -> Callable[..., dict[str, float]]:
    global _default_verl
    with _default_verl_lock:
        if _default_verl is None:
            bundle_dir = bundle_dir or os.environ.get(BUNDLE_ENV)
            if not bundle_dir:
                raise DataError(
                    f"compute_score needs a bundle: pass reward_kwargs {{bundle_dir: ...}} or set {BUNDLE_ENV}."
                )
            _default_verl = VerlReward(bundle_dir)
        return _default_verl
