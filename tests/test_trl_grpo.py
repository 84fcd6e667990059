"""A real TRL GRPOTrainer run on CPU with the scorer as its reward function.

The policy is a random-weight LlamaForCausalLM (hidden size 64, 2 layers) with a
WordLevel tokenizer, built and saved locally, so nothing comes from a hub.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.adapters import AsyncTrlReward, TrlReward

pytestmark = pytest.mark.slow

WORDS = (
    "sorry i can not help with that here is how to do it please ask a doctor "
    "the steps are simple mix bake wait call someone you trust safe harm plan trip bread"
).split()


def build_policy(folder: Path) -> Path:
    """Save a tiny random Llama policy and its tokenizer to `folder`."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[BOS]", "[EOS]", *dict.fromkeys(WORDS)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]"
    )

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
        pad_token_id=0, bos_token_id=2, eos_token_id=3,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def prompt_dataset():
    from datasets import Dataset

    prompts = ["how to bake bread", "help me plan a trip", "how to harm someone", "i feel unsafe please help"]
    types = ["Comply", "Comply", "Hard Refuse", "Safe Refuse 2"]
    return Dataset.from_dict({"prompt": prompts * 2, "response_type": types * 2})


@pytest.mark.parametrize("reward_class", [TrlReward, AsyncTrlReward])
def test_grpo_trainer_steps_with_scorer(tiny_bundle: Path, tmp_path: Path, reward_class):
    from trl import GRPOConfig, GRPOTrainer

    policy = build_policy(tmp_path / "policy")
    reward = reward_class(tiny_bundle)

    args = GRPOConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=8,
        max_steps=2,
        learning_rate=1e-3,
        beta=0.04,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=0,
    )
    trainer = GRPOTrainer(model=str(policy), reward_funcs=reward, args=args, train_dataset=prompt_dataset())
    trainer.train()

    assert trainer.state.global_step == 2
    logs = [entry for entry in trainer.state.log_history if "rewards/rbr_reward/mean" in entry]
    assert len(logs) == 2
    assert all("rbr/disallowed_content" in entry for entry in logs)
    # rewards that differ between generations give the policy a nonzero advantage
    assert any(entry["rewards/rbr_reward/std"] > 0 for entry in logs)
