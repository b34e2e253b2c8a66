"""GRPO: G responses per prompt, advantages relative to the group, no critic.

For each prompt the policy samples G responses; each response's advantage is its score
minus the mean score of its group, divided by the group's std (Shao et al. 2024,
DeepSeekMath), or minus the mean of the *other* G−1 scores (RLOO, Ahmadian et al. 2024).
The loss is PPO's clipped surrogate per token plus β·k3 KL to the reference. One
iteration, as :meth:`GRPOTrainer.iteration` reads:

1. the policy samples G responses to each prompt (sharing one prefill);
2. each response is scored;
3. advantages relative to the group (optionally weighted toward lagging user segments);
4. the reference's log-probs, for the loss's KL penalty;
5. π_old's log-probs — from a separate pass, or from the update's own first forward
   when each batch makes one update;
6. μ passes over minibatches of the clipped surrogate + β·k3;
7. metrics and a few rollouts; then the loop's β update, log, guard and checkpoint.

The seeds also speak of *user* groups with different preferences — called segments here,
so as not to clash with GRPO's groups: prompts may carry a `group` column. The trainer
reports the score per segment and the gap between the best and the worst, and
`segment_weighting` > 0 scales advantages toward lagging segments
(:func:`~alignkit.ops.advantages.segment_weights`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from alignkit.data import PromptExample
from alignkit.models.reference import ReferencePolicy
from alignkit.models.scoring import labelled_token_logprobs_and_entropy
from alignkit.ops.advantages import (
    group_normalized_advantages,
    rloo_advantages,
    segment_weights,
)
from alignkit.ops.kl_estimators import kl_estimate
from alignkit.ops.losses import grpo_loss
from alignkit.ops.stats import masked_mean
from alignkit.options import ConfigValueError, option
from alignkit.rollout.sequences import Sequences
from alignkit.train.common import policy_and_tokenizer, save_policy_hook
from alignkit.train.engine import Engine, mean_dicts
from alignkit.train.online_config import OnlineConfig
from alignkit.train.online_loop import OnlineLoop, OnlineResult
from alignkit.train.online_steps import (
    ScoredResponses,
    TokenStats,
    build_online_parts,
    policy_token_stats,
    reference_logps,
)
from alignkit.train.rollout_log import append_rollouts, token_rows
from alignkit.train.sampler import minibatch_indices


@dataclass
class GRPOConfig(OnlineConfig):
    """Options for `alignkit grpo`."""

    num_generations: int = option(4, "G: responses sampled per prompt.", min=2)
    kl_coef: float = option(0.04, "β: weight of the k3 KL penalty in the loss.", min=0)
    kl_estimator: Literal["k1", "k2", "k3"] = option(
        "k1",
        "Per-token estimator of the logged objective/kl (and of the KL an adaptive β "
        "tracks); the loss's penalty is always k3, logged as policy/kl_in_loss.",
    )
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
    segment_weighting: float = option(
        0.0,
        "α ≥ 0: weight advantages toward user segments (the data's `group`) whose mean score lags.",
        min=0,
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


def segment_ids(segments: list[str | None]) -> torch.Tensor:
    """Each row's user segment as an integer id (in order of first appearance), −1 for none."""
    ids: dict[str, int] = {}
    return torch.tensor([-1 if s is None else ids.setdefault(s, len(ids)) for s in segments])


class GRPOTrainer:
    """`GRPOTrainer(GRPOConfig(...)).train()`."""

    def __init__(
        self,
        config: GRPOConfig,
        model: nn.Module | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ):
        self.cfg = config
        self.policy, self.tokenizer = policy_and_tokenizer(config, model, tokenizer)
        self.parts = build_online_parts(config, self.tokenizer)

    def one_update_per_batch(self) -> bool:
        """μ = 1 and one minibatch: the policy that sampled is the one being updated, so
        π_old's log-probs are the update's own, detached (ratio 1, gradient A·∇log π), and
        the separate no-grad pass over the samples can be skipped."""
        return self.cfg.num_iterations == 1 and self.cfg.num_minibatches == 1

    def train(self) -> OnlineResult:
        cfg = self.cfg
        self.engine = Engine(cfg, self.policy, save_model=save_policy_hook(self.tokenizer))
        policy = self.engine.unwrapped_model
        self.reference = ReferencePolicy(policy)
        updates = cfg.num_iterations * cfg.num_minibatches // cfg.gradient_accumulation_steps
        self.loop = OnlineLoop(
            cfg,
            self.engine,
            policy,
            self.tokenizer,
            self.parts,
            updates,
            samples_per_prompt=cfg.num_generations,
            command="grpo",
        )
        return self.loop.run(self.iteration)

    def iteration(self, prompts: list[PromptExample], iteration: int) -> dict[str, float]:
        """Steps 1–7 of one GRPO iteration; returns its metrics."""
        cfg, engine, G = self.cfg, self.engine, self.cfg.num_generations
        with torch.no_grad():
            # 1. Sample G responses to each prompt from the current policy.
            rollout, seq = self.loop.sample(prompts)
            # 2. Score each response.
            scored = self.parts.scorer(
                prompts, rollout.texts, seq, samples_per_prompt=G, device=engine.device
            )
            # 3. Advantages relative to the group of G, no critic: (r − mean)/std (GRPO)
            #    or r − mean of the other G − 1 (RLOO); × weights toward lagging segments.
            if cfg.advantage_estimator == "rloo":
                advantages = rloo_advantages(scored.scores, G)
            else:
                advantages = group_normalized_advantages(
                    scored.scores, G, scale_by_std=cfg.scale_rewards
                )
            segments = segment_ids([p.group for p in prompts for _ in range(G)])
            advantages = advantages * segment_weights(
                scored.scores, segments.to(scored.scores.device), cfg.segment_weighting
            )
            # 4. The reference's log-probs, for the loss's β·k3 penalty.
            ref_logps = reference_logps(self.reference, seq, cfg.temperature)
            # 5. π_old's log-probs: a pass of their own, unless one update per batch lets
            #    the update's first forward give them (see one_update_per_batch).
            sampled = None
            if not self.one_update_per_batch():
                sampled = policy_token_stats(engine.unwrapped_model, seq, cfg.temperature)
        # 6. μ passes of the clipped surrogate + β·k3 over minibatches.
        update_metrics, sampled = self.update(seq, advantages, ref_logps, sampled, iteration)
        # 7. What this iteration measured. objective/kl uses cfg.kl_estimator (k1 by
        #    default), the estimate an adaptive β tracks; the loss's own k3 is
        #    policy/kl_in_loss.
        kl = kl_estimate(sampled.logps, ref_logps, cfg.kl_estimator) * sampled.mask
        grouped = scored.output.scores.view(-1, G)
        metrics = scored.metrics | {
            "rewards/group_std": float(grouped.std(dim=1).mean()),
            "rewards/zero_std_fraction": float((grouped.std(dim=1) == 0).float().mean()),
            "objective/kl": float(kl.sum(1).mean()),
            "objective/entropy": float(masked_mean(sampled.entropy, sampled.mask)),
            "objective/rlhf_reward": float(
                scored.output.scores.mean() - self.parts.kl_controller.value * kl.sum(1).mean()
            ),
        }
        if cfg.rollouts_every and iteration % cfg.rollouts_every == 0 and engine.is_main:
            self.log_rollouts(
                iteration, prompts, rollout.texts, scored, seq, advantages, sampled, ref_logps, kl
            )
        return metrics | update_metrics

    def update(
        self,
        seq: Sequences,
        advantages: torch.Tensor,
        ref_logps: torch.Tensor,
        sampled: TokenStats | None,
        iteration: int,
    ) -> tuple[dict[str, float], TokenStats]:
        """μ passes over minibatches, one optimizer step per `gradient_accumulation_steps`
        minibatches. Returns the mean metrics of the steps and the sampling policy's token
        figures: `sampled` as given, or, when None, those of the first (only) forward."""
        cfg, engine = self.cfg, self.engine
        beta = self.parts.kl_controller.value
        from_this_forward = sampled is None
        records = []
        for rows in minibatch_indices(
            advantages.shape[0],
            cfg.num_minibatches,
            cfg.num_iterations,
            seed=cfg.seed,
            iteration=iteration,
            device=advantages.device,
        ):
            mb = seq.select(rows)
            with engine.accumulate():
                logps, mask, entropy = labelled_token_logprobs_and_entropy(
                    engine.model,
                    mb.input_ids,
                    mb.attention_mask,
                    mb.labels,
                    temperature=cfg.temperature,
                    with_entropy=from_this_forward,
                )
                if from_this_forward:  # rows are all samples, shuffled: keep sampling order
                    order = torch.argsort(rows)
                    sampled = TokenStats(
                        logps.detach()[order], mask[order], entropy.detach()[order]
                    )
                # π_old, the ratio's denominator: this forward's own log-probs, detached,
                # when the batch makes one update (ρ = 1); else the pass before the update.
                old_logps = logps.detach() if from_this_forward else sampled.logps[rows]
                loss, stats = grpo_loss(
                    logps,
                    old_logps,
                    ref_logps[rows] if beta > 0 else None,
                    advantages[rows],
                    mask,
                    clip_eps=cfg.clip_eps,
                    clip_eps_high=cfg.clip_eps_high,
                    beta=beta,
                    loss_normalization=cfg.loss_normalization,
                    max_completion_length=cfg.max_new_tokens,
                )
                stats = {"policy/clipfrac": stats["clipfrac"]} | (
                    {"policy/kl_in_loss": stats["kl"]} if "kl" in stats else {}
                )
                result = engine.backward_and_step(loss, stats)
            if result.stepped and not result.skipped:
                records.append(result.metrics)
        return mean_dicts(records), sampled

    def log_rollouts(
        self,
        iteration: int,
        prompts: list[PromptExample],
        texts: list[str],
        scored: ScoredResponses,
        seq: Sequences,
        advantages: torch.Tensor,
        sampled: TokenStats,
        ref_logps: torch.Tensor,
        kl: torch.Tensor,
    ) -> None:
        """The first `rollouts_per_log` samples with their group's scores and their
        advantage, token by token: log-probs, KL and the policy's entropy at each response
        token."""
        G, output = self.cfg.num_generations, scored.output
        records = []
        for i in range(min(self.cfg.rollouts_per_log, len(texts))):
            prompt, group_start = prompts[i // G], (i // G) * G
            records.append(
                {
                    "iteration": iteration,
                    "prompt": prompt.prompt,
                    "user_group": prompt.group,
                    "sample": i - group_start,
                    "response": texts[i],
                    "score": float(output.scores[i]),
                    "score_parts": {k: float(v[i]) for k, v in output.parts.items()},
                    "group_scores": output.scores[group_start : group_start + G].tolist(),
                    "advantage": float(advantages[i]),
                    "tokens": token_rows(
                        self.tokenizer,
                        seq.labels[i],
                        sampled.mask[i],
                        logp=sampled.logps[i],
                        ref_logp=ref_logps[i],
                        kl=kl[i],
                        **({} if sampled.entropy is None else {"entropy": sampled.entropy[i]}),
                    ),
                }
            )
        append_rollouts(self.cfg.output_dir, records)


__all__ = ["GRPOConfig", "GRPOTrainer", "segment_ids"]
