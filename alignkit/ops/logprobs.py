"""Per-token log-probabilities and entropies from logits, without a full log-softmax.

A full ``log_softmax`` over a [B, T, V] batch upcast to float32 costs B·T·V·4 bytes (for the
default model, V = 49,152: 192 KiB per token, ~1.5 GiB for 8×1024 tokens) and autograd would keep
it for the backward pass. Here the forward pass keeps only the label logit and a float32
logsumexp per row, computed in blocks of rows; the backward pass recomputes the softmax block by
block. Peak extra memory is one float32 block of ``chunk_size`` rows, forward and backward.

The two autograd Functions below are the only classes in the package: they pay for themselves
because plain autograd would save every float32 block for backward, i.e. the very full-vocabulary
float32 tensor this module exists to avoid.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

__all__ = ["entropy_from_logits", "sequence_logprobs", "token_logprobs"]

DEFAULT_CHUNK_SIZE = 256  # rows per block: 256 × 49,152 × 4 B = 48 MiB of float32 scratch


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # float64 stays float64 so that torch.autograd.gradcheck can be used; everything else
    # (bf16, fp16, fp32) is reduced in float32.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _row_blocks(batch: int, time: int, chunk_size: int) -> list[tuple[int | slice, slice]]:
    """Index tuples that cover a [B, T, ...] grid in blocks of at most ~chunk_size rows.

    Indexing with basic slices keeps every block a view, so a non-contiguous input such as
    ``logits[:, :-1]`` is never copied as a whole (``reshape(-1, V)`` would copy it).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if time >= chunk_size:
        return [
            (b, slice(t, t + chunk_size)) for b in range(batch) for t in range(0, time, chunk_size)
        ]
    per_block = max(1, chunk_size // max(time, 1))
    return [(slice(b, b + per_block), slice(None)) for b in range(0, batch, per_block)]


class _TokenLogprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, ignore_index, temperature, chunk_size):
        batch, time, _ = logits.shape
        cdtype = _compute_dtype(logits.dtype)
        valid = labels != ignore_index
        safe_labels = labels.masked_fill(~valid, 0)  # any in-range index; the result is zeroed
        blocks = _row_blocks(batch, time, chunk_size)

        lse = torch.empty(batch, time, dtype=cdtype, device=logits.device)
        for idx in blocks:
            x = logits[idx].to(cdtype, copy=True)
            if temperature != 1.0:
                x.div_(temperature)
            lse[idx] = torch.logsumexp(x, dim=-1)
        label_logits = logits.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1).to(cdtype)
        logps = (label_logits / temperature - lse).masked_fill(~valid, 0.0)

        ctx.save_for_backward(logits, safe_labels, valid, lse)
        ctx.blocks = blocks
        ctx.temperature = temperature
        return logps

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        logits, safe_labels, valid, lse = ctx.saved_tensors
        temperature = ctx.temperature
        cdtype = lse.dtype
        g = grad_out.to(cdtype).masked_fill(~valid, 0.0)
        grad = torch.empty_like(logits)
        for idx in ctx.blocks:
            # d logp_y / d z_j = (1[j = y] − softmax(z)_j) / τ, with z the raw logits.
            x = logits[idx].to(cdtype, copy=True)
            if temperature != 1.0:
                x.div_(temperature)
            x.sub_(lse[idx].unsqueeze(-1)).exp_().mul_(-g[idx].unsqueeze(-1))
            # The one-hot term is added in float32 before the single cast back to the logits'
            # dtype, so bf16 gradients are rounded once, like autograd of an upcast log_softmax.
            x.scatter_add_(-1, safe_labels[idx].unsqueeze(-1), g[idx].unsqueeze(-1))
            if temperature != 1.0:
                x.div_(temperature)
            grad[idx] = x
        return grad, None, None, None, None


class _Entropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, temperature, chunk_size):
        batch, time, _ = logits.shape
        cdtype = _compute_dtype(logits.dtype)
        blocks = _row_blocks(batch, time, chunk_size)
        lse = torch.empty(batch, time, dtype=cdtype, device=logits.device)
        ent = torch.empty(batch, time, dtype=cdtype, device=logits.device)
        for idx in blocks:
            x = logits[idx].to(cdtype, copy=True)
            if temperature != 1.0:
                x.div_(temperature)
            block_lse = torch.logsumexp(x, dim=-1)
            # H = logsumexp(x) − Σ_j p_j x_j, which avoids 0·log 0 for underflowed p_j.
            p = (x - block_lse.unsqueeze(-1)).exp_()
            lse[idx] = block_lse
            ent[idx] = block_lse - (p * x).sum(-1)
        ctx.save_for_backward(logits, lse, ent)
        ctx.blocks = blocks
        ctx.temperature = temperature
        return ent

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        logits, lse, ent = ctx.saved_tensors
        temperature = ctx.temperature
        cdtype = lse.dtype
        g = grad_out.to(cdtype)
        grad = torch.empty_like(logits)
        for idx in ctx.blocks:
            # dH/dx_j = −p_j (log p_j + H), with x = z / τ.
            logp = logits[idx].to(cdtype, copy=True)
            if temperature != 1.0:
                logp.div_(temperature)
            logp.sub_(lse[idx].unsqueeze(-1))
            p = logp.exp()
            logp.add_(ent[idx].unsqueeze(-1)).mul_(p).mul_(-g[idx].unsqueeze(-1) / temperature)
            grad[idx] = logp
        return grad, None, None


def _as_3d(logits: torch.Tensor, name: str) -> tuple[torch.Tensor, bool]:
    if logits.dim() == 3:
        return logits, False
    if logits.dim() == 2:
        return logits.unsqueeze(0), True
    raise ValueError(
        f"{name} expects logits of shape [B, T, V] or [N, V], got {tuple(logits.shape)}"
    )


def token_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Log-probability of each label under its logits: log softmax(z_t / τ)[y_t].

    Computed as ``z_y/τ − logsumexp(z/τ)`` with the logsumexp reduced in float32 over blocks of
    ``chunk_size`` rows, so no [B, T, V] float32 tensor is ever built; the backward pass
    recomputes ``softmax`` block by block (gradient: (onehot(y) − softmax(z/τ)) / τ). This is the
    same quantity as TRL's ``selective_log_softmax`` (trl/trainer/utils.py), but bf16/fp16
    logits are reduced in float32 rather than in their own precision.

    Args:
        logits: [B, T, V] (or [N, V]), any float dtype. ``logits[:, t]`` must already predict
            ``labels[:, t]``: the caller does the shift.
        labels: [B, T] (or [N]) token ids; positions equal to ``ignore_index`` give 0.
        ignore_index: label value that marks positions to ignore.
        temperature: τ the tokens were sampled with (PPO/GRPO must score rollouts at the
            sampling temperature). Applied per block, so it also costs no full copy.
        chunk_size: rows per block; memory/speed trade-off only, the result does not depend on it.

    Returns:
        [B, T] (or [N]) float32 log-probabilities (float64 for float64 logits). Differentiable
        once with respect to ``logits`` (no double backward).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits3, squeezed = _as_3d(logits, "token_logprobs")
    labels3 = labels.unsqueeze(0) if squeezed else labels
    if labels3.shape != logits3.shape[:-1]:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} does not match logits shape {tuple(logits.shape)}"
        )
    out = _TokenLogprob.apply(logits3, labels3, ignore_index, float(temperature), chunk_size)
    return out.squeeze(0) if squeezed else out


def sequence_logprobs(
    token_logps: torch.Tensor, mask: torch.Tensor, *, average: bool = False
) -> torch.Tensor:
    """Sequence log-probability: Σ_t m_t · log π(y_t) (``average=False``), or that sum / Σ_t m_t.

    The sum is log π(y | x) as used by DPO (Rafailov et al. 2023); the average is the
    length-normalised score used by SimPO (Meng et al. 2024, eq. 4) and by TRL's IPO.

    Args:
        token_logps: [B, T] per-token log-probabilities (e.g. from :func:`token_logprobs`).
        mask: [B, T] bool or 0/1; positions that belong to the response.
        average: divide by the number of unmasked tokens (at least 1, so empty rows give 0).

    Returns:
        [B] tensor.
    """
    keep = mask.bool()
    total = torch.where(keep, token_logps, torch.zeros_like(token_logps)).sum(-1)
    if not average:
        return total
    return total / keep.sum(-1).clamp(min=1).to(total.dtype)


def entropy_from_logits(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(z/τ) at every position: H = logsumexp(x) − Σ_j p_j x_j.

    Chunked like :func:`token_logprobs`: float32 per block, nothing of size [B, T, V] in float32
    is built or saved, and the backward pass (dH/dx_j = −p_j (log p_j + H)) recomputes the
    softmax per block, so it can serve as an entropy bonus as well as a metric. Mask the result
    yourself (e.g. ``masked_mean(entropy, mask)``).

    Args:
        logits: [B, T, V] (or [N, V]).
        temperature: τ applied to the logits before the softmax.
        chunk_size: rows per block.

    Returns:
        [B, T] (or [N]) float32 entropies (float64 for float64 logits).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits3, squeezed = _as_3d(logits, "entropy_from_logits")
    out = _Entropy.apply(logits3, float(temperature), chunk_size)
    return out.squeeze(0) if squeezed else out
