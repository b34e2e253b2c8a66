"""Running reward normalisation, so PPO sees rewards on a steady scale as the policy moves."""

from __future__ import annotations

import math
from typing import Any

import torch


class RewardNormalizer:
    """r̂ = clip((r − μ) / (σ + eps), −clip, clip), with μ, σ running statistics of every
    reward seen so far.

    ``momentum=None`` keeps exact statistics over all rewards (Welford's algorithm, merged a
    batch at a time with Chan et al.'s parallel update); a float α gives exponential moving
    statistics instead, forgetting old rewards at rate α per batch. σ is the population std.
    Statistics include the current batch before it is normalised (as TRL's RunningMoments).
    ``subtract_mean=False`` keeps the sign of the reward (only scales it); ``scale_by_std=False``
    only centres. ``state_dict`` holds everything needed to resume exactly.
    """

    def __init__(
        self,
        *,
        clip: float | None = None,
        subtract_mean: bool = True,
        scale_by_std: bool = True,
        momentum: float | None = None,
        eps: float = 1e-8,
    ):
        if clip is not None and clip <= 0:
            raise ValueError(f"clip must be positive, got {clip}")
        if momentum is not None and not 0 < momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.clip, self.subtract_mean, self.scale_by_std = clip, subtract_mean, scale_by_std
        self.momentum, self.eps = momentum, eps
        self.count = 0
        self.mean = 0.0
        self.var = 1.0  # used only before the first update; then the population variance

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 0.0))

    def update(self, rewards: torch.Tensor) -> None:
        values = torch.as_tensor(rewards, dtype=torch.float64).reshape(-1)
        n = values.numel()
        if n == 0:
            return
        batch_mean = float(values.mean())
        batch_var = float(values.var(correction=0))
        if self.count == 0:
            self.mean, self.var = batch_mean, batch_var
        elif self.momentum is None:
            # Chan et al.: merge (count, mean, M2) of the past with those of the batch
            total = self.count + n
            delta = batch_mean - self.mean
            m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
            self.mean += delta * n / total
            self.var = m2 / total
        else:
            # variance of the mixture (1 − α)·old + α·batch, about the new mean
            a = self.momentum
            delta = batch_mean - self.mean
            self.mean += a * delta
            self.var = (1 - a) * self.var + a * batch_var + a * (1 - a) * delta**2
        self.count += n

    def normalize(self, rewards: torch.Tensor) -> torch.Tensor:
        """Normalise with the current statistics, without updating them."""
        out = torch.as_tensor(rewards, dtype=torch.float32)
        if self.subtract_mean:
            out = out - self.mean
        if self.scale_by_std:
            out = out / (self.std + self.eps)
        if self.clip is not None:
            out = out.clamp(-self.clip, self.clip)
        return out

    def __call__(self, rewards: torch.Tensor, *, update: bool = True) -> torch.Tensor:
        if update:
            self.update(rewards)
        return self.normalize(rewards)

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "var": self.var}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
        self.mean = float(state["mean"])
        self.var = float(state["var"])
