"""Per-token KL(π ‖ π_ref) estimators from the log-probabilities of the sampled tokens.

J. Schulman, "Approximating KL Divergence" (2020), http://joschu.net/blog/kl-approx.html.
With tokens sampled from π and r = π_ref(y)/π(y), i.e. log r = ref_logp − logp:

    k1 = −log r            unbiased, high variance, can be negative per token
    k2 = ½ (log r)²        biased, low variance, ≥ 0
    k3 = (r − 1) − log r   unbiased, low variance, ≥ 0  (used by GRPO, Shao et al. 2024, eq. 4)

No clamping is applied (TRL 1.16 does not clamp either); k3 grows like exp(ref_logp − logp)
where the policy has moved far below the reference.

When both models' logits are at hand (evaluation), :func:`kl_from_logits` gives the exact
KL of the next-token distributions at each position instead of a one-sample estimate.
"""

from __future__ import annotations

from typing import Literal

import torch

from .logprobs import DEFAULT_CHUNK_SIZE, _as_3d, _compute_dtype, _row_blocks

__all__ = ["kl_estimate", "kl_from_logits", "kl_k1", "kl_k2", "kl_k3"]

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


@torch.no_grad()
def kl_from_logits(
    logits: torch.Tensor,
    ref_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """KL(π(·|y_<t) ‖ π_ref(·|y_<t)) = Σ_v π(v) (log π(v) − log π_ref(v)) at every position,
    from both models' logits (softmax(z/τ) each).

    Summed over a sampled response's positions it is an unbiased estimate of the sequence
    KL(π(·|x) ‖ π_ref(·|x)) (the chain rule: KL of the sequence = E_y Σ_t KL_t(y_<t)), with
    less variance than summing k1 over the sampled tokens. A measurement: no gradient.
    Computed in float32 blocks of ``chunk_size`` rows, so no [B, T, V] float32 tensor is built.

    Args:
        logits, ref_logits: [B, T, V] (or [N, V]), the same shape.

    Returns:
        [B, T] (or [N]) float32 KL per position (float64 for float64 logits); mask it.
    """
    if logits.shape != ref_logits.shape:
        raise ValueError(f"shapes differ: {tuple(logits.shape)} vs {tuple(ref_logits.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    p3, squeezed = _as_3d(logits, "kl_from_logits")
    q3, _ = _as_3d(ref_logits, "kl_from_logits")
    cdtype = _compute_dtype(logits.dtype)
    out = torch.empty(p3.shape[:2], dtype=cdtype, device=logits.device)
    for idx in _row_blocks(p3.shape[0], p3.shape[1], chunk_size):
        log_p = torch.log_softmax(p3[idx].to(cdtype) / temperature, dim=-1)
        log_q = torch.log_softmax(q3[idx].to(cdtype) / temperature, dim=-1)
        out[idx] = (log_p.exp() * (log_p - log_q)).sum(-1)
    return out.squeeze(0) if squeezed else out
