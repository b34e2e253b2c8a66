"""The steps every online iteration shares, as plain functions: sample responses from the
policy, score them, and take log-probabilities under the policy and the reference.

PPO and GRPO call these from their own `iteration`, in the order they need them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from alignkit.data import PromptExample
from alignkit.eval.segments import segment_figures
from alignkit.guard import FixedKLController, Guard, build_guard, build_kl_controller
from alignkit.models.scoring import labelled_token_logprobs_and_entropy
from alignkit.rewards import (
    RewardNormalizer,
    build_reward,
    build_reward_normalizer,
    repeated_ngram_fraction,
)
from alignkit.rewards.base import RewardFunction, RewardOutput
from alignkit.rollout.sampling import Rollout, sample
from alignkit.rollout.sequences import Sequences, right_padded_sequences
from alignkit.train.online_config import OnlineConfig


@dataclass
class OnlineParts:
    """What both online trainers build from their config before the run."""

    scorer: ResponseScorer  # reward, penalties, normalisation; the gold reward, watched
    kl_controller: FixedKLController  # β: fixed, or adaptive toward `kl_target`
    guard: Guard  # reward-hacking and instability detectors, and what to do about them


def build_online_parts(cfg: OnlineConfig, tokenizer: PreTrainedTokenizerBase) -> OnlineParts:
    scorer = ResponseScorer(
        build_reward(cfg.reward_section(), tokenizer=tokenizer),
        build_reward(cfg.gold_reward, tokenizer=tokenizer) if cfg.gold_reward else None,
        build_reward_normalizer(cfg.reward),
        cfg.missing_eos_penalty,
    )
    kl_controller = build_kl_controller(
        {"beta": cfg.kl_coef, "target": cfg.kl_target, "horizon": cfg.kl_horizon}
    )
    return OnlineParts(scorer, kl_controller, build_guard(cfg.guard))


# ----------------------------------------------------------------------------- sample


def sample_responses(
    policy: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[PromptExample],
    cfg: OnlineConfig,
    *,
    samples_per_prompt: int = 1,
    seed: int,
    device: torch.device,
) -> tuple[Rollout, Sequences]:
    """`samples_per_prompt` responses to each prompt (rows i·G .. i·G+G−1 answer prompt i),
    and the same rows re-packed right-padded for scoring, on `device`."""
    rollout = sample(
        policy,
        tokenizer,
        [p.prompt for p in prompts],
        cfg.sampling_config(),
        num_samples=samples_per_prompt,
        seed=seed,
        max_prompt_length=cfg.max_prompt_length,
    )
    sequences = right_padded_sequences(rollout, tokenizer.pad_token_id, tokenizer.eos_token_id)
    return rollout, sequences.to(device)


# ----------------------------------------------------------------------------- score


@dataclass
class ScoredResponses:
    """The reward's output, the scores the policy optimises, and what to log about them."""

    output: RewardOutput  # the raw reward and its parts
    scores: torch.Tensor  # [N]: penalised and normalised, on the training device
    metrics: dict[str, float]


class ResponseScorer:
    """Scores sampled responses: the reward (reward model, Python functions, shaping
    terms), minus `missing_eos_penalty` for a response that never ended, normalised when
    the config asks for it; the gold reward, when given, is computed and logged only.

    Logged: `objective/scores` (the raw reward), each of its parts as `rewards/<part>`,
    `gold/score`, both per user segment (with counts, for combining across processes),
    and the responses' length, ending and repetition rates."""

    def __init__(
        self,
        reward_fn: RewardFunction,
        gold_fn: RewardFunction | None = None,
        normalizer: RewardNormalizer | None = None,
        missing_eos_penalty: float | None = None,
    ):
        self.reward_fn = reward_fn
        self.gold_fn = gold_fn
        self.normalizer = normalizer
        self.missing_eos_penalty = missing_eos_penalty

    def __call__(
        self,
        prompts: Sequence[PromptExample],
        texts: list[str],
        sequences: Sequences,
        *,
        samples_per_prompt: int = 1,
        device: torch.device | None = None,
    ) -> ScoredResponses:
        questions = [p.prompt for p in prompts for _ in range(samples_per_prompt)]
        segments = [p.group for p in prompts for _ in range(samples_per_prompt)]
        output = self.reward_fn(questions, texts)
        scores = output.scores.clone()
        if self.missing_eos_penalty is not None:
            scores = scores - self.missing_eos_penalty * (~sequences.ended).float()
        metrics = {"objective/scores": float(output.scores.mean())}
        for name, values in output.parts.items():
            metrics[f"rewards/{name}"] = float(values.mean())
        metrics.update(
            segment_figures(output.scores, segments, prefix="objective/scores", with_counts=True)
        )
        if self.gold_fn is not None:
            gold = self.gold_fn(questions, texts).scores
            metrics["gold/score"] = float(gold.mean())
            metrics.update(segment_figures(gold, segments, prefix="gold/score", with_counts=True))
        if self.normalizer is not None:
            scores = self.normalizer(scores, update=True)
        metrics["completions/mean_length"] = float(sequences.response_lengths.float().mean())
        metrics["completions/mean_words"] = sum(len(t.split()) for t in texts) / len(texts)
        metrics["completions/ended"] = float(sequences.ended.float().mean())
        metrics["completions/repetition_rate"] = sum(
            repeated_ngram_fraction(t) for t in texts
        ) / len(texts)
        return ScoredResponses(output, scores.to(device or scores.device), metrics)


# ----------------------------------------------------------------------------- log-probs


class TokenStats(NamedTuple):
    """Per-token figures of a policy on sampled sequences, [N, T-1]: position t scores
    token t+1; the mask is 1 on response tokens."""

    logps: torch.Tensor
    mask: torch.Tensor
    entropy: torch.Tensor | None


@torch.no_grad()
def policy_token_stats(
    model: nn.Module, sequences: Sequences, temperature: float, *, with_entropy: bool = True
) -> TokenStats:
    """log π(y_t | y_<t) of every response token, the mask, and the entropy, without
    gradient (the sampling policy's figures, before an update)."""
    return TokenStats(
        *labelled_token_logprobs_and_entropy(
            model,
            sequences.input_ids,
            sequences.attention_mask,
            sequences.labels,
            temperature=temperature,
            with_entropy=with_entropy,
        )
    )


def reference_logps(reference: nn.Module, sequences: Sequences, temperature: float) -> torch.Tensor:
    """log π_ref(y_t | y_<t) of every response token, [N, T-1] (0 outside the response)."""
    return policy_token_stats(reference, sequences, temperature, with_entropy=False).logps
