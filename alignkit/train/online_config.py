"""``OnlineConfig``: the options PPO and GRPO share — prompts, rewards, β and its
controller, sampling, the guard, and what gets written while the run goes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from alignkit.options import ConfigValueError, option
from alignkit.rollout.decoding import SamplingConfig
from alignkit.train.train_config import TrainConfig


@dataclass
class OnlineConfig(TrainConfig):
    """Options shared by `alignkit ppo` and `alignkit grpo`."""

    dataset: str | None = option(
        None, "Prompts: a prompt-only file (or any file with a `prompt` column), or `demo`."
    )
    max_steps: int | None = option(
        None,
        "Rollout iterations (each: sample, score, update); none = num_epochs over the prompts.",
        min=1,
    )
    batch_size: int = option(8, "Prompts per rollout iteration (per process).", min=1)
    gradient_accumulation_steps: int = option(1, "Minibatches per optimizer step.", min=1)
    learning_rate: float = option(1e-6, "Peak learning rate.", gt=0)
    warmup_ratio: float = option(0.0, "Warm-up as a fraction of all optimizer steps.", min=0, max=1)
    lr_scheduler: Literal["cosine", "linear", "constant"] = option(
        "constant", "Learning-rate schedule after warm-up."
    )
    save_every: int = option(10, "Checkpoint every N iterations (0 = only at the end).", min=0)
    keep_last_checkpoints: int = option(
        3, "Checkpoints kept on disk (rollback needs a good one).", min=1
    )
    log_every: int = option(1, "Write metrics every N iterations.", min=1)
    eval_every: int = option(
        0, "Answer the held-out prompts greedily every N iterations (0 = only at the end).", min=0
    )

    # rewards
    reward_model: str | None = option(None, "A reward model folder written by `alignkit rm`.")
    reward: dict[str, Any] = option(
        {}, "Reward section: reward_functions, shaping, ensemble, demo_judge, normalize (see docs)."
    )
    gold_reward: dict[str, Any] = option(
        {}, "A held-out reward logged as gold/score (not optimised), e.g. {demo_judge: true}."
    )
    missing_eos_penalty: float | None = option(
        None, "Subtract this from the score of a response that never ended (no EOS)."
    )

    # KL to the reference
    kl_coef: float = option(0.05, "β: weight of the KL penalty to the reference.", min=0)
    kl_target: float | None = option(
        None, "Adaptive β (Ziegler et al. 2019) toward this KL per sequence; none = fixed β.", gt=0
    )
    kl_horizon: int = option(10000, "Horizon of the adaptive KL controller.", min=1)
    kl_estimator: Literal["k1", "k2", "k3"] = option(
        "k1", "Per-token estimator of objective/kl, the KL that an adaptive β tracks."
    )

    # sampling
    max_new_tokens: int = option(48, "Longest response sampled.", min=1)
    min_new_tokens: int = option(
        0, "Shortest response sampled: EOS is held back until then (0 = off).", min=0
    )
    temperature: float = option(1.0, "Sampling temperature.", gt=0)
    top_p: float = option(1.0, "Nucleus sampling.", gt=0, max=1)
    top_k: int = option(0, "Top-k sampling (0 = off).", min=0)
    sampling_dtype: Literal["float32", "bfloat16"] = option(
        "float32",
        "Precision of the rollouts' decoding steps. bfloat16 is faster on CPUs with AVX-512 "
        "BF16 and draws from a slightly different distribution than the float32 policy; "
        "the log-probabilities the update uses still come from the training forward.",
    )
    stop_strings: list[str] = option([], "Extra strings that end a response.")

    # the guard
    guard: dict[str, Any] = option(
        {}, "Guard section: policy (warn|stop|rollback), detectors, rollback factors (see docs)."
    )

    # inspection
    rollouts_every: int = option(10, "Write rollouts.jsonl every N iterations (0 = never).", min=0)
    rollouts_per_log: int = option(4, "Rollouts written each time.", min=1)

    def validate(self) -> None:
        super().validate()
        if not (self.reward_model or self.reward):
            raise ConfigValueError(
                "reward_model",
                "an online run needs a reward: --reward-model PATH or a reward section",
            )
        if self.min_new_tokens > self.max_new_tokens:
            raise ConfigValueError(
                "min_new_tokens", f"must not exceed max_new_tokens ({self.max_new_tokens})"
            )

    def sampling_config(self) -> SamplingConfig:
        """How responses are sampled during training (held-out answers are greedy)."""
        return SamplingConfig(
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=self.min_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            dtype=self.sampling_dtype,
            do_sample=True,
            stop_strings=tuple(self.stop_strings),
        )

    def reward_section(self) -> dict[str, Any]:
        section = dict(self.reward)
        if self.reward_model:
            section.setdefault("reward_model", self.reward_model)
        return section
