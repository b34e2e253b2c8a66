"""Shared pieces for the engine tests and the 2-process script: a tiny model, data, loss."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from alignkit.models.tiny import tiny_random_llama
from alignkit.train.train_config import TrainConfig

SEQ_LEN = 12


def synthetic_dataset(n: int = 32, seq_len: int = SEQ_LEN, seed: int = 1) -> list[dict[str, Any]]:
    """Equal-length random token sequences (so per-batch mean losses average exactly)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 200, (n, seq_len), generator=g)
    return [{"input_ids": row} for row in ids]


def collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.stack([e["input_ids"] for e in examples])}


def next_token_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]):
    """Mean next-token cross-entropy, plus an accuracy metric."""
    ids = batch["input_ids"]
    logits = model(input_ids=ids).logits[:, :-1]
    targets = ids[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
    accuracy = (logits.argmax(-1) == targets).float().mean()
    return loss, {"accuracy": accuracy}


def make_config(output_dir, **overrides) -> TrainConfig:
    params = dict(
        model="tiny-random-llama",
        output_dir=str(output_dir),
        max_steps=6,
        learning_rate=1e-3,
        warmup_steps=2,
        batch_size=4,
        gradient_accumulation_steps=1,
        log_every=1,
        eval_every=0,
        save_every=0,
        report_to_tensorboard=False,
        seed=0,
    )
    params.update(overrides)
    return TrainConfig(**params)


def tiny_model(seed: int = 0) -> torch.nn.Module:
    return tiny_random_llama(seed=seed)[0]
