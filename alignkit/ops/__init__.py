"""Pure tensor functions for the alignment math. Imports only torch."""

from .advantages import (
    gae,
    group_normalized_advantages,
    kl_penalized_rewards,
    rloo_advantages,
    segment_weights,
)
from .kl_estimators import kl_estimate, kl_from_logits, kl_k1, kl_k2, kl_k3
from .logprobs import entropy_from_logits, sequence_logprobs, token_logprobs
from .losses import (
    bradley_terry_loss,
    dpo_loss,
    grpo_loss,
    ppo_policy_loss,
    ppo_value_loss,
    preference_accuracy,
    reward_centering_penalty,
    sft_loss,
    simpo_loss,
)
from .stats import last_token_index, masked_mean, masked_sum, masked_var, masked_whiten

__all__ = [
    "bradley_terry_loss",
    "dpo_loss",
    "entropy_from_logits",
    "gae",
    "group_normalized_advantages",
    "grpo_loss",
    "kl_estimate",
    "kl_from_logits",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_penalized_rewards",
    "last_token_index",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "ppo_policy_loss",
    "ppo_value_loss",
    "preference_accuracy",
    "reward_centering_penalty",
    "rloo_advantages",
    "segment_weights",
    "sequence_logprobs",
    "sft_loss",
    "simpo_loss",
    "token_logprobs",
]
