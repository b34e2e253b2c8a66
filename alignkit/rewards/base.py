"""The one interface every reward shares: (prompts, responses) → RewardOutput.

A reward function is any callable ``f(prompts, responses) -> RewardOutput`` where prompts are
strings or chat message lists (``[{"role": ..., "content": ...}]``) and responses are the
sampled texts. ``scores`` is what PPO/GRPO optimise; ``parts`` names what it is made of, so a
rollout can log "reward_model 1.2, length −0.1, repetition 0, evasion −0.2".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, Union, runtime_checkable

import torch

Prompt = Union[str, list[dict]]  # noqa: UP007 (a runtime alias; py3.10 has no `type` statement)


@dataclass
class RewardOutput:
    """scores: float32 [N]; parts: component name → float32 [N].

    For a `CompositeReward` the parts are the weighted terms and sum to ``scores``; other
    rewards list what they looked at (e.g. each ensemble member), which need not add up.
    """

    scores: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scores = as_scores(self.scores)
        self.parts = {name: as_scores(v) for name, v in self.parts.items()}
        for name, values in self.parts.items():
            if values.shape != self.scores.shape:
                raise ValueError(
                    f"part '{name}' has shape {tuple(values.shape)}, scores {tuple(self.scores.shape)}"
                )

    def __len__(self) -> int:
        return self.scores.shape[0]

    def part_means(self) -> dict[str, float]:
        """Batch mean of the scores and of each part, for logging (`rewards/<part>`)."""
        means = {"rewards/total": float(self.scores.mean()) if len(self) else 0.0}
        for name, values in self.parts.items():
            means[f"rewards/{name}"] = float(values.mean()) if len(self) else 0.0
        return means


@runtime_checkable
class RewardFunction(Protocol):
    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> RewardOutput: ...


def as_scores(values: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """A 1-D float32 CPU tensor (rewards are small; the trainer moves them where it needs)."""
    scores = torch.as_tensor(values, dtype=torch.float32).detach().cpu()
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D, got shape {tuple(scores.shape)}")
    return scores


def check_batch(prompts: Sequence[Prompt], responses: Sequence[str]) -> None:
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")


def single_part(name: str, scores: torch.Tensor | Sequence[float]) -> RewardOutput:
    scores = as_scores(scores)
    return RewardOutput(scores, {name: scores})


def prompt_text(prompt: Prompt) -> str:
    """The text of a prompt for rule-based checks: a string itself, or the last user turn."""
    if isinstance(prompt, str):
        return prompt
    for message in reversed(list(prompt)):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return str(message.get("content", ""))
    return ""
