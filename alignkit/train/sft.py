"""Supervised fine-tuning: cross-entropy on the completion tokens (the prompt is masked)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from alignkit.data import SFTCollator, pack_sequences
from alignkit.models.scoring import labelled_token_logprobs
from alignkit.options import option
from alignkit.train.common import (
    evaluate_in_batches,
    export_merged_lora,
    load_train_eval,
    policy_and_tokenizer,
    save_policy_hook,
    tokenize,
)
from alignkit.train.engine import Engine, FitResult
from alignkit.train.train_config import TrainConfig


@dataclass
class SFTConfig(TrainConfig):
    """Options for `alignkit sft`."""

    learning_rate: float = option(2e-5, "Peak learning rate.", gt=0)
    train_on_prompt: bool = option(False, "Also compute the loss on prompt tokens.")
    packing: bool = option(False, "Pack examples into max_length blocks (no padding).")


def sft_batch_loss(
    model: nn.Module, batch: dict[str, Any]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean next-token cross-entropy over labelled tokens of one batch.

    Through `labelled_token_logprobs`, which drops the padding and runs the vocabulary
    projection only where a label is predicted. Packed blocks carry position ids that
    restart at each example; on a Llama-family decoder each example then attends to itself
    only, exactly as if it were alone.
    """
    logps, mask = labelled_token_logprobs(
        model,
        batch["input_ids"],
        batch["attention_mask"],
        batch["labels"],
        position_ids=batch.get("position_ids"),
    )
    num_tokens = mask.sum()
    loss = -(logps * mask).sum() / num_tokens.clamp(min=1)
    return loss, {"num_tokens": num_tokens.float()}


def example_losses(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """Per-example mean token cross-entropy [B] (for evaluation)."""
    logps, mask = labelled_token_logprobs(
        model, batch["input_ids"], batch["attention_mask"], batch["labels"]
    )
    return -(logps * mask).sum(1) / mask.sum(1).clamp(min=1)


class SFTTrainer:
    """Supervised fine-tuning of a causal LM: `SFTTrainer(SFTConfig(...)).train()`."""

    def __init__(
        self,
        config: SFTConfig,
        model: nn.Module | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ):
        self.cfg = config
        self.model, self.tokenizer = policy_and_tokenizer(config, model, tokenizer)

    def train(self) -> FitResult:
        cfg, tokenizer = self.cfg, self.tokenizer
        train_records, eval_records = load_train_eval(cfg, "sft")
        train_features = tokenize(
            train_records, tokenizer, cfg, train_on_prompt=cfg.train_on_prompt
        )
        eval_features = tokenize(eval_records, tokenizer, cfg, train_on_prompt=cfg.train_on_prompt)
        if cfg.packing:
            train_features = pack_sequences(train_features, cfg.max_length)
        collator = SFTCollator(tokenizer.pad_token_id)
        engine = Engine(cfg, self.model, save_model=save_policy_hook(tokenizer))

        def eval_fn(model: nn.Module) -> dict[str, float]:
            return evaluate_in_batches(
                eval_features,
                collator,
                lambda batch: {"loss": example_losses(model, batch)},
                batch_size=cfg.batch_size,
                device=engine.device,
            )

        if eval_features and not cfg.resume:
            engine.evaluate(eval_fn, epoch=0.0)
        result = engine.fit(
            train_features, collator, sft_batch_loss, eval_fn if eval_features else None
        )
        if cfg.use_lora and engine.is_main and result.model_dir is not None:
            export_merged_lora(engine.unwrapped_model, tokenizer, result.model_dir)
        return result
