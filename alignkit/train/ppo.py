"""PPO for RLHF with its four models: policy, critic, frozen reference, frozen reward.

One iteration, as :meth:`PPOTrainer.iteration` reads (Ouyang et al. 2022; Ziegler et al.
2019; Huang et al. 2024, "The N+ implementation details of RLHF with PPO"):

1. the policy samples a response to each prompt;
2. the reward model (plus shaping) scores it: one number per response;
3. the policy's log-probs (π_old), the critic's values and the reference's log-probs give
   the per-token KL;
4. per-token rewards r_t = −β·KL_t with the score added at the last response token, and
   GAE(γ, λ) over the critic's values gives advantages (whitened) and returns;
5. K epochs over minibatches: the clipped policy loss, the clipped value loss, an optional
   entropy bonus and an optional PPO-ptx term (SFT loss on demonstration data);
6. metrics and a few rollouts; then the loop's β update, log, guard and checkpoint.

The policy and the critic train together, as one module with one optimizer, so the engine
checkpoints both and a resumed run continues exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from alignkit.data import PromptExample, SFTCollator, load_dataset_records, tokenize_records
from alignkit.errors import UserError
from alignkit.models.heads import ScalarHeadModel, load_scalar_model
from alignkit.models.reference import ReferencePolicy
from alignkit.models.scoring import labelled_token_logprobs_and_entropy
from alignkit.ops.advantages import gae, kl_penalized_rewards
from alignkit.ops.kl_estimators import kl_estimate
from alignkit.ops.losses import ppo_policy_loss, ppo_value_loss
from alignkit.ops.stats import masked_mean, masked_whiten
from alignkit.options import ConfigValueError, option
from alignkit.rollout.sequences import Sequences
from alignkit.train.checkpoint import default_load_model, default_save_model
from alignkit.train.common import dataset_path, policy_and_tokenizer
from alignkit.train.engine import Engine, mean_dicts
from alignkit.train.online_config import OnlineConfig
from alignkit.train.online_loop import OnlineLoop, OnlineResult
from alignkit.train.online_steps import (
    ScoredResponses,
    build_online_parts,
    reference_logps,
)
from alignkit.train.optim import build_optimizer
from alignkit.train.rollout_log import append_rollouts, token_rows
from alignkit.train.sampler import minibatch_indices

CRITIC_DIR = "critic"


@dataclass
class PPOConfig(OnlineConfig):
    """Options for `alignkit ppo`."""

    critic_model: str | None = option(
        None,
        "Critic initialisation: a model or reward-model folder; none = the reward model, "
        "else the policy's model with a fresh value head.",
    )
    critic_learning_rate: float | None = option(
        None, "Peak learning rate of the critic; none = learning_rate.", gt=0
    )
    critic_frozen_layers: int = option(
        0,
        "Keep the critic's embeddings and bottom N decoder layers fixed: its backward pass "
        "stops above them and its optimizer holds only the rest (0 = train it all).",
        min=0,
    )
    ppo_epochs: int = option(4, "K: optimisation epochs over each batch of experience.", min=1)
    num_minibatches: int = option(2, "Minibatches per epoch.", min=1)
    clip_eps: float = option(0.2, "ε of the clipped policy ratio.", gt=0, lt=1)
    value_clip: float | None = option(0.2, "Clip range of the value loss; none = unclipped.", gt=0)
    vf_coef: float = option(0.1, "Weight of the value loss.", min=0)
    entropy_coef: float = option(0.0, "Weight of the entropy bonus.", min=0)
    gamma: float = option(1.0, "Discount γ of GAE.", min=0, max=1)
    lam: float = option(0.95, "λ of GAE.", min=0, max=1)
    whiten_advantages: bool = option(True, "Whiten advantages over the batch's response tokens.")
    ptx_dataset: str | None = option(None, "PPO-ptx: SFT data whose loss is mixed in (or `demo`).")
    ptx_coef: float = option(0.0, "Weight of the PPO-ptx SFT loss.", min=0)
    kl_estimator: Literal["k1", "k2", "k3"] = option("k1", "Per-token KL estimator in the reward.")

    def validate(self) -> None:
        super().validate()
        if self.batch_size % self.num_minibatches:
            raise ConfigValueError("num_minibatches", f"must divide batch_size ({self.batch_size})")
        if self.num_minibatches % self.gradient_accumulation_steps:
            raise ConfigValueError("gradient_accumulation_steps", "must divide num_minibatches")
        if self.ptx_coef > 0 and not self.ptx_dataset:
            raise ConfigValueError("ptx_dataset", "ptx_coef > 0 needs SFT data")


class PolicyAndCritic(nn.Module):
    """The two trained models as one module, so DDP and the optimizer see both."""

    def __init__(self, policy: nn.Module, critic: ScalarHeadModel):
        super().__init__()
        self.policy = policy
        self.critic = critic

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        *,
        temperature: float = 1.0,
        with_values: bool = True,
        with_entropy: bool = False,
    ) -> dict[str, torch.Tensor | None]:
        logps, mask, entropy = labelled_token_logprobs_and_entropy(
            self.policy,
            input_ids,
            attention_mask,
            labels,
            temperature=temperature,
            with_entropy=with_entropy,
        )
        values = None
        if with_values:
            # V(s_t) for the state that predicts token t+1: the same shift as the logits.
            values = self.critic(input_ids, attention_mask)[:, :-1]
        return {"logps": logps, "mask": mask, "entropy": entropy, "values": values}


@dataclass
class PPOExperience:
    """One iteration's rollouts as the update needs them (all [B, T-1] but the sequences)."""

    sequences: Sequences
    old_logps: torch.Tensor  # log π_old of each response token
    old_values: torch.Tensor  # V(s_t) at rollout time
    advantages: torch.Tensor  # whitened GAE, 0 outside the response
    returns: torch.Tensor  # the value targets


def save_policy_and_critic(tokenizer: PreTrainedTokenizerBase):
    """Checkpoint hook: the policy (with its tokenizer) and the critic in `critic/`."""

    def save(module: PolicyAndCritic, directory: Path) -> None:
        default_save_model(module.policy, directory)
        tokenizer.save_pretrained(directory)
        module.critic.save_pretrained(directory / CRITIC_DIR)

    return save


def load_policy_and_critic(module: PolicyAndCritic, directory: Path) -> None:
    default_load_model(module.policy, directory)
    module.critic.load_weights(directory / CRITIC_DIR)


def freeze_bottom_layers(model: ScalarHeadModel, layers: int) -> None:
    """No gradient for the embeddings and the bottom `layers` decoder layers."""
    backbone = model.backbone
    if layers >= len(backbone.layers):
        raise UserError(
            f"critic_frozen_layers must be below the critic's {len(backbone.layers)} layers, "
            f"got {layers}"
        )
    backbone.embed_tokens.requires_grad_(False)
    for layer in backbone.layers[:layers]:
        layer.requires_grad_(False)


class PPOTrainer:
    """`PPOTrainer(PPOConfig(...)).train()`.

    The critic starts from `critic_model`, else the reward model (its backbone, a fresh
    value head), else the policy's model with a fresh value head."""

    def __init__(
        self,
        config: PPOConfig,
        model: nn.Module | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        critic: ScalarHeadModel | None = None,
    ):
        self.cfg = config
        self.policy, self.tokenizer = policy_and_tokenizer(config, model, tokenizer)
        if critic is None:
            source = config.critic_model or config.reward_model or config.model
            critic, _ = load_scalar_model(
                source, kind="value", dtype=config.dtype, seed=config.seed
            )
        critic.kind = "value"
        if config.critic_frozen_layers:
            freeze_bottom_layers(critic, config.critic_frozen_layers)
        self.critic = critic
        self.parts = build_online_parts(config, self.tokenizer)
        self.ptx_features = None
        if config.ptx_coef > 0:
            records = load_dataset_records(dataset_path(config.ptx_dataset, "sft"), "sft")
            self.ptx_features = tokenize_records(
                records, self.tokenizer, config.max_length, config.max_prompt_length
            )
            self.ptx_collator = SFTCollator(self.tokenizer.pad_token_id)

    def train(self) -> OnlineResult:
        cfg = self.cfg
        module = PolicyAndCritic(self.policy, self.critic)
        critic_rate = cfg.critic_learning_rate
        optimizer = build_optimizer(
            module, cfg, module_lrs=None if critic_rate is None else {module.critic: critic_rate}
        )
        self.engine = Engine(
            cfg,
            module,
            optimizer=optimizer,
            save_model=save_policy_and_critic(self.tokenizer),
            load_model=load_policy_and_critic,
        )
        policy = self.engine.unwrapped_model.policy
        self.reference = ReferencePolicy(policy)
        updates = cfg.ppo_epochs * cfg.num_minibatches // cfg.gradient_accumulation_steps
        self.loop = OnlineLoop(
            cfg, self.engine, policy, self.tokenizer, self.parts, updates, command="ppo"
        )
        return self.loop.run(self.iteration)

    def iteration(self, prompts: list[PromptExample], iteration: int) -> dict[str, float]:
        """Steps 1–6 of one PPO iteration; returns its metrics."""
        cfg, engine = self.cfg, self.engine
        model = engine.unwrapped_model
        beta = self.parts.kl_controller.value
        with torch.no_grad():
            # 1. Sample a response to each prompt from the current policy.
            rollout, seq = self.loop.sample(prompts)
            # 2. Score each response: reward model and shaping terms, one number each.
            scored = self.parts.scorer(prompts, rollout.texts, seq, device=engine.device)
            # 3. π_old's log-probs and the critic's values, π_ref's log-probs, the
            #    per-token KL (cfg.kl_estimator: k1 by default, the naive log-ratio).
            out = model(
                seq.input_ids,
                seq.attention_mask,
                seq.labels,
                temperature=cfg.temperature,
                with_entropy=True,
            )
            logps, mask, values = out["logps"], out["mask"], out["values"]
            ref_logps = reference_logps(self.reference, seq, cfg.temperature)
            kl = kl_estimate(logps, ref_logps, cfg.kl_estimator) * mask
            # 4. r_t = −β·KL_t, plus the score at the last token; GAE advantages, returns.
            rewards = kl_penalized_rewards(scored.scores, kl, mask, beta)
            advantages, returns = gae(rewards, values, mask, gamma=cfg.gamma, lam=cfg.lam)
            if cfg.whiten_advantages:
                advantages = masked_whiten(advantages, mask)
            advantages = advantages * mask
        # 5. K epochs of clipped policy and value updates over minibatches.
        experience = PPOExperience(seq, logps, values, advantages, returns)
        update_metrics = self.update(experience, iteration)
        # 6. What this iteration measured; a few rollouts token by token.
        metrics = scored.metrics | {
            "objective/kl": float(kl.sum(1).mean()),
            "objective/entropy": float(masked_mean(out["entropy"], mask)),
            "objective/non_score_reward": float((-beta * kl).sum(1).mean()),
            "objective/rlhf_reward": float((scored.scores - beta * kl.sum(1)).mean()),
            "val/mean": float(masked_mean(values, mask)),
            "val/returns": float(masked_mean(returns, mask)),
        }
        if cfg.rollouts_every and iteration % cfg.rollouts_every == 0 and engine.is_main:
            self.log_rollouts(
                iteration, prompts, rollout.texts, scored, experience, ref_logps, kl, out["entropy"]
            )
        return metrics | update_metrics

    def update(self, experience: PPOExperience, iteration: int) -> dict[str, float]:
        """K epochs over minibatches of the experience, one optimizer step per
        `gradient_accumulation_steps` minibatches; returns the mean metrics of the steps."""
        cfg, engine = self.cfg, self.engine
        records = []
        for rows in minibatch_indices(
            experience.old_logps.shape[0],
            cfg.num_minibatches,
            cfg.ppo_epochs,
            seed=cfg.seed,
            iteration=iteration,
            device=experience.old_logps.device,
        ):
            seq = experience.sequences.select(rows)
            with engine.accumulate():
                out = engine.model(
                    seq.input_ids,
                    seq.attention_mask,
                    seq.labels,
                    temperature=cfg.temperature,
                    with_entropy=cfg.entropy_coef > 0,
                )
                mask = out["mask"]
                pg_loss, pg = ppo_policy_loss(
                    out["logps"],
                    experience.old_logps[rows],
                    experience.advantages[rows],
                    mask,
                    cfg.clip_eps,
                )
                vf_loss, vf = ppo_value_loss(
                    out["values"],
                    experience.old_values[rows],
                    experience.returns[rows],
                    mask,
                    cfg.value_clip,
                )
                loss = pg_loss + cfg.vf_coef * vf_loss
                stats = {
                    "policy/loss": pg_loss.detach(),
                    "policy/clipfrac": pg["clipfrac"],
                    "policy/approxkl": pg["approxkl"],
                    "val/loss": vf_loss.detach(),
                    "val/clipfrac": vf["vf_clipfrac"],
                }
                if cfg.entropy_coef > 0:
                    entropy = masked_mean(out["entropy"], mask)
                    loss = loss - cfg.entropy_coef * entropy
                    stats["policy/entropy"] = entropy.detach()
                if self.ptx_features is not None:
                    ptx = self.ptx_loss(engine.state.step)
                    loss = loss + cfg.ptx_coef * ptx
                    stats["ptx/loss"] = ptx.detach()
                result = engine.backward_and_step(loss, stats)
            if result.stepped and not result.skipped:
                records.append(result.metrics)
        return mean_dicts(records)

    def ptx_loss(self, step: int) -> torch.Tensor:
        """SFT cross-entropy on the next PPO-ptx batch (cycled in order)."""
        size = self.cfg.batch_size // self.cfg.num_minibatches
        start = (step * size) % max(len(self.ptx_features) - size + 1, 1)
        batch = self.ptx_collator(self.ptx_features[start : start + size])
        batch = {k: v.to(self.engine.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        out = self.engine.model(
            batch["input_ids"], batch["attention_mask"], batch["labels"], with_values=False
        )
        return -masked_mean(out["logps"], out["mask"])

    def log_rollouts(
        self,
        iteration: int,
        prompts: list[PromptExample],
        texts: list[str],
        scored: ScoredResponses,
        experience: PPOExperience,
        ref_logps: torch.Tensor,
        kl: torch.Tensor,
        entropy: torch.Tensor,
    ) -> None:
        """The first `rollouts_per_log` samples, token by token: log-probs, KL, value,
        advantage and the policy's entropy at each response token."""
        seq, output = experience.sequences, scored.output
        mask = seq.labels[:, 1:] != -100
        records = [
            {
                "iteration": iteration,
                "prompt": prompts[i].prompt,
                "user_group": prompts[i].group,
                "response": texts[i],
                "score": float(output.scores[i]),
                "score_parts": {k: float(v[i]) for k, v in output.parts.items()},
                "tokens": token_rows(
                    self.tokenizer,
                    seq.labels[i],
                    mask[i],
                    logp=experience.old_logps[i],
                    ref_logp=ref_logps[i],
                    kl=kl[i],
                    value=experience.old_values[i],
                    advantage=experience.advantages[i],
                    entropy=entropy[i],
                ),
            }
            for i in range(min(self.cfg.rollouts_per_log, len(texts)))
        ]
        append_rollouts(self.cfg.output_dir, records)
