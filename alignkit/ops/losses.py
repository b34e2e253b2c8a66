"""Training losses: SFT, Bradley–Terry reward model, DPO family, SimPO, PPO, GRPO.

Conventions. Per-token tensors are [B, T] with a response mask [B, T] (bool or 0/1).
Sequence log-probabilities are [B] (see ``alignkit.ops.logprobs.sequence_logprobs``).
Loss functions return the scalar (or per-pair) loss to backpropagate; logging statistics are
returned detached, as tensors (no ``.item()``, so no device sync inside the loss).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from .kl_estimators import kl_k3
from .logprobs import DEFAULT_CHUNK_SIZE, token_logprobs
from .stats import masked_mean, masked_sum

__all__ = [
    "bradley_terry_loss",
    "dpo_loss",
    "grpo_loss",
    "ppo_policy_loss",
    "ppo_value_loss",
    "preference_accuracy",
    "reward_centering_penalty",
    "sft_loss",
    "simpo_loss",
]

DPOLossType = Literal["sigmoid", "ipo", "hinge", "robust"]
GRPONormalization = Literal["sequence", "token", "constant"]


# --------------------------------------------------------------------------------------------
# Supervised fine-tuning and reward modelling
# --------------------------------------------------------------------------------------------


def sft_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Mean token cross-entropy over unmasked labels: −Σ_t log p(y_t) / #{t: y_t ≠ ignore_index}.

    Same value as ``F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=...)``
    but through :func:`token_logprobs`, so no full float32 log-softmax is built. ``logits[:, t]``
    must already predict ``labels[:, t]`` (the caller shifts). All-ignored batches give 0, not NaN.
    """
    logps = token_logprobs(logits, labels, ignore_index=ignore_index, chunk_size=chunk_size)
    count = (labels != ignore_index).sum().clamp(min=1)
    return -logps.sum() / count.to(logps.dtype)


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Pairwise reward-model loss: mean of −log σ(r_w − r_l − m).

    Bradley–Terry preference likelihood as used by InstructGPT (Ouyang et al. 2022, eq. 1);
    the optional margin m(r) is Llama 2's (Touvron et al. 2023, eq. 2), a per-pair tensor [B] or
    a float. Matches TRL's ``RewardTrainer.compute_loss`` (without ``center_rewards_coefficient``).
    """
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff).mean()


def reward_centering_penalty(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor
) -> torch.Tensor:
    """E[(r_w + r_l)²]: the auxiliary term that pulls the reward model's mean output toward 0
    (Eisenstein et al. 2023, "Helping or Herding?"), so the scale PPO sees does not drift.
    Added to the Bradley–Terry loss with a coefficient c (TRL's ``center_rewards_coefficient``).
    """
    return ((chosen_rewards + rejected_rewards) ** 2).mean()


@torch.no_grad()
def preference_accuracy(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor
) -> torch.Tensor:
    """Fraction of pairs with r_w > r_l (ties count as wrong, as in TRL). Detached scalar."""
    return (chosen_rewards > rejected_rewards).float().mean()


# --------------------------------------------------------------------------------------------
# Offline preference optimisation
# --------------------------------------------------------------------------------------------


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    loss_type: DPOLossType = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO and its pairwise variants, from sequence log-probabilities [B].

    With h = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l)) and ε = label_smoothing:

    - ``"sigmoid"``: DPO, −log σ(β h) (Rafailov et al. 2023, eq. 7). With ε > 0 this is
      conservative DPO (cDPO; Mitchell 2023, "A note on DPO with noisy preferences"):
      −(1 − ε) log σ(β h) − ε log σ(−β h), the cross-entropy against labels flipped w.p. ε.
    - ``"robust"``: rDPO (Chowdhury et al. 2024, "Provably Robust DPO"), the unbiased
      loss under label-flip rate ε ∈ [0, 0.5):
      [(1 − ε)(−log σ(β h)) − ε(−log σ(−β h))] / (1 − 2ε).
    - ``"hinge"``: SLiC-HF calibration loss (Zhao et al. 2023), relu(1 − β h), i.e. margin 1/β.
    - ``"ipo"``: IPO (Azar et al. 2023, eq. 17, with τ = β), (h − 1/(2β))². **Pass
      length-averaged log-probabilities** (``sequence_logprobs(..., average=True)``, for policy
      and reference alike) to reproduce TRL, which divides each log-ratio by the completion's
      token count because the squared loss otherwise scales with length; the paper states the
      loss on sequence log-probabilities and is silent on this.

    Args:
        policy_chosen_logps, policy_rejected_logps: [B] log π(y | x) of the policy.
        ref_chosen_logps, ref_rejected_logps: [B] same under the frozen reference.
        beta: β > 0, strength of the KL constraint (IPO's τ).
        loss_type: one of the above.
        label_smoothing: ε, for "sigmoid" (cDPO) and "robust" only.

    Returns:
        (losses [B], chosen_rewards [B], rejected_rewards [B]); rewards are the implicit rewards
        β·(log π − log π_ref), detached (metrics only). Take ``losses.mean()`` to train.
    """
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    h = chosen_logratios - rejected_logratios
    eps = label_smoothing

    if loss_type == "sigmoid":
        if not 0.0 <= eps <= 0.5:
            raise ValueError(f"label_smoothing for cDPO must lie in [0, 0.5], got {eps}")
        losses = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    elif loss_type == "robust":
        if not 0.0 <= eps < 0.5:
            raise ValueError(f"label_smoothing for robust DPO must lie in [0, 0.5), got {eps}")
        losses = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (
            1 - 2 * eps
        )
    elif loss_type in ("hinge", "ipo"):
        if eps != 0.0:
            # TRL silently ignores it here; an explicit error beats a setting that does nothing.
            raise ValueError(f"label_smoothing is not defined for loss_type={loss_type!r}")
        losses = torch.relu(1 - beta * h) if loss_type == "hinge" else (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(
            f"unknown DPO loss_type {loss_type!r}; expected 'sigmoid', 'ipo', 'hinge' or 'robust'"
        )

    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return losses, chosen_rewards, rejected_rewards


def simpo_loss(
    policy_chosen_logps_avg: torch.Tensor,
    policy_rejected_logps_avg: torch.Tensor,
    *,
    beta: float,
    gamma_beta_ratio: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SimPO, reference-free and length-normalised (Meng et al. 2024, eq. 6):

        −log σ(β/|y_w| log π(y_w) − β/|y_l| log π(y_l) − γ),   γ = gamma_beta_ratio · β

    Takes **length-averaged** log-probabilities (``sequence_logprobs(..., average=True)``).
    The margin is given as γ/β like the authors' code (their default 0.5); TRL's CPOTrainer
    ``simpo_gamma`` is γ itself, i.e. ``simpo_gamma = gamma_beta_ratio * beta``. ε > 0 gives the
    same label-smoothed form as cDPO.

    Returns:
        (losses [B], chosen_rewards [B], rejected_rewards [B]) with rewards β·avg log π, detached.
    """
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5], got {label_smoothing}")
    logits = beta * (policy_chosen_logps_avg - policy_rejected_logps_avg - gamma_beta_ratio)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    chosen_rewards = beta * policy_chosen_logps_avg.detach()
    rejected_rewards = beta * policy_rejected_logps_avg.detach()
    return losses, chosen_rewards, rejected_rewards


# --------------------------------------------------------------------------------------------
# Online RL: PPO and GRPO
# --------------------------------------------------------------------------------------------


def _clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    keep: torch.Tensor,
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token −min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A), and where clipping is active."""
    # Zero the log-ratio outside the mask first: padding may hold garbage log-probs, and an inf
    # ratio there would turn the (zero) upstream gradient into NaN through exp().
    log_ratio = torch.where(keep, logprobs - old_logprobs, torch.zeros_like(logprobs))
    ratio = torch.exp(log_ratio)
    clipped_ratio = torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    per_token = -torch.min(ratio * advantages, clipped_ratio * advantages)
    # Tokens whose gradient the clip removes: the pessimistic min picked the clipped term.
    with torch.no_grad():
        clipped_low = (ratio < 1 - clip_low) & (advantages < 0)
        clipped_high = (ratio > 1 + clip_high) & (advantages > 0)
    return per_token, log_ratio, clipped_low, clipped_high


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    *,
    clip_eps_high: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), token-level mean over the mask:

        L = −E_t[min(ρ_t A_t, clip(ρ_t, 1 − ε, 1 + ε) A_t)],   ρ_t = exp(logπ − logπ_old)

    Args:
        logprobs: [B, T] log π_θ of the sampled tokens (with gradient).
        old_logprobs: [B, T] log π_old at rollout time.
        advantages: [B, T] (e.g. whitened GAE), or [B] broadcast over tokens.
        mask: [B, T] response tokens.
        clip_eps: ε (lower side; also the upper side unless ``clip_eps_high`` is given).
        clip_eps_high: optional upper ε ("clip-higher", DAPO, Yu et al. 2025).

    Returns:
        (loss, stats) with detached stats:
        ``clipfrac``: fraction of tokens where the clipped term is active (zero gradient) —
        TRL's legacy PPOTrainer ``pg_clipfrac`` = mean(pg_losses2 > pg_losses);
        ``approxkl``: ½·mean((logπ − logπ_old)²), the k2 estimate of KL(π_old ‖ π_θ) logged by
        TRL's legacy PPOTrainer and OpenAI's lm-human-preferences (here a masked mean; TRL's
        was an unmasked mean over padded positions that held a zero difference).
    """
    keep = mask.bool()
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    per_token, log_ratio, low_c, high_c = _clipped_surrogate(
        logprobs, old_logprobs, advantages, keep, clip_eps, high
    )
    loss = masked_mean(per_token, keep)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((low_c | high_c).float(), keep),
            "approxkl": 0.5 * masked_mean(log_ratio.detach() ** 2, keep),
            "ratio_mean": masked_mean(log_ratio.detach().exp(), keep),
        }
    return loss, stats


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float | None = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: ½·E_t[max((V − R)², (clip(V, V_old − c, V_old + c) − R)²)].

    The pessimistic value clipping of OpenAI baselines' PPO2 (not in the PPO paper; discussed in
    Engstrom et al. 2020 and Huang et al. 2022, "The 37 implementation details of PPO"), as in
    TRL's legacy PPOTrainer. Token-level mean over the mask. ``clip_range=None`` gives the plain
    ½·(V − R)².

    Returns:
        (loss, {"vf_clipfrac": fraction of tokens where the clipped error is the larger one}).
    """
    keep = mask.bool()
    err_unclipped = (values - returns) ** 2
    if clip_range is None:
        loss = 0.5 * masked_mean(err_unclipped, keep)
        return loss, {"vf_clipfrac": torch.zeros((), device=values.device)}
    values_clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    err_clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(err_unclipped, err_clipped), keep)
    with torch.no_grad():
        vf_clipfrac = masked_mean((err_clipped > err_unclipped).float(), keep)
    return loss, {"vf_clipfrac": vf_clipfrac}


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    ref_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    beta: float = 0.0,
    loss_normalization: GRPONormalization = "sequence",
    max_completion_length: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO objective (Shao et al. 2024, DeepSeekMath eq. 3), negated for minimisation.

    Per token: ℓ_t = −min(ρ_t Â, clip(ρ_t, 1 − ε_low, 1 + ε_high) Â) + β·k3_t, with
    ρ_t = exp(logπ − logπ_old) and k3_t = exp(ref − logπ) − (ref − logπ) − 1 (eq. 4).
    Aggregation over the N completions (``loss_normalization``):

    - ``"sequence"``: mean over each completion's tokens, then over completions — the paper's
      1/G Σ_i 1/|o_i| Σ_t (TRL ``loss_type="grpo"``).
    - ``"token"``: Σ over all tokens / number of tokens in the batch — DAPO's token-level loss
      (Yu et al. 2025; TRL ``"bnpo"``, and ``"dapo"`` on one process without gradient
      accumulation: TRL's ``"dapo"`` divides by the token count of the whole accumulated
      generation batch; to match it under accumulation, rescale this loss by local/global count).
    - ``"constant"``: Σ over all tokens / (N · max_completion_length) — Dr. GRPO (Liu et al.
      2025), which removes the length bias of per-sequence means (TRL ``"dr_grpo"``).

    Args:
        logprobs: [N, T] log π_θ of the sampled tokens (with gradient).
        old_logprobs: [N, T] log π_old at sampling time, or None when each batch is used for a
            single update (then ρ = 1 in value but still carries the gradient, as in TRL).
        ref_logprobs: [N, T] log π_ref; may be None when ``beta == 0``.
        advantages: [N] one per completion (see ``group_normalized_advantages``), or [N, T].
        mask: [N, T] completion tokens.
        clip_eps: ε_low; clip_eps_high: ε_high (DAPO clip-higher, e.g. 0.28); default ε_low.
        beta: KL coefficient β (0 disables the KL term, as in DAPO / Dr. GRPO).
        loss_normalization: see above.
        max_completion_length: L for ``"constant"``.

    Returns:
        (loss, stats) with detached stats over the masked tokens: ``clipfrac`` (tokens where the
        clip removes the gradient, TRL's ``clip_ratio/region_mean``), ``clipfrac_low``,
        ``clipfrac_high`` and, when a reference is given, ``kl`` (mean k3).
    """
    keep = mask.bool()
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    if old_logprobs is None:
        old_logprobs = logprobs.detach()
    high = clip_eps if clip_eps_high is None else clip_eps_high
    per_token, _, low_c, high_c = _clipped_surrogate(
        logprobs, old_logprobs, advantages, keep, clip_eps, high
    )

    kl = None
    if ref_logprobs is not None:
        zero = torch.zeros_like(logprobs)
        kl = kl_k3(torch.where(keep, logprobs, zero), torch.where(keep, ref_logprobs, zero))
    if beta != 0.0:
        if kl is None:
            raise ValueError("grpo_loss with beta != 0 needs ref_logprobs")
        per_token = per_token + beta * kl

    if loss_normalization == "sequence":
        loss = masked_mean(per_token, keep, dim=-1).mean()
    elif loss_normalization == "token":
        loss = masked_mean(per_token, keep)
    elif loss_normalization == "constant":
        if max_completion_length is None or max_completion_length < 1:
            raise ValueError('loss_normalization="constant" needs max_completion_length >= 1')
        loss = masked_sum(per_token, keep) / (per_token.size(0) * max_completion_length)
    else:
        raise ValueError(
            f"unknown loss_normalization {loss_normalization!r}; "
            "expected 'sequence', 'token' or 'constant'"
        )

    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((low_c | high_c).float(), keep),
            "clipfrac_low": masked_mean(low_c.float(), keep),
            "clipfrac_high": masked_mean(high_c.float(), keep),
        }
        if kl is not None:
            stats["kl"] = masked_mean(kl.detach(), keep)
    return loss, stats
