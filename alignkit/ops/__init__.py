"""Pure tensor functions for the alignment math. Imports only torch."""

from .advantages import gae, group_normalized_advantages, rloo_advantages
from .kl_estimators import kl_estimate, kl_k1, kl_k2, kl_k3
from .logprobs import entropy_from_logits, sequence_logprobs, token_logprobs
from .losses import (
    bradley_terry_loss,
    dpo_loss,
    grpo_loss,
    ppo_policy_loss,
    ppo_value_loss,
    preference_accuracy,
    sft_loss,
    simpo_loss,
)
from .stats import masked_mean, masked_sum, masked_var, masked_whiten

__all__ = [
    "bradley_terry_loss",
    "dpo_loss",
    "entropy_from_logits",
    "gae",
    "group_normalized_advantages",
    "grpo_loss",
    "kl_estimate",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "ppo_policy_loss",
    "ppo_value_loss",
    "preference_accuracy",
    "rloo_advantages",
    "sequence_logprobs",
    "sft_loss",
    "simpo_loss",
    "token_logprobs",
]
