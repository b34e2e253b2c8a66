"""Policies compared on held-out prompts: what `alignkit eval` and the pipeline report.

Each policy answers every prompt greedily; a gold judge (a person's stand-in: watched,
never optimised) scores the answers. Against each baseline policy, the win rate paired by
prompt with its 95% interval (:mod:`alignkit.eval.win_rate`). Besides: the reward model's
score when one is given, KL to a reference measured on the policy's own samples
(:func:`answer_and_measure`), length, diversity, evasion and repetition rates,
and every figure per user group with the gap between groups.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from alignkit.data import PromptExample
from alignkit.data.records import Text
from alignkit.eval.text_stats import text_figures
from alignkit.eval.win_rate import IntervalMethod, win_rate
from alignkit.ops.kl_estimators import kl_from_logits
from alignkit.rewards.base import RewardFunction
from alignkit.rollout.decoding import last_positions
from alignkit.rollout.llama_step import frozen_weights
from alignkit.rollout.sampling import (
    Prefilled,
    Rollout,
    SamplingConfig,
    prefill,
    sample_prefilled,
)


@dataclass
class Policy:
    """A model to evaluate, with its tokenizer."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase


@dataclass
class PolicyAnswers:
    """A policy's greedy answers to the prompts, and, when measured, each prompt's KL to
    the reference on a sample of its own and that sample's token count ([N] each)."""

    texts: list[str]
    kl: torch.Tensor | None = None
    kl_tokens: torch.Tensor | None = None


class ReferencePrefills:
    """The reference's KV cache of each batch of prompts, computed once and shared by
    every policy's KL measurement (the same prompts, batched the same way)."""

    def __init__(self, reference: nn.Module, tokenizer: PreTrainedTokenizerBase):
        self.reference, self.tokenizer = reference, tokenizer
        self._by_start: dict[int, Prefilled] = {}

    def get(self, start: int, prompts: Sequence[Text]) -> Prefilled:
        if start not in self._by_start:
            self._by_start[start] = prefill(self.reference, self.tokenizer, prompts)
        return self._by_start[start]


@torch.no_grad()
def reference_logits(reference: nn.Module, prefilled: Prefilled, rollout: Rollout) -> torch.Tensor:
    """The reference's next-token logits at each real response position, [N, V] in row
    order (N = the responses' token count), continuing its prefill of the prompts (rows
    are prompts × samples): one forward over the responses, and the vocabulary projection
    only where a response token stands (not on the padding after an answer ended)."""
    repeats = rollout.response_ids.shape[0] // prefilled.prompt_ids.shape[0]
    first = prefilled.last_logits.repeat_interleave(repeats, dim=0).float()  # [B, V]
    device = first.device
    real = rollout.response_mask.bool().to(device)  # [B, R]
    where = real.nonzero()  # (row, position) in row order
    out = first.new_empty(where.shape[0], first.shape[-1])
    opening = where[:, 1] == 0
    out[opening] = first[where[opening, 0]]
    responses = rollout.response_ids[:, :-1].to(device)
    if responses.shape[1] == 0 or bool(opening.all()):
        return out
    cache = copy.deepcopy(prefilled.cache)
    if repeats > 1:
        cache.batch_repeat_interleave(repeats)
    prompt_mask = rollout.prompt_mask.to(device)
    mask = torch.cat([prompt_mask, torch.ones_like(responses)], dim=1)
    positions = last_positions(prompt_mask) + 1 + torch.arange(responses.shape[1], device=device)
    inputs = {"input_ids": responses, "attention_mask": mask, "position_ids": positions}
    decoder, head = reference.get_decoder(), reference.get_output_embeddings()
    later = real[:, 1:]
    if decoder is not None and head is not None:
        hidden = decoder(**inputs, cache=cache, use_cache=True).last_hidden_state
        out[~opening] = head(hidden[later]).float()
    else:
        out[~opening] = reference(**inputs, cache=cache, use_cache=True).logits[later].float()
    return out


def answer_and_measure(
    policy: Policy,
    prompts: Sequence[PromptExample],
    sampling: SamplingConfig,
    *,
    batch_size: int,
    reference: ReferencePrefills | None = None,
    seed: int = 0,
    max_prompt_length: int | None = None,
) -> PolicyAnswers:
    """Each prompt's greedy answer and, with a `reference`, the KL of the policy to it.

    The prompts are prefilled once a batch and decoded twice from that cache: greedily (the
    answers the judge scores) and once sampled at temperature 1 (the KL's sample, which
    must come from the policy itself). The sampler keeps the policy's next-token logits
    along its sample, so the policy needs no second forward; the reference continues its
    own prefill of the same prompts over the sampled tokens, and at each position the
    exact next-token KL Σ_v π(v)(log π(v) − log π_ref(v)) is summed over the response
    (:func:`~alignkit.ops.kl_estimators.kl_from_logits`): with the response drawn from π
    an unbiased estimate of KL(π(·|x) ‖ π_ref(·|x)) by the chain rule.
    """
    with frozen_weights(policy.model):
        return _answer_and_measure(
            policy, prompts, sampling, batch_size, reference, seed, max_prompt_length
        )


def _answer_and_measure(
    policy: Policy,
    prompts: Sequence[PromptExample],
    sampling: SamplingConfig,
    batch_size: int,
    reference: ReferencePrefills | None,
    seed: int,
    max_prompt_length: int | None,
) -> PolicyAnswers:
    greedy = dataclasses.replace(sampling, do_sample=False)
    own = dataclasses.replace(sampling, do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
    texts: list[str] = []
    kls, lengths = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = [p.prompt for p in prompts[start : start + batch_size]]
        filled = prefill(policy.model, policy.tokenizer, chunk, max_prompt_length=max_prompt_length)
        texts += sample_prefilled(policy.model, policy.tokenizer, filled, greedy).texts
        if reference is None:
            continue
        if max_prompt_length is not None:
            raise ValueError("KL to a reference is measured on whole prompts")
        rollout = sample_prefilled(
            policy.model, policy.tokenizer, filled, own, seed=seed + start, keep_logits=True
        )
        ref_logits = reference_logits(reference.reference, reference.get(start, chunk), rollout)
        real = rollout.response_mask.bool()
        per_position = kl_from_logits(rollout.logits[real].to(ref_logits.device), ref_logits)
        rows = real.nonzero()[:, 0].to(per_position.device)
        kl = per_position.new_zeros(real.shape[0]).index_add_(0, rows, per_position)
        kls.append(kl.cpu())
        lengths.append(real.sum(1))
    if reference is None:
        return PolicyAnswers(texts)
    return PolicyAnswers(texts, torch.cat(kls), torch.cat(lengths))


def greedy_answers(
    policy: Policy,
    prompts: Sequence[PromptExample],
    sampling: SamplingConfig,
    *,
    batch_size: int,
    max_prompt_length: int | None = None,
) -> list[str]:
    """Each prompt's greedy answer (`sampling`'s length limits, no sampling)."""
    return answer_and_measure(
        policy, prompts, sampling, batch_size=batch_size, max_prompt_length=max_prompt_length
    ).texts


def _scores(fn: RewardFunction, prompts: Sequence[PromptExample], texts: list[str]) -> list[float]:
    return fn([p.prompt for p in prompts], texts).scores.tolist()


def _scores_together(
    fn: RewardFunction, prompts: Sequence[PromptExample], answers: dict[str, list[str]]
) -> dict[str, list[float]]:
    """Every policy's answers scored in one call, so a reward model reads each prompt once
    for all the policies' answers to it."""
    names = list(answers)
    flat = fn(
        [p.prompt for p in prompts for _ in names],
        [answers[name][i] for i in range(len(prompts)) for name in names],
    ).scores.tolist()
    return {name: flat[k :: len(names)] for k, name in enumerate(names)}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _figures(
    rows: list[int],
    texts: list[str],
    gold: list[float],
    reward: list[float] | None,
    kl: torch.Tensor | None,
    kl_tokens: torch.Tensor | None,
) -> dict[str, Any]:
    """Gold, reward, KL and the text figures over the given prompt rows."""
    figures: dict[str, Any] = {"gold": _mean([gold[i] for i in rows])}
    if reward is not None:
        figures["reward"] = _mean([reward[i] for i in rows])
    if kl is not None and kl_tokens is not None:
        index = torch.tensor(rows)
        figures["kl"] = float(kl[index].mean())
        figures["kl_per_token"] = float(kl[index].sum() / kl_tokens[index].sum().clamp(min=1))
    figures.update(text_figures([texts[i] for i in rows]))
    return figures


def _win_figures(
    rows: list[int], gold: list[float], baseline_gold: list[float], method: str, seed: int
) -> dict[str, Any]:
    result = win_rate(
        [gold[i] for i in rows], [baseline_gold[i] for i in rows], method=method, seed=seed
    )
    return {
        "win_rate": result.rate,
        "win_rate_low": result.low,
        "win_rate_high": result.high,
        "wins": result.wins,
        "ties": result.ties,
        "losses": result.losses,
    }


def compare_policies(
    policies: Mapping[str, Policy],
    prompts: Sequence[PromptExample],
    *,
    judge: RewardFunction,
    baselines: Sequence[str],
    reward_fn: RewardFunction | None = None,
    reference: nn.Module | None = None,
    sampling: SamplingConfig | None = None,
    batch_size: int = 8,
    interval: IntervalMethod = "bootstrap",
    seed: int = 0,
) -> dict[str, Any]:
    """Every policy's figures on `prompts`, and its win rate against each baseline.

    Returns ``{"prompts": n, "interval": ..., "baselines": [...], "methods": {name: {
    "gold", "win_rate", "win_rate_low", "win_rate_high" (against the first baseline),
    "versus": {baseline: {...}}, "reward", "kl", "kl_per_token", "mean_length",
    "distinct_1", "distinct_2", "evasion_rate", "repetition_rate", "per_group": {group:
    {...}}, "group_gap": {figure: best − worst group}}}, "answers": [{"prompt", "group",
    name: answer, ...}]}``. KL is measured against `reference` when one is given.
    """
    if not prompts:
        raise ValueError("no prompts to evaluate on")
    unknown = [b for b in baselines if b not in policies]
    if unknown or not baselines:
        raise ValueError(f"baselines {unknown or '(none)'} are not among {list(policies)}")
    sampling = sampling or SamplingConfig(max_new_tokens=64)
    if reference is not None:
        tokenizer = next(iter(policies.values())).tokenizer
        prefills = ReferencePrefills(reference, tokenizer)
    measured: dict[str, PolicyAnswers] = {}
    for name, policy in tqdm(policies.items(), desc="eval: answers and KL", unit="policy"):
        # KL(π_ref ‖ π_ref) = 0 exactly: no sampling pass to measure it
        to_reference = reference is not None and policy.model is not reference
        measured[name] = answer_and_measure(
            policy,
            prompts,
            sampling,
            batch_size=batch_size,
            reference=prefills if to_reference else None,
            seed=seed,
        )
        if reference is not None and not to_reference:
            measured[name].kl = torch.zeros(len(prompts))
            measured[name].kl_tokens = torch.ones(len(prompts))
    answers = {name: m.texts for name, m in measured.items()}
    gold = {name: _scores(judge, prompts, texts) for name, texts in answers.items()}
    reward = (
        _scores_together(reward_fn, prompts, answers)
        if reward_fn is not None
        else dict.fromkeys(answers)
    )
    groups = sorted({p.group for p in prompts if p.group is not None})
    rows_of = {g: [i for i, p in enumerate(prompts) if p.group == g] for g in groups}
    everyone = list(range(len(prompts)))
    methods: dict[str, Any] = {}
    for name in policies:
        kl, kl_tokens = measured[name].kl, measured[name].kl_tokens
        figures = _figures(everyone, answers[name], gold[name], reward[name], kl, kl_tokens)
        versus = {b: _win_figures(everyone, gold[name], gold[b], interval, seed) for b in baselines}
        figures.update(versus[baselines[0]])
        figures["versus"] = versus
        per_group = {}
        for g, rows in rows_of.items():
            per_group[g] = _figures(rows, answers[name], gold[name], reward[name], kl, kl_tokens)
            per_group[g].update(_win_figures(rows, gold[name], gold[baselines[0]], interval, seed))
        figures["per_group"] = per_group
        if len(per_group) > 1:
            figures["group_gap"] = {
                key: max(f[key] for f in per_group.values())
                - min(f[key] for f in per_group.values())
                for key in ("gold", "win_rate", "mean_length")
            }
        methods[name] = figures
    return {
        "prompts": len(prompts),
        "interval": interval,
        "baselines": list(baselines),
        "methods": methods,
        "answers": [
            {"prompt": p.prompt, "group": p.group} | {name: answers[name][i] for name in answers}
            for i, p in enumerate(prompts)
        ],
    }
