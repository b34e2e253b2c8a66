"""Per-token KL(π ‖ π_ref) estimators from the log-probabilities of the sampled tokens.

J. Schulman, "Approximating KL Divergence" (2020), http://joschu.net/blog/kl-approx.html.
With tokens sampled from π and r = π_ref(y)/π(y), i.e. log r = ref_logp − logp:

    k1 = −log r            unbiased, high variance, can be negative per token
    k2 = ½ (log r)²        biased, low variance, ≥ 0
    k3 = (r − 1) − log r   unbiased, low variance, ≥ 0  (used by GRPO, Shao et al. 2024, eq. 4)

No clamping is applied (TRL 1.16 does not clamp either); k3 grows like exp(ref_logp − logp)
where the policy has moved far below the reference.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["kl_estimate", "kl_k1", "kl_k2", "kl_k3"]

KLKind = Literal["k1", "k2", "k3"]


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = logp − ref_logp (Schulman 2020). The naive per-token KL penalty of PPO-RLHF."""
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = ½ (logp − ref_logp)² (Schulman 2020)."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = exp(ref_logp − logp) − (ref_logp − logp) − 1 (Schulman 2020; DeepSeekMath eq. 4)."""
    log_ratio = ref_logp - logp
    # expm1(x) − x instead of exp(x) − x − 1 keeps precision when the two policies are close.
    return torch.expm1(log_ratio) - log_ratio


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: KLKind = "k3") -> torch.Tensor:
    """Dispatch to :func:`kl_k1`, :func:`kl_k2` or :func:`kl_k3` by name. Element-wise, unmasked."""
    if kind == "k1":
        return kl_k1(logp, ref_logp)
    if kind == "k2":
        return kl_k2(logp, ref_logp)
    if kind == "k3":
        return kl_k3(logp, ref_logp)
    raise ValueError(f"unknown KL estimator {kind!r}; expected 'k1', 'k2' or 'k3'")
