"""Policies compared on held-out prompts: what `alignkit eval` and the pipeline report.

Each policy answers every prompt greedily; a gold judge (a person's stand-in: watched,
never optimised) scores the answers. Against each baseline policy, the win rate paired by
prompt with its 95% interval (:mod:`alignkit.eval.win_rate`). Besides: the reward model's
score when one is given, KL to a reference measured on the policy's own samples
(:mod:`alignkit.eval.kl_to_reference`), length, diversity, evasion and repetition rates,
and every figure per user group with the gap between groups.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from alignkit.data import PromptExample
from alignkit.eval.kl_to_reference import sequence_kl
from alignkit.eval.text_stats import text_figures
from alignkit.eval.win_rate import IntervalMethod, win_rate
from alignkit.rewards.base import RewardFunction
from alignkit.rollout.sampling import SamplingConfig, sample
from alignkit.rollout.sequences import right_padded_sequences


@dataclass
class Policy:
    """A model to evaluate, with its tokenizer."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase


def greedy_answers(
    policy: Policy,
    prompts: Sequence[PromptExample],
    sampling: SamplingConfig,
    *,
    batch_size: int,
    max_prompt_length: int | None = None,
) -> list[str]:
    """Each prompt's greedy answer (`sampling`'s length limits, no sampling)."""
    greedy = dataclasses.replace(sampling, do_sample=False)
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = [p.prompt for p in prompts[start : start + batch_size]]
        texts += sample(
            policy.model, policy.tokenizer, chunk, greedy, max_prompt_length=max_prompt_length
        ).texts
    return texts


def kl_on_own_samples(
    policy: Policy,
    reference: nn.Module,
    prompts: Sequence[PromptExample],
    sampling: SamplingConfig,
    *,
    batch_size: int,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One response per prompt sampled from the policy (temperature 1), and each one's
    KL to the reference and token count ([N] each)."""
    config = dataclasses.replace(sampling, do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
    kls, lengths = [], []
    device = next(policy.model.parameters()).device
    tokenizer = policy.tokenizer
    for start in range(0, len(prompts), batch_size):
        chunk = [p.prompt for p in prompts[start : start + batch_size]]
        rollout = sample(policy.model, tokenizer, chunk, config, seed=seed + start)
        sequences = right_padded_sequences(
            rollout, tokenizer.pad_token_id, tokenizer.eos_token_id
        ).to(device)
        kl, n = sequence_kl(policy.model, reference, sequences)
        kls.append(kl.cpu())
        lengths.append(n.cpu())
    return torch.cat(kls), torch.cat(lengths)


def _scores(fn: RewardFunction, prompts: Sequence[PromptExample], texts: list[str]) -> list[float]:
    return fn([p.prompt for p in prompts], texts).scores.tolist()


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
    answers = {
        name: greedy_answers(policy, prompts, sampling, batch_size=batch_size)
        for name, policy in tqdm(policies.items(), desc="eval: greedy answers", unit="policy")
    }
    gold = {name: _scores(judge, prompts, texts) for name, texts in answers.items()}
    reward = (
        {name: _scores(reward_fn, prompts, texts) for name, texts in answers.items()}
        if reward_fn is not None
        else dict.fromkeys(answers)
    )
    groups = sorted({p.group for p in prompts if p.group is not None})
    rows_of = {g: [i for i, p in enumerate(prompts) if p.group == g] for g in groups}
    everyone = list(range(len(prompts)))
    methods: dict[str, Any] = {}
    for name, policy in tqdm(policies.items(), desc="eval: KL, figures", unit="policy"):
        kl = kl_tokens = None
        if reference is not None and policy.model is reference:
            # KL(π_ref ‖ π_ref) = 0 exactly: no sampling pass to measure it
            kl, kl_tokens = torch.zeros(len(prompts)), torch.ones(len(prompts))
        elif reference is not None:
            kl, kl_tokens = kl_on_own_samples(
                policy, reference, prompts, sampling, batch_size=batch_size, seed=seed
            )
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
