"""Putting rewards together: a weighted sum of named parts, and reward-model ensembles."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from alignkit.rewards.base import Prompt, RewardFunction, RewardOutput, check_batch

CombineRule = Literal["mean", "min", "mean_minus_std"]
COMBINE_RULES: tuple[str, ...] = ("mean", "min", "mean_minus_std")


class CompositeReward:
    """r(x, y) = Σ_i w_i · r_i(x, y), with each weighted term kept as a part.

    This is how "reward model + shaping" is built, so one flawed signal is not the only one:
    ``CompositeReward([("reward_model", scorer, 1.0), ("length", LengthPenalty(64), 1.0)])``.
    ``parts[name]`` is w_i · r_i, so the parts sum to ``scores``.
    """

    def __init__(self, components: Sequence[tuple[str, RewardFunction, float]]):
        if not components:
            raise ValueError("CompositeReward needs at least one component")
        names = [name for name, _, _ in components]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate reward component names: {', '.join(duplicates)}")
        self.components = [(name, fn, float(weight)) for name, fn, weight in components]

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> RewardOutput:
        check_batch(prompts, responses)
        parts = {
            name: weight * fn(prompts, responses).scores for name, fn, weight in self.components
        }
        total = torch.stack(list(parts.values())).sum(dim=0)
        return RewardOutput(total, parts)


class RewardEnsemble:
    """Several reward models' scores r_1..r_M combined into one, per response:

        mean:            (1/M) Σ_m r_m
        min:             min_m r_m                       (worst-case optimisation)
        mean_minus_std:  mean − k · std_m(r_m)            (uncertainty-weighted optimisation)

    Coste et al. 2023, "Reward Model Ensembles Help Mitigate Overoptimization": penalising
    disagreement keeps the policy where the members agree, i.e. near the data they were
    trained on. std is the population std across members (divide by M), matching their
    variance penalty. Members should share a scale (e.g. trained with reward centering).
    ``parts`` holds each member's raw scores (``member_0``…) and their ``std``.
    """

    def __init__(
        self, members: Sequence[RewardFunction], combine: CombineRule = "mean", k: float = 1.0
    ):
        if len(members) < 1:
            raise ValueError("RewardEnsemble needs at least one member")
        if combine not in COMBINE_RULES:
            raise ValueError(f"combine must be one of {', '.join(COMBINE_RULES)}, got {combine!r}")
        self.members, self.combine, self.k = list(members), combine, float(k)

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> RewardOutput:
        check_batch(prompts, responses)
        stacked = torch.stack([m(prompts, responses).scores for m in self.members])  # [M, N]
        std = stacked.std(dim=0, correction=0)
        if self.combine == "mean":
            scores = stacked.mean(dim=0)
        elif self.combine == "min":
            scores = stacked.min(dim=0).values
        else:
            scores = stacked.mean(dim=0) - self.k * std
        parts = {f"member_{i}": row for i, row in enumerate(stacked)}
        parts["std"] = std
        return RewardOutput(scores, parts)
