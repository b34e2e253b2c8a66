"""Masked reductions over response tokens.

Masks are bool or 0/1 tensors broadcastable to ``x``; they are used as booleans. Masked-out
entries are dropped with ``torch.where`` rather than multiplied by 0, so a NaN or ±inf in
padding (e.g. a log-probability of a pad token) cannot leak into the result.
"""

from __future__ import annotations

import torch

__all__ = ["last_token_index", "masked_mean", "masked_sum", "masked_var", "masked_whiten"]


def _keep(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    keep = mask.bool()
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device)), keep


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ_{i: m_i} x_i over all elements (``dim=None``) or along ``dim``."""
    kept, _ = _keep(x, mask)
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ_{i: m_i} x_i / Σ_i m_i, over all elements (``dim=None``) or along ``dim``.

    An empty mask gives 0 rather than NaN (the count is clamped to 1), as in TRL's GRPO
    normalisers: a batch whose responses are all padding contributes no loss and no gradient.
    """
    kept, keep = _keep(x, mask)
    keep = keep.expand_as(kept)
    if dim is None:
        return kept.sum() / keep.sum().clamp(min=1).to(kept.dtype)
    return kept.sum(dim) / keep.sum(dim).clamp(min=1).to(kept.dtype)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked elements (all dimensions): Σ m (x − x̄)² / (n − 1) or / n.

    With ``unbiased`` (Bessel's correction) and fewer than two elements, the biased value (0 for
    a single element) is returned instead of inf/NaN, so whitening degrades to centring.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.bool().expand_as(x).sum().to(var.dtype)
        var = torch.where(n > 1, var * n / (n - 1).clamp(min=1), var)
    return var


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """(x − μ) / sqrt(σ² + eps) with μ, σ² (unbiased) taken over the masked elements.

    The standard PPO advantage normalisation (OpenAI baselines; TRL's former ``masked_whiten``).
    With ``shift_mean=False`` the mean is added back (only the scale changes), which is how
    rewards are whitened without changing their sign. Positions outside the mask are set to 0.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position whose mask is 1 in each row of [B, T] (either padding side;
    0 for an empty row)."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    return (positions * mask.long()).argmax(dim=1)
