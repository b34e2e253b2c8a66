"""GRPO: G responses per prompt, advantages relative to the group, no critic.

For each prompt the policy samples G responses; each response's advantage is its score
minus the mean score of its group, divided by the group's std (Shao et al. 2024,
DeepSeekMath), or minus the mean of the *other* G−1 scores (RLOO, Ahmadian et al. 2024).
The loss is PPO's clipped surrogate per token plus β·k3 KL to the reference.

The seeds also speak of *user* groups with different preferences: prompts may carry a
`group` column. The trainer reports the score per user group and the gap between the best
and the worst, and `group_weighting` > 0 scales advantages toward lagging groups:
w_g = exp(−α·(r̄_g − r̄)/σ), normalised to mean 1 over the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from alignkit.data import PromptExample
from alignkit.models.scoring import labelled_token_logprobs_and_entropy
from alignkit.ops.advantages import group_normalized_advantages, rloo_advantages
from alignkit.ops.losses import grpo_loss
from alignkit.ops.stats import masked_mean
from alignkit.options import ConfigValueError, option
from alignkit.train.common import save_policy_hook
from alignkit.train.online import (
    OnlineConfig,
    OnlineTrainer,
    Sequences,
    group_figures,
    minibatches,
)


@dataclass
class GRPOConfig(OnlineConfig):
    """Options for `alignkit grpo`."""

    num_generations: int = option(4, "G: responses sampled per prompt.", min=2)
    kl_coef: float = option(0.04, "β: weight of the k3 KL penalty in the loss.", min=0)
    advantage_estimator: Literal["group_norm", "rloo"] = option(
        "group_norm", "group_norm: (r − mean)/std of the group; rloo: leave-one-out baseline."
    )
    scale_rewards: bool = option(True, "Divide by the group's std (off = Dr. GRPO).")
    loss_normalization: Literal["sequence", "token", "constant"] = option(
        "sequence", "Per-sequence mean (GRPO), batch token count (DAPO), or a constant (Dr. GRPO)."
    )
    clip_eps: float = option(0.2, "ε of the clipped ratio.", gt=0, lt=1)
    clip_eps_high: float | None = option(
        None, "Upper ε (DAPO's clip-higher); none = clip_eps.", gt=0
    )
    num_iterations: int = option(1, "μ: optimisation passes over each batch of samples.", min=1)
    num_minibatches: int = option(1, "Minibatches per pass.", min=1)
    group_weighting: float = option(
        0.0, "α ≥ 0: weight advantages toward user groups whose mean score lags.", min=0
    )

    def validate(self) -> None:
        super().validate()
        total = self.batch_size * self.num_generations
        if total % self.num_minibatches:
            raise ConfigValueError(
                "num_minibatches", f"must divide batch_size × num_generations ({total})"
            )
        if self.num_minibatches % self.gradient_accumulation_steps:
            raise ConfigValueError("gradient_accumulation_steps", "must divide num_minibatches")


def user_group_weights(
    scores: torch.Tensor, groups: list[str | None], strength: float
) -> torch.Tensor:
    """w_i = exp(−α·(r̄_{g(i)} − r̄)/σ) normalised to mean 1; 1 for rows without a group."""
    weights = torch.ones_like(scores)
    if strength == 0 or all(g is None for g in groups):
        return weights
    overall, spread = scores.mean(), scores.std().clamp(min=1e-6)
    for group in {g for g in groups if g is not None}:
        rows = torch.tensor([g == group for g in groups], device=scores.device)
        weights[rows] = torch.exp(-strength * (scores[rows].mean() - overall) / spread)
    return weights / weights.mean()


@dataclass
class GroupExperience:
    sequences: Sequences
    old_logps: torch.Tensor | None  # None: the update's own forward pass gives them
    ref_logps: torch.Tensor
    advantages: torch.Tensor  # [N]
    metrics: dict[str, Any]  # the iteration's metrics; the policy figures land here
    rollout_context: dict[str, Any]  # what log_rollouts needs besides the log-probs


class GRPOTrainer(OnlineTrainer):
    """`GRPOTrainer(GRPOConfig(...)).train()`."""

    command = "grpo"

    def __init__(self, config: GRPOConfig, model: nn.Module | None = None, tokenizer=None):
        super().__init__(config, model, tokenizer)
        self.samples_per_prompt = config.num_generations

    def trainable_module(self) -> nn.Module:
        return self.policy

    def save_hooks(self) -> dict[str, Any]:
        return {"save_model": save_policy_hook(self.tokenizer)}

    def updates_per_iteration(self) -> int:
        cfg = self.cfg
        return cfg.num_iterations * cfg.num_minibatches // cfg.gradient_accumulation_steps

    def folds_old_policy_pass(self) -> bool:
        """One update per batch of samples (μ = 1, one minibatch): the policy that sampled is
        the one being updated, so the old log-probs are the update's own, detached (ratio
        1, gradient A·∇log π), and the separate no-grad pass over the samples is skipped."""
        return self.cfg.num_iterations == 1 and self.cfg.num_minibatches == 1

    @torch.no_grad()
    def make_experience(self, prompts: list[PromptExample], iteration: int):
        cfg = self.cfg
        rollout, seq = self.sample(prompts, iteration)
        output, scores, metrics = self.score(prompts, rollout.texts, seq)
        ref_logps = self.reference_logps(seq)
        if cfg.advantage_estimator == "rloo":
            advantages = rloo_advantages(scores, cfg.num_generations)
        else:
            advantages = group_normalized_advantages(
                scores, cfg.num_generations, scale_by_std=cfg.scale_rewards
            )
        user_groups = [p.group for p in prompts for _ in range(cfg.num_generations)]
        advantages = advantages * user_group_weights(scores, user_groups, cfg.group_weighting)
        grouped = output.scores.view(-1, cfg.num_generations)
        metrics.update(
            {
                "rewards/group_std": float(grouped.std(dim=1).mean()),
                "rewards/zero_std_fraction": float((grouped.std(dim=1) == 0).float().mean()),
            }
        )
        context = {"iteration": iteration, "prompts": prompts, "texts": rollout.texts}
        context["output"] = output
        experience = GroupExperience(seq, None, ref_logps, advantages, metrics, context)
        if not self.folds_old_policy_pass():
            old_logps, mask, entropy = labelled_token_logprobs_and_entropy(
                self.engine.unwrapped_model, seq.input_ids, seq.attention_mask, seq.labels,
                temperature=cfg.temperature, with_entropy=True,
            )  # fmt: skip
            experience.old_logps = old_logps
            self.report_policy(experience, old_logps, entropy, mask)
        return experience, metrics

    def report_policy(
        self,
        experience: GroupExperience,
        logps: torch.Tensor,
        entropy: torch.Tensor,
        mask: torch.Tensor,
    ) -> None:
        """KL to the reference, entropy and KL-penalised reward of the sampling policy into
        the iteration's metrics, and the rollouts log when due."""
        cfg = self.cfg
        kl = self.kl_terms(logps, experience.ref_logps, mask)
        scores = experience.rollout_context["output"].scores
        experience.metrics.update(
            {
                "objective/kl": float(kl.sum(1).mean()),
                "objective/entropy": float(masked_mean(entropy, mask)),
                "objective/rlhf_reward": float(
                    scores.mean() - self.kl_controller.value * kl.sum(1).mean()
                ),
            }
        )
        context = experience.rollout_context
        if cfg.rollouts_every and context["iteration"] % cfg.rollouts_every == 0:
            self.log_rollouts(
                context["iteration"],
                context["prompts"],
                context["texts"],
                experience.sequences,
                context["output"],
                experience.advantages,
                logps,
                experience.ref_logps,
                kl,
                mask,
            )

    def update(self, experience: GroupExperience, iteration: int) -> list[dict[str, float]]:
        cfg, engine = self.cfg, self.engine
        fold = experience.old_logps is None
        records = []
        for rows in minibatches(
            experience.advantages.shape[0], cfg.num_minibatches, cfg.num_iterations,
            seed=cfg.seed, iteration=iteration, device=experience.advantages.device,
        ):  # fmt: skip
            seq = experience.sequences.select(rows)
            with engine.accumulate():
                logps, mask, entropy = labelled_token_logprobs_and_entropy(
                    engine.model, seq.input_ids, seq.attention_mask, seq.labels,
                    temperature=cfg.temperature, with_entropy=fold,
                )  # fmt: skip
                if fold:  # rows are all samples, shuffled: report them in sampling order
                    order = torch.argsort(rows)
                    self.report_policy(
                        experience,
                        logps.detach()[order],
                        entropy.detach()[order],
                        mask[order],
                    )
                old_logps = logps.detach() if fold else experience.old_logps[rows]
                loss, stats = grpo_loss(
                    logps,
                    old_logps,
                    experience.ref_logps[rows] if self.kl_controller.value > 0 else None,
                    experience.advantages[rows],
                    mask,
                    clip_eps=cfg.clip_eps,
                    clip_eps_high=cfg.clip_eps_high,
                    beta=self.kl_controller.value,
                    loss_normalization=cfg.loss_normalization,
                    max_completion_length=cfg.max_new_tokens,
                )
                stats = {"policy/clipfrac": stats["clipfrac"]} | (
                    {"policy/kl_in_loss": stats["kl"]} if "kl" in stats else {}
                )
                result = engine.backward_and_step(loss, stats)
            if result.stepped and not result.skipped:
                records.append(result.metrics)
        return records

    def log_rollouts(
        self, iteration, prompts, texts, seq, output, advantages, logps, ref_logps, kl, mask
    ):
        cfg = self.cfg
        records = []
        for i in range(min(cfg.rollouts_per_log, len(texts))):
            prompt = prompts[i // cfg.num_generations]
            group_start = (i // cfg.num_generations) * cfg.num_generations
            positions = mask[i].nonzero().squeeze(1).tolist()
            token_ids = seq.labels[i, 1:][positions].tolist()
            records.append(
                {
                    "iteration": iteration,
                    "prompt": prompt.prompt,
                    "user_group": prompt.group,
                    "sample": i - group_start,
                    "response": texts[i],
                    "score": float(output.scores[i]),
                    "score_parts": {k: float(v[i]) for k, v in output.parts.items()},
                    "group_scores": output.scores[
                        group_start : group_start + cfg.num_generations
                    ].tolist(),
                    "advantage": float(advantages[i]),
                    "tokens": [
                        {
                            "token": text,
                            "logp": float(logps[i, p]),
                            "ref_logp": float(ref_logps[i, p]),
                            "kl": float(kl[i, p]),
                        }
                        for text, p in zip(self.token_texts(token_ids), positions, strict=True)
                    ],
                }
            )
        self.write_rollouts(records)


__all__ = ["GRPOConfig", "GRPOTrainer", "group_figures", "user_group_weights"]
