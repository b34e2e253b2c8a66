"""Supervised fine-tuning: cross-entropy on the completion tokens (the prompt is masked)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from alignkit.config import option
from alignkit.ops.losses import sft_loss
from alignkit.train.config import TrainConfig


@dataclass
class SFTConfig(TrainConfig):
    """Options for `alignkit sft`."""

    learning_rate: float = option(2e-5, "Peak learning rate.", gt=0)
    train_on_prompt: bool = option(False, "Also compute the loss on prompt tokens.")
    packing: bool = option(False, "Pack examples into max_length blocks (no padding).")


def sft_batch_loss(
    model: nn.Module, batch: dict[str, Any]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean next-token cross-entropy over labelled tokens of one batch."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if "position_ids" in batch:
        inputs["position_ids"] = batch["position_ids"]
    logits = model(**inputs).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    loss = sft_loss(logits, labels)
    num_tokens = (labels != -100).sum()
    return loss, {"num_tokens": num_tokens.float()}
