"""Per-token rewards and advantage estimators: the KL-penalised reward and GAE for PPO,
group baselines for GRPO and RLOO, and the weights that favour lagging user segments.

All of them produce regression/policy-gradient targets, so they run under ``torch.no_grad()``:
a gradient through an advantage is always a bug.
"""

from __future__ import annotations

import torch

from .stats import last_token_index

__all__ = [
    "gae",
    "group_normalized_advantages",
    "kl_penalized_rewards",
    "rloo_advantages",
    "segment_weights",
]


@torch.no_grad()
def kl_penalized_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """PPO-RLHF's per-token reward: the KL penalty at every response token and the
    sequence's score at its last one (Ziegler et al. 2019, eq. 2; Ouyang et al. 2022, eq. 2):

        r_t = −β·KL_t + [t = last response token]·r(x, y)

    so that Σ_t r_t = r(x, y) − β·Σ_t KL_t, the objective E[r] − β·KL(π_θ ‖ π_ref).

    Args:
        scores: [B] one score per response (reward model plus shaping).
        kl: [B, T] per-token KL estimate (see ``kl_estimators``), 0 outside the response.
        mask: [B, T] response tokens; the score goes to each row's last one.
        beta: β, the KL coefficient.

    Returns:
        [B, T] rewards (−β·KL_t outside the last token; whatever ``kl`` holds outside the mask,
        times −β).
    """
    rewards = -beta * kl
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype)
    return rewards


@torch.no_grad()
def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation over response tokens (Schulman et al. 2016, eqs. 11–16).

        δ_t = r_t + γ V_{t'} − V_t,           t' = next response token after t (V = 0 past the last)
        Â_t = δ_t + γλ Â_{t'}                 (= Σ_l (γλ)^l δ_{t+l}, eq. 16)
        R_t = Â_t + V_t                       (the value-function target, TD(λ) return)

    Positions with ``mask == 0`` are skipped entirely: their rewards and values are ignored and
    the recursion passes through them to the next response token, so right padding, left padding
    and masked-out gaps inside a response (e.g. tool output) all work. The bootstrap value past
    the last response token is 0 (the episode ends with the response). For γ = λ = 1,
    R_t is the reward-to-go Σ_{t'≥t} r_{t'}.

    Args:
        rewards: [B, T] per-token rewards (typically −β·KL per token plus the score on the last
            response token).
        values: [B, T] value estimates V(s_t) from the critic at rollout time.
        mask: [B, T] bool or 0/1, response tokens.
        gamma: discount γ (RLHF usually uses 1).
        lam: GAE λ.

    Returns:
        (advantages, returns), both [B, T] float, 0 outside the mask.
    """
    keep = mask.bool()
    dtype = torch.promote_types(rewards.dtype, values.dtype)
    zero = torch.zeros((), dtype=dtype, device=rewards.device)
    rewards = torch.where(keep, rewards.to(dtype), zero)
    values = torch.where(keep, values.to(dtype), zero)

    batch, time = rewards.shape
    next_value = torch.zeros(batch, dtype=dtype, device=rewards.device)
    last_gae = torch.zeros(batch, dtype=dtype, device=rewards.device)
    advantages = torch.zeros_like(rewards)
    for t in reversed(range(time)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        gae_t = delta + gamma * lam * last_gae
        # A masked position leaves the carried (next value, running advantage) untouched.
        m = keep[:, t]
        last_gae = torch.where(m, gae_t, last_gae)
        next_value = torch.where(m, values[:, t], next_value)
        advantages[:, t] = torch.where(m, gae_t, zero)
    returns = torch.where(keep, advantages + values, zero)
    return advantages, returns


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"{rewards.numel()} rewards cannot be split into groups of {group_size}")
    return rewards.view(-1, group_size)


@torch.no_grad()
def group_normalized_advantages(
    rewards: torch.Tensor, group_size: int, *, scale_by_std: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """GRPO outcome advantages: Â_i = (r_i − mean(r_group)) / (std(r_group) + eps).

    DeepSeekMath (Shao et al. 2024, Sec. 4.1.2, outcome supervision). ``std`` is the unbiased
    (Bessel-corrected) standard deviation, as in TRL's GRPOTrainer, and eps = 1e-4 is TRL's.
    ``scale_by_std=False`` is Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"),
    which drops the division because it up-weights groups with near-identical rewards.

    Args:
        rewards: [N] one scalar reward per completion; the ``group_size`` completions of a prompt
            are contiguous (``rewards.view(-1, group_size)``).
        group_size: completions per prompt (G).

    Returns:
        [N] advantages (0 for every member of a group of size 1 or with identical rewards).
    """
    grouped = _grouped(rewards, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_by_std and group_size > 1:
        centred = centred / (grouped.std(dim=1, keepdim=True, unbiased=True) + eps)
    return centred.reshape(-1)


@torch.no_grad()
def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out baseline: Â_i = r_i − (1/(k−1)) Σ_{j≠i} r_j.

    RLOO (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style
    Optimization for Learning from Human Feedback in LLMs").

    Equivalently k/(k−1) · (r_i − mean(r_group)). Rows of a group are contiguous. Needs k ≥ 2.
    """
    if group_size < 2:
        raise ValueError(f"RLOO needs at least 2 samples per prompt, got group_size={group_size}")
    grouped = _grouped(rewards, group_size)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - baseline).reshape(-1)


@torch.no_grad()
def segment_weights(
    scores: torch.Tensor, segments: torch.Tensor, strength: float, eps: float = 1e-6
) -> torch.Tensor:
    """Weights that scale advantages toward user segments whose mean score lags:

        w_i = exp(−α·(r̄_{s(i)} − r̄) / σ),  normalised to mean 1 over the batch

    with r̄_s the mean score of segment s, r̄ and σ the mean and (unbiased) std over all rows.
    A segment below the mean gets w > 1, one above it w < 1; rows without a segment
    (``segments == −1``) keep w = 1 before the normalisation. α = 0 gives all ones.

    Args:
        scores: [N] one score per response.
        segments: [N] integer segment id of each row's prompt, −1 for none.
        strength: α ≥ 0.
    """
    weights = torch.ones_like(scores)
    if strength == 0 or bool((segments < 0).all()):
        return weights
    overall, spread = scores.mean(), scores.std().clamp(min=eps)
    for segment in segments.unique().tolist():
        if segment < 0:
            continue
        rows = segments == segment
        weights[rows] = torch.exp(-strength * (scores[rows].mean() - overall) / spread)
    return weights / weights.mean()
