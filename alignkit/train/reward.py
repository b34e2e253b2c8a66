"""Reward-model training: Bradley–Terry on preference pairs.

P(y_w ≻ y_l | x) = σ(r(x, y_w) − r(x, y_l)); the loss is −log σ(r_w − r_l − m) with an optional
per-pair margin m (Llama 2), plus an optional centering term c·E[(r_w + r_l)²] that keeps the
mean reward near 0 (Eisenstein et al. 2023), so PPO's reward scale does not drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from alignkit.config import option
from alignkit.models.heads import ScalarHeadModel
from alignkit.ops.losses import bradley_terry_loss, preference_accuracy
from alignkit.train.config import TrainConfig


@dataclass
class RewardConfig(TrainConfig):
    """Options for `alignkit rm`."""

    learning_rate: float = option(2e-5, "Peak learning rate.", gt=0)
    use_margin: bool = option(True, "Subtract the data's `margin` column inside the sigmoid.")
    center_rewards_coefficient: float = option(
        0.0, "Weight of E[(r_w + r_l)²], pulling the mean reward toward 0 (0 = off).", min=0
    )


def reward_batch_loss(
    model: ScalarHeadModel, batch: dict[str, Any], cfg: RewardConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Bradley–Terry loss of one batch of pairs (chosen rows first, then rejected)."""
    scores = model.score(batch["input_ids"], batch["attention_mask"])
    half = scores.shape[0] // 2
    chosen, rejected = scores[:half], scores[half:]
    margin = None
    if cfg.use_margin and bool(batch["has_margin"].any()):
        margin = (batch["margin"] * batch["has_margin"]).to(scores.device)
    loss = bradley_terry_loss(chosen, rejected, margin)
    if cfg.center_rewards_coefficient > 0:
        loss = loss + cfg.center_rewards_coefficient * ((chosen + rejected) ** 2).mean()
    metrics = {
        "accuracy": preference_accuracy(chosen, rejected),
        "margin": (chosen - rejected).mean().detach(),
        "rewards/chosen": chosen.mean().detach(),
        "rewards/rejected": rejected.mean().detach(),
    }
    return loss, metrics
