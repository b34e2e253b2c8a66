"""Held-out prompts answered greedily by a policy and scored: what an online run reports
every `eval_every` iterations and at its end."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from alignkit.data import PromptExample
from alignkit.eval.compare import Policy, greedy_answers
from alignkit.eval.segments import segment_figures
from alignkit.rewards.base import RewardFunction
from alignkit.rollout.sampling import SamplingConfig


@torch.no_grad()
def score_greedy_answers(
    policy: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[PromptExample],
    sampling: SamplingConfig,
    reward_fn: RewardFunction,
    gold_fn: RewardFunction | None = None,
    *,
    batch_size: int,
    max_prompt_length: int | None = None,
) -> dict[str, float]:
    """Greedy answers (the `sampling` limits, no sampling) to `prompts`, scored by the
    reward and, when given, the gold reward: `eval_objective/scores`, `eval_gold/score`,
    each per user segment with the gap between segments, and `eval_completions/mean_words`."""
    texts = greedy_answers(
        Policy(policy, tokenizer),
        prompts,
        sampling,
        batch_size=batch_size,
        max_prompt_length=max_prompt_length,
    )
    questions = [p.prompt for p in prompts]
    segments = [p.group for p in prompts]
    scores = reward_fn(questions, texts).scores
    metrics = {"eval_objective/scores": float(scores.mean())}
    metrics.update(segment_figures(scores, segments, prefix="eval_objective/scores"))
    if gold_fn is not None:
        gold = gold_fn(questions, texts).scores
        metrics["eval_gold/score"] = float(gold.mean())
        metrics.update(segment_figures(gold, segments, prefix="eval_gold/score"))
    metrics["eval_completions/mean_words"] = sum(len(t.split()) for t in texts) / len(texts)
    return metrics
