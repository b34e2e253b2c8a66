"""PPO for RLHF with its four models: policy, critic, frozen reference, frozen reward.

Per iteration (Ouyang et al. 2022; Ziegler et al. 2019; Huang et al. 2024, "The N+
implementation details of RLHF with PPO"):

1. the policy samples a response to each prompt;
2. the reward model (plus shaping) scores it: one number per response;
3. per-token rewards are r_t = −β·KL_t, with the score added at the last response token;
4. the critic's values V(s_t) and GAE(γ, λ) give advantages (whitened) and returns;
5. K epochs over minibatches: the clipped policy loss, the clipped value loss, an optional
   entropy bonus and an optional PPO-ptx term (SFT loss on demonstration data).

The policy and the critic train together, as one module with one optimizer, so the engine
checkpoints both and a resumed run continues exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from alignkit.data import PromptExample, SFTCollator, load_dataset_records, tokenize_records
from alignkit.models.heads import ScalarHeadModel, last_token_index, load_scalar_model
from alignkit.models.scoring import labelled_token_logprobs_and_entropy
from alignkit.ops.advantages import gae
from alignkit.ops.losses import ppo_policy_loss, ppo_value_loss
from alignkit.ops.stats import masked_mean, masked_whiten
from alignkit.options import ConfigValueError, option
from alignkit.train.checkpoint import default_load_model, default_save_model
from alignkit.train.common import dataset_path
from alignkit.train.online import OnlineConfig, OnlineTrainer, Sequences, minibatches

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
            self.policy, input_ids, attention_mask, labels,
            temperature=temperature, with_entropy=with_entropy,
        )  # fmt: skip
        values = None
        if with_values:
            # V(s_t) for the state that predicts token t+1: the same shift as the logits.
            values = self.critic(input_ids, attention_mask)[:, :-1]
        return {"logps": logps, "mask": mask, "entropy": entropy, "values": values}


@dataclass
class PPOExperience:
    sequences: Sequences
    old_logps: torch.Tensor  # [B, T-1]
    old_values: torch.Tensor  # [B, T-1]
    advantages: torch.Tensor  # [B, T-1]
    returns: torch.Tensor  # [B, T-1]


class PPOTrainer(OnlineTrainer):
    """`PPOTrainer(PPOConfig(...)).train()`."""

    command = "ppo"

    def __init__(
        self, config: PPOConfig, model: nn.Module | None = None, tokenizer=None, critic=None
    ):
        super().__init__(config, model, tokenizer)
        if critic is None:
            source = config.critic_model or config.reward_model or config.model
            critic, _ = load_scalar_model(
                source, kind="value", dtype=config.dtype, seed=config.seed
            )
        critic.kind = "value"
        self.critic = critic
        self.ptx_features = None
        if config.ptx_coef > 0:
            records = load_dataset_records(dataset_path(config.ptx_dataset, "sft"), "sft")
            self.ptx_features = tokenize_records(
                records, self.tokenizer, config.max_length, config.max_prompt_length
            )
            self.ptx_collator = SFTCollator(self.tokenizer.pad_token_id)

    def trainable_module(self) -> nn.Module:
        return PolicyAndCritic(self.policy, self.critic)

    def learning_rates(self, module: nn.Module) -> dict[nn.Module, float]:
        rate = self.cfg.critic_learning_rate
        return {} if rate is None else {module.critic: rate}

    def policy_module(self) -> nn.Module:
        return self.engine.unwrapped_model.policy

    def updates_per_iteration(self) -> int:
        cfg = self.cfg
        return cfg.ppo_epochs * cfg.num_minibatches // cfg.gradient_accumulation_steps

    def save_hooks(self) -> dict[str, Any]:
        tokenizer = self.tokenizer

        def save(module: PolicyAndCritic, directory: Path) -> None:
            default_save_model(module.policy, directory)
            tokenizer.save_pretrained(directory)
            module.critic.save_pretrained(directory / CRITIC_DIR)

        def load(module: PolicyAndCritic, directory: Path) -> None:
            default_load_model(module.policy, directory)
            module.critic.load_weights(directory / CRITIC_DIR)

        return {"save_model": save, "load_model": load}

    @torch.no_grad()
    def make_experience(self, prompts: list[PromptExample], iteration: int):
        cfg = self.cfg
        rollout, seq = self.sample(prompts, iteration)
        output, scores, metrics = self.score(prompts, rollout.texts, seq)
        out = self.engine.unwrapped_model(
            seq.input_ids, seq.attention_mask, seq.labels,
            temperature=cfg.temperature, with_entropy=True,
        )  # fmt: skip
        logps, mask, values = out["logps"], out["mask"], out["values"]
        ref_logps = self.reference_logps(seq)
        kl = self.kl_terms(logps, ref_logps, mask)
        beta = self.kl_controller.value
        rewards = -beta * kl
        last = last_token_index(mask)
        rewards[torch.arange(rewards.shape[0]), last] += scores
        advantages, returns = gae(rewards, values, mask, gamma=cfg.gamma, lam=cfg.lam)
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        metrics.update(
            {
                "objective/kl": float(kl.sum(1).mean()),
                "objective/entropy": float(masked_mean(out["entropy"], mask)),
                "objective/non_score_reward": float((-beta * kl).sum(1).mean()),
                "objective/rlhf_reward": float((scores - beta * kl.sum(1)).mean()),
                "val/mean": float(masked_mean(values, mask)),
                "val/returns": float(masked_mean(returns, mask)),
            }
        )
        if cfg.rollouts_every and iteration % cfg.rollouts_every == 0:
            self.log_rollouts(
                iteration,
                prompts,
                rollout.texts,
                seq,
                output,
                logps,
                ref_logps,
                kl,
                values,
                advantages,
            )
        experience = PPOExperience(seq, logps, values, advantages * mask, returns)
        return experience, metrics

    def update(self, experience: PPOExperience, iteration: int) -> list[dict[str, float]]:
        cfg, engine = self.cfg, self.engine
        records = []
        for rows in minibatches(
            experience.old_logps.shape[0], cfg.num_minibatches, cfg.ppo_epochs,
            seed=cfg.seed, iteration=iteration, device=experience.old_logps.device,
        ):  # fmt: skip
            seq = experience.sequences.select(rows)
            with engine.accumulate():
                out = engine.model(
                    seq.input_ids, seq.attention_mask, seq.labels,
                    temperature=cfg.temperature, with_entropy=cfg.entropy_coef > 0,
                )  # fmt: skip
                mask = out["mask"]
                pg_loss, pg = ppo_policy_loss(
                    out["logps"], experience.old_logps[rows], experience.advantages[rows],
                    mask, cfg.clip_eps,
                )  # fmt: skip
                vf_loss, vf = ppo_value_loss(
                    out["values"], experience.old_values[rows], experience.returns[rows],
                    mask, cfg.value_clip,
                )  # fmt: skip
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
        return records

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
        self, iteration, prompts, texts, seq, output, logps, ref_logps, kl, values, advantages
    ):
        records = []
        for i in range(min(self.cfg.rollouts_per_log, len(texts))):
            mask_row = seq.labels[i, 1:] != -100
            positions = mask_row.nonzero().squeeze(1).tolist()
            token_ids = seq.labels[i, 1:][positions].tolist()
            records.append(
                {
                    "iteration": iteration,
                    "prompt": prompts[i].prompt,
                    "user_group": prompts[i].group,
                    "response": texts[i],
                    "score": float(output.scores[i]),
                    "score_parts": {k: float(v[i]) for k, v in output.parts.items()},
                    "tokens": [
                        {
                            "token": text,
                            "logp": float(logps[i, p]),
                            "ref_logp": float(ref_logps[i, p]),
                            "kl": float(kl[i, p]),
                            "value": float(values[i, p]),
                            "advantage": float(advantages[i, p]),
                        }
                        for text, p in zip(self.token_texts(token_ids), positions, strict=True)
                    ],
                }
            )
        self.write_rollouts(records)
