import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from alignkit.ops import (
    bradley_terry_loss,
    dpo_loss,
    grpo_loss,
    kl_k3,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
    preference_accuracy,
    reward_centering_penalty,
    sequence_logprobs,
    sft_loss,
    simpo_loss,
)


def softplus(x: float) -> float:
    """−log σ(x) = log(1 + e^{−x}), for hand-computed expectations."""
    return math.log1p(math.exp(-x))


# ============================================================================ SFT


def test_sft_loss_hand_computed_and_matches_cross_entropy():
    # softmax([0, 0, ln 2]) = [1/4, 1/4, 1/2]; labels 2 and 0 → −(ln ½ + ln ¼)/2 = 1.5 ln 2.
    logits = torch.tensor([[[0.0, 0.0, math.log(2)]] * 3])
    labels = torch.tensor([[2, 0, -100]])
    torch.testing.assert_close(sft_loss(logits, labels), torch.tensor(1.5 * math.log(2)))

    logits = torch.randn(3, 6, 17, requires_grad=True)
    labels = torch.randint(0, 17, (3, 6))
    labels[:, :2] = -100
    ref_logits = logits.detach().clone().requires_grad_()
    ours = sft_loss(logits, labels, chunk_size=4)
    ref = F.cross_entropy(ref_logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(ours, ref)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad)


def test_sft_loss_all_ignored_is_zero():
    out = sft_loss(torch.randn(1, 2, 5), torch.full((1, 2), -100))
    torch.testing.assert_close(out, torch.tensor(0.0))


# ============================================================================ reward model


def test_bradley_terry_hand_computed():
    chosen = torch.tensor([2.0, 0.0])
    rejected = torch.tensor([0.0, 0.0])
    expected = (softplus(2.0) + math.log(2)) / 2
    torch.testing.assert_close(bradley_terry_loss(chosen, rejected), torch.tensor(expected))
    margin = torch.tensor([1.0, 0.0])
    expected = (softplus(1.0) + math.log(2)) / 2
    torch.testing.assert_close(bradley_terry_loss(chosen, rejected, margin), torch.tensor(expected))
    torch.testing.assert_close(preference_accuracy(chosen, rejected), torch.tensor(0.5))


def test_bradley_terry_matches_trl_reward_trainer():
    pytest.importorskip("trl")
    # Calls trl/trainer/reward_trainer.py::RewardTrainer.compute_loss on a minimal fake self.
    from trl.trainer.reward_trainer import RewardTrainer

    chosen, rejected, margin = torch.randn(3, 8)
    rewards = torch.cat([chosen, rejected]).unsqueeze(-1)
    fake = SimpleNamespace(
        model=SimpleNamespace(training=True),
        args=SimpleNamespace(center_rewards_coefficient=None),
        accelerator=SimpleNamespace(gather_for_metrics=lambda x: x, gather=lambda x: x),
        _total_train_tokens=0,
        _tp_size=1,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )
    for extra in ({}, {"margin": margin}):
        inputs = {"attention_mask": torch.ones(16, 4, dtype=torch.long), **extra}
        trl_loss = RewardTrainer.compute_loss(
            fake, lambda **_: SimpleNamespace(logits=rewards), inputs
        )
        ours = bradley_terry_loss(chosen, rejected, extra.get("margin"))
        torch.testing.assert_close(ours, trl_loss, atol=1e-5, rtol=1e-5)
    assert math.isclose(
        fake._metrics["train"]["accuracy"][-1], preference_accuracy(chosen, rejected).item()
    )


def test_reward_centering_penalty_hand_computed_and_matches_trl():
    chosen, rejected = torch.tensor([1.0, 0.5]), torch.tensor([-0.5, 0.5])
    torch.testing.assert_close(
        reward_centering_penalty(chosen, rejected), torch.tensor((0.25 + 1.0) / 2)
    )
    pytest.importorskip("trl")
    from trl.trainer.reward_trainer import RewardTrainer

    chosen, rejected = torch.randn(2, 8)
    fake = SimpleNamespace(
        model=SimpleNamespace(training=True),
        args=SimpleNamespace(center_rewards_coefficient=0.3),
        accelerator=SimpleNamespace(gather_for_metrics=lambda x: x, gather=lambda x: x),
        _total_train_tokens=0,
        _tp_size=1,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )
    rewards = torch.cat([chosen, rejected]).unsqueeze(-1)
    inputs = {"attention_mask": torch.ones(16, 4, dtype=torch.long)}
    trl_loss = RewardTrainer.compute_loss(fake, lambda **_: SimpleNamespace(logits=rewards), inputs)
    ours = bradley_terry_loss(chosen, rejected) + 0.3 * reward_centering_penalty(chosen, rejected)
    torch.testing.assert_close(ours, trl_loss, atol=1e-5, rtol=1e-5)


# ============================================================================ DPO family

# π(y_w) = −1, π(y_l) = −3, π_ref = −2 for both, β = 0.5: log-ratios +1 / −1, h = 2, βh = 1.
HAND = dict(
    policy_chosen_logps=torch.tensor([-1.0]),
    policy_rejected_logps=torch.tensor([-3.0]),
    ref_chosen_logps=torch.tensor([-2.0]),
    ref_rejected_logps=torch.tensor([-2.0]),
)


@pytest.mark.parametrize(
    ("loss_type", "label_smoothing", "expected"),
    [
        ("sigmoid", 0.0, softplus(1.0)),
        ("sigmoid", 0.1, 0.9 * softplus(1.0) + 0.1 * softplus(-1.0)),  # cDPO
        ("robust", 0.1, (0.9 * softplus(1.0) - 0.1 * softplus(-1.0)) / 0.8),
        ("hinge", 0.0, 0.0),  # relu(1 − 1)
        ("ipo", 0.0, 1.0),  # (2 − 1/(2·0.5))²
    ],
)
def test_dpo_hand_computed(loss_type, label_smoothing, expected):
    losses, chosen_r, rejected_r = dpo_loss(
        **HAND, beta=0.5, loss_type=loss_type, label_smoothing=label_smoothing
    )
    torch.testing.assert_close(losses, torch.tensor([expected]))
    torch.testing.assert_close(chosen_r, torch.tensor([0.5]))
    torch.testing.assert_close(rejected_r, torch.tensor([-0.5]))


def test_dpo_sigmoid_is_log2_when_policy_equals_reference():
    logps = torch.randn(4, 5)
    losses, chosen_r, rejected_r = dpo_loss(*logps[:2], *logps[:2], beta=0.3)
    torch.testing.assert_close(losses, torch.full((5,), math.log(2)))
    assert (chosen_r == 0).all() and (rejected_r == 0).all()


def test_dpo_gradient_weight_is_sigmoid_of_reward_error():
    # ∂L/∂(r̂_w − r̂_l) = −σ(r̂_l − r̂_w), hence ∂L/∂logπ(y_w) = −β σ(r̂_l − r̂_w) = −∂L/∂logπ(y_l)
    # (Rafailov et al. 2023, Sec. 4, "What does the DPO update do?").
    beta = 0.2
    pc, pr, rc, rr = (torch.randn(6) * 3 for _ in range(4))
    pc.requires_grad_()
    pr.requires_grad_()
    losses, chosen_r, rejected_r = dpo_loss(pc, pr, rc, rr, beta=beta)
    losses.sum().backward()
    weight = torch.sigmoid(rejected_r - chosen_r)
    torch.testing.assert_close(pc.grad, -beta * weight)
    torch.testing.assert_close(pr.grad, beta * weight)


def test_dpo_label_smoothing_zero_matches_plain_and_errors():
    plain, _, _ = dpo_loss(**HAND, beta=0.5)
    robust, _, _ = dpo_loss(**HAND, beta=0.5, loss_type="robust")
    torch.testing.assert_close(plain, robust)
    with pytest.raises(ValueError):
        dpo_loss(**HAND, beta=0.5, loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ValueError):
        dpo_loss(**HAND, beta=0.5, loss_type="hinge", label_smoothing=0.1)
    with pytest.raises(ValueError):
        dpo_loss(**HAND, beta=0.5, loss_type="nope")
    with pytest.raises(ValueError):
        dpo_loss(**HAND, beta=0.0)


def test_simpo_hand_computed():
    # β = 2, γ/β = 0.25, avg log-probs −1 and −2: logit = 2·(1 − 0.25) = 1.5.
    losses, chosen_r, rejected_r = simpo_loss(
        torch.tensor([-1.0]), torch.tensor([-2.0]), beta=2.0, gamma_beta_ratio=0.25
    )
    torch.testing.assert_close(losses, torch.tensor([softplus(1.5)]))
    torch.testing.assert_close(chosen_r, torch.tensor([-2.0]))
    torch.testing.assert_close(rejected_r, torch.tensor([-4.0]))


def _trl_dpo_harness(per_token_logps, completion_mask, ref_chosen, ref_rejected, **cfg):
    """Run trl/trainer/dpo_trainer.py::DPOTrainer._compute_loss on a minimal fake self.

    The fake model returns the given per-token log-probs (precompute_ref_logps=True supplies the
    reference sums), so the real loss code runs unchanged: f_divergence "reverse_kl", no
    weighting, no ld_alpha. Returns (mean loss, metrics).
    """
    from trl.trainer.dpo_trainer import DPOTrainer

    n, seq_len = per_token_logps.shape
    outputs = SimpleNamespace(
        log_probs=per_token_logps,
        entropy=torch.zeros(n, seq_len),
        mean_logits=torch.zeros(n, seq_len),
        is_top1=torch.zeros(n, seq_len, dtype=torch.bool),
    )
    metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    fake = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=SimpleNamespace(
            device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x
        ),
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[cfg["loss_type"]],
        loss_weights=[1.0],
        beta=cfg["beta"],
        label_smoothing=cfg.get("label_smoothing", 0.0),
        use_weighting=False,
        _metrics=metrics,
        _total_train_tokens=0,
        _tp_size=1,
        args=SimpleNamespace(),
    )
    inputs = {
        "input_ids": torch.zeros_like(completion_mask),
        "attention_mask": torch.ones_like(completion_mask),
        "completion_mask": completion_mask,
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    loss = DPOTrainer._compute_loss(fake, lambda **_: outputs, inputs, return_outputs=False)
    return loss, metrics["train"]


def _random_pairs(batch=5, seq=8):
    """Random chosen/rejected completions: per-token log-probs on the completion tokens only."""
    lengths = torch.randint(1, seq, (2 * batch,))
    completion_mask = torch.zeros(2 * batch, seq, dtype=torch.long)
    for i, n in enumerate(lengths):
        completion_mask[i, seq - n :] = 1  # prompt first, then completion
    shift_mask = completion_mask[:, 1:]
    # TRL's fused LM head returns 0 at label −100 (prompt) positions: a leaf times the mask.
    leaf = (-torch.rand(2 * batch, seq - 1) * 3).requires_grad_()
    ref_per_token = -torch.rand(2 * batch, seq - 1) * 3 * shift_mask
    return leaf, ref_per_token, completion_mask, shift_mask


@pytest.mark.parametrize(
    ("loss_type", "beta", "label_smoothing"),
    [("sigmoid", 0.1, 0.0), ("hinge", 0.3, 0.0), ("ipo", 0.5, 0.0), ("robust", 0.2, 0.15)],
)
def test_dpo_matches_trl_dpo_trainer(loss_type, beta, label_smoothing):
    pytest.importorskip("trl")
    leaf, ref_per_token, completion_mask, shift_mask = _random_pairs()
    ref_sums = sequence_logprobs(ref_per_token, shift_mask)
    ref_chosen, ref_rejected = ref_sums.chunk(2)
    trl_loss, metrics = _trl_dpo_harness(
        leaf * shift_mask,
        completion_mask,
        ref_chosen,
        ref_rejected,
        loss_type=loss_type,
        beta=beta,
        label_smoothing=label_smoothing,
    )
    (trl_grad,) = torch.autograd.grad(trl_loss, leaf)

    # IPO in TRL divides each log-ratio by the completion length: pass averaged log-probs.
    average = loss_type == "ipo"
    policy = sequence_logprobs(leaf * shift_mask, shift_mask, average=average)
    ref = sequence_logprobs(ref_per_token, shift_mask, average=average)
    losses, chosen_r, rejected_r = dpo_loss(
        *policy.chunk(2),
        *ref.chunk(2),
        beta=beta,
        loss_type=loss_type,
        label_smoothing=label_smoothing,
    )
    (our_grad,) = torch.autograd.grad(losses.mean(), leaf)
    torch.testing.assert_close(losses.mean(), trl_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(our_grad, trl_grad, atol=1e-5, rtol=1e-5)
    if not average:  # TRL logs rewards from the summed log-ratios for every loss type
        assert math.isclose(metrics["rewards/chosen"][-1], chosen_r.mean().item(), abs_tol=1e-5)
        assert math.isclose(metrics["rewards/rejected"][-1], rejected_r.mean().item(), abs_tol=1e-5)


def _cpo_fake(loss_type, beta, label_smoothing=0.0, simpo_gamma=0.5):
    return SimpleNamespace(
        alpha=0.0,
        loss_type=loss_type,
        beta=beta,
        label_smoothing=label_smoothing,
        simpo_gamma=simpo_gamma,
        accelerator=SimpleNamespace(device=torch.device("cpu")),
    )


def test_cdpo_matches_trl_label_smoothed_sigmoid():
    pytest.importorskip("trl")
    # TRL 1.16's DPOTrainer "sigmoid" ignores label_smoothing (it only feeds robust/exo_pair/aot).
    # The cDPO form survives in trl/experimental/cpo/cpo_trainer.py::CPOTrainer.cpo_loss
    # ("sigmoid" branch), which is reference-free: feeding it the log-ratios gives cDPO exactly.
    from trl.experimental.cpo import CPOTrainer

    beta, eps = 0.25, 0.2
    pc, pr, rc, rr = (torch.randn(7) * 4 for _ in range(4))
    trl_losses, _, _ = CPOTrainer.cpo_loss(_cpo_fake("sigmoid", beta, eps), pc - rc, pr - rr)
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="sigmoid", label_smoothing=eps)
    torch.testing.assert_close(losses, trl_losses, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_simpo_matches_trl_cpo_simpo(label_smoothing):
    pytest.importorskip("trl")
    # trl/experimental/cpo/cpo_trainer.py::CPOTrainer.cpo_loss with loss_type="simpo", alpha=0
    # (TRL has SimPO there, not in DPOTrainer). TRL's simpo_gamma is γ = gamma_beta_ratio · β.
    from trl.experimental.cpo import CPOTrainer

    beta, ratio = 2.0, 0.3
    chosen_avg, rejected_avg = -torch.rand(2, 9) * 3
    fake = _cpo_fake("simpo", beta, label_smoothing, simpo_gamma=ratio * beta)
    trl_losses, trl_chosen, trl_rejected = CPOTrainer.cpo_loss(fake, chosen_avg, rejected_avg)
    losses, chosen_r, rejected_r = simpo_loss(
        chosen_avg, rejected_avg, beta=beta, gamma_beta_ratio=ratio, label_smoothing=label_smoothing
    )
    torch.testing.assert_close(losses, trl_losses, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chosen_r, trl_chosen)
    torch.testing.assert_close(rejected_r, trl_rejected)


# ============================================================================ PPO


def test_ppo_policy_loss_hand_computed():
    # ρ = [1.5, 0.5, 1], A = [1, 1, −1], ε = 0.2:
    # token 0: min(1.5, 1.2)·1 = 1.2 (clipped)  token 1: min(0.5, 0.8) = 0.5  token 2: −1
    logprobs = torch.log(torch.tensor([[1.5, 0.5, 1.0, 1.0]])).requires_grad_()
    old = torch.zeros(1, 4)
    adv = torch.tensor([[1.0, 1.0, -1.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, stats = ppo_policy_loss(logprobs, old, adv, mask, clip_eps=0.2)
    torch.testing.assert_close(loss, torch.tensor((-1.2 - 0.5 + 1.0) / 3))
    torch.testing.assert_close(stats["clipfrac"], torch.tensor(1 / 3))
    approxkl = 0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 3
    torch.testing.assert_close(stats["approxkl"], torch.tensor(approxkl))
    loss.backward()
    # ∂/∂logπ of −ρA/3 is −ρA/3; the clipped token and the padding get nothing.
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, -0.5 / 3, 1 / 3, 0.0]]))


def test_ppo_clipping_zeroes_gradient_only_in_pessimistic_direction():
    eps = 0.2
    ratios = torch.tensor([1.5, 0.5, 0.5, 1.5, 1.1, 0.9])
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    logprobs = ratios.log().unsqueeze(0).requires_grad_()
    loss, stats = ppo_policy_loss(
        logprobs, torch.zeros(1, 6), adv.unsqueeze(0), torch.ones(1, 6), eps
    )
    loss.backward()
    grad = logprobs.grad[0]
    # ρ > 1+ε with A > 0 and ρ < 1−ε with A < 0: the objective is capped, no gradient.
    assert grad[0] == 0 and grad[1] == 0
    # Moving back toward the trust region (or inside it) is never clipped: −ρA/n.
    torch.testing.assert_close(grad[2:], -(ratios * adv)[2:] / 6)
    torch.testing.assert_close(stats["clipfrac"], torch.tensor(2 / 6))
    # Clip-higher: with ε_high = 0.6 the token at ρ = 1.5, A > 0 is free again.
    logprobs.grad = None
    loss, _ = ppo_policy_loss(
        logprobs, torch.zeros(1, 6), adv.unsqueeze(0), torch.ones(1, 6), eps, clip_eps_high=0.6
    )
    loss.backward()
    torch.testing.assert_close(logprobs.grad[0, 0], torch.tensor(-1.5 / 6))


def test_ppo_policy_loss_garbage_padding_gives_finite_gradient():
    logprobs = torch.tensor([[-1.0, 50.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -1e9]])
    loss, _ = ppo_policy_loss(logprobs, old, torch.ones(1, 2), torch.tensor([[1, 0]]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logprobs.grad).all()


def test_ppo_value_loss_hand_computed():
    # token 0: (1 − 0)² = 1 vs (0.7 − 0)² = 0.49 → 1; token 1: 0 vs (0.7 − 2)² = 1.69 → 1.69 (clipped)
    values = torch.tensor([[1.0, 2.0, 4.0]], requires_grad=True)
    old = torch.tensor([[0.5, 0.5, 0.0]])
    returns = torch.tensor([[0.0, 2.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, stats = ppo_value_loss(values, old, returns, mask, clip_range=0.2)
    torch.testing.assert_close(loss, torch.tensor(0.5 * (1.0 + 1.69) / 2))
    torch.testing.assert_close(stats["vf_clipfrac"], torch.tensor(0.5))
    loss.backward()
    # Token 1's clipped branch is constant in V: zero gradient; token 0: 0.5·2·(V − R)/2.
    torch.testing.assert_close(values.grad, torch.tensor([[0.5, 0.0, 0.0]]))
    unclipped, _ = ppo_value_loss(values, old, returns, mask, clip_range=None)
    torch.testing.assert_close(unclipped, torch.tensor(0.5 * (1.0 + 0.0) / 2))


def test_ppo_value_loss_matches_legacy_trl_ppo():
    # Reproduces the value-loss lines of TRL's legacy PPOTrainer.train (trl/trainer/ppo_trainer.py,
    # later trl/experimental/ppo; absent from TRL 1.16), where masked_mean(x, m) = (x*m).sum()/m.sum().
    vpred, mb_values, mb_return = torch.randn(3, 4, 6)
    mask = torch.rand(4, 6) > 0.3
    cliprange_value = 0.2
    vpredclipped = torch.clamp(vpred, mb_values - cliprange_value, mb_values + cliprange_value)
    vf_losses1 = torch.square(vpred - mb_return)
    vf_losses2 = torch.square(vpredclipped - mb_return)
    vf_loss_max = torch.max(vf_losses1, vf_losses2)
    vf_loss = 0.5 * (vf_loss_max * mask).sum() / mask.sum()
    vf_clipfrac = ((vf_losses2 > vf_losses1).float() * mask).sum() / mask.sum()

    loss, stats = ppo_value_loss(vpred, mb_values, mb_return, mask, cliprange_value)
    torch.testing.assert_close(loss, vf_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stats["vf_clipfrac"], vf_clipfrac)


# ============================================================================ GRPO


def test_grpo_hand_computed_normalisations():
    # ρ = 1 everywhere; per-token −Â: sequence 0 (2 tokens) −1, sequence 1 (1 token) +3.
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    logprobs = torch.full((2, 3), -1.0)
    adv = torch.tensor([1.0, -3.0])
    cases = {"sequence": (-1 + 3) / 2, "token": (-2 + 3) / 3, "constant": (-2 + 3) / (2 * 4)}
    for norm, expected in cases.items():
        loss, stats = grpo_loss(
            logprobs, logprobs, None, adv, mask, loss_normalization=norm, max_completion_length=4
        )
        torch.testing.assert_close(loss, torch.tensor(expected), msg=norm)
        assert stats["clipfrac"] == 0 and "kl" not in stats
    # With π_ref/π = 2 on every token, k3 = 2 − ln 2 − 1; β = 0.1 adds 0.1·k3 per token.
    k3 = 1 - math.log(2)
    ref = logprobs + math.log(2)
    cases = {
        "sequence": 1 + 0.1 * k3,
        "token": 1 / 3 + 0.1 * k3,
        "constant": (1 + 3 * 0.1 * k3) / 8,
    }
    for norm, expected in cases.items():
        loss, stats = grpo_loss(
            logprobs,
            logprobs,
            ref,
            adv,
            mask,
            beta=0.1,
            loss_normalization=norm,
            max_completion_length=4,
        )
        torch.testing.assert_close(loss, torch.tensor(expected), msg=norm)
        torch.testing.assert_close(stats["kl"], torch.tensor(k3))


def test_grpo_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError):
        grpo_loss(x, x, None, torch.zeros(2), torch.ones(2, 3), beta=0.1)
    with pytest.raises(ValueError):
        grpo_loss(x, x, None, torch.zeros(2), torch.ones(2, 3), loss_normalization="constant")
    with pytest.raises(ValueError):
        grpo_loss(x, x, None, torch.zeros(2), torch.ones(2, 3), loss_normalization="mean")


def _trl_grpo_harness(
    logps, old, ref, advantages, mask, *, loss_type, beta, eps_low, eps_high, max_len
):
    """Run trl/trainer/grpo_trainer.py::GRPOTrainer._compute_loss on a minimal fake self.

    ``_get_per_token_logps_and_entropies`` is replaced by a stub that returns ``logps``; token-level
    importance sampling, no entropy masking, no vLLM correction, one process, no accumulation.
    """
    from trl.trainer.grpo_trainer import GRPOTrainer

    n, t = logps.shape
    metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    fake = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros(n, t), None),
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        beta=beta,
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        loss_type=loss_type,
        use_vllm=False,
        max_completion_length=max_len,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        _entropy_bonus_enabled=False,
        aux_loss_enabled=False,
        _metrics=metrics,
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1),
        accelerator=SimpleNamespace(
            reduce=lambda x, reduction: x, gather=lambda x: x, num_processes=1
        ),
    )
    inputs = {
        "prompt_ids": torch.zeros(n, 2, dtype=torch.long),
        "prompt_mask": torch.ones(n, 2, dtype=torch.long),
        "completion_ids": torch.zeros(n, t, dtype=torch.long),
        "completion_mask": mask,
        "advantages": advantages,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum(),
    }
    loss = GRPOTrainer._compute_loss(fake, None, inputs)
    return loss, metrics["train"]


def _random_rollouts(n=6, t=7):
    lengths = torch.randint(1, t + 1, (n,))
    mask = (torch.arange(t)[None] < lengths[:, None]).long()
    logps = (-torch.rand(n, t) * 3).requires_grad_()
    old = logps.detach() + torch.randn(n, t) * 0.3  # ratios both inside and outside the clip
    ref = logps.detach() + torch.randn(n, t) * 0.3
    return logps, old, ref, mask


@pytest.mark.parametrize(
    ("trl_loss_type", "ours"),
    [("grpo", "sequence"), ("bnpo", "token"), ("dapo", "token"), ("dr_grpo", "constant")],
)
@pytest.mark.parametrize(("beta", "eps_high"), [(0.0, 0.2), (0.04, 0.28)])
def test_grpo_matches_trl_grpo_trainer(trl_loss_type, ours, beta, eps_high):
    pytest.importorskip("trl")
    logps, old, ref, mask = _random_rollouts()
    advantages = torch.randn(logps.shape[0])
    trl_loss, metrics = _trl_grpo_harness(
        logps,
        old,
        ref,
        advantages,
        mask,
        loss_type=trl_loss_type,
        beta=beta,
        eps_low=0.2,
        eps_high=eps_high,
        max_len=9,
    )
    (trl_grad,) = torch.autograd.grad(trl_loss, logps)
    loss, stats = grpo_loss(
        logps,
        old,
        ref,
        advantages,
        mask,
        clip_eps=0.2,
        clip_eps_high=eps_high,
        beta=beta,
        loss_normalization=ours,
        max_completion_length=9,
    )
    (our_grad,) = torch.autograd.grad(loss, logps)
    torch.testing.assert_close(loss, trl_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(our_grad, trl_grad, atol=1e-5, rtol=1e-5)
    assert math.isclose(
        stats["clipfrac"].item(), metrics["clip_ratio/region_mean"][-1], abs_tol=1e-6
    )
    assert math.isclose(
        stats["clipfrac_low"].item(), metrics["clip_ratio/low_mean"][-1], abs_tol=1e-6
    )
    assert math.isclose(
        stats["clipfrac_high"].item(), metrics["clip_ratio/high_mean"][-1], abs_tol=1e-6
    )
    assert stats["clipfrac"] > 0  # the inputs do exercise the clip
    if beta:
        assert math.isclose(stats["kl"].item(), metrics["kl"][-1], rel_tol=1e-5, abs_tol=1e-6)


def test_ppo_policy_loss_matches_trl_token_level_surrogate():
    pytest.importorskip("trl")
    # TRL 1.16 has no PPOTrainer. Its clipped surrogate with per-token advantages is
    # GRPOTrainer._compute_loss with [B, T] advantages (supported there "for subclasses"),
    # beta = 0 and loss_type="bnpo" (token mean) — the same objective as ppo_policy_loss.
    logps, old, _, mask = _random_rollouts()
    advantages = torch.randn(*logps.shape)
    trl_loss, metrics = _trl_grpo_harness(
        logps,
        old,
        None,
        advantages,
        mask,
        loss_type="bnpo",
        beta=0.0,
        eps_low=0.2,
        eps_high=0.2,
        max_len=None,
    )
    (trl_grad,) = torch.autograd.grad(trl_loss, logps)
    loss, stats = ppo_policy_loss(logps, old, advantages, mask, clip_eps=0.2)
    (our_grad,) = torch.autograd.grad(loss, logps)
    torch.testing.assert_close(loss, trl_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(our_grad, trl_grad, atol=1e-5, rtol=1e-5)
    assert math.isclose(
        stats["clipfrac"].item(), metrics["clip_ratio/region_mean"][-1], abs_tol=1e-6
    )
    # approxkl as in TRL's legacy PPOTrainer: ½·mean((logπ − logπ_old)²), masked here.
    expected = 0.5 * masked_mean((logps.detach() - old) ** 2, mask)
    torch.testing.assert_close(stats["approxkl"], expected)


def test_grpo_kl_term_is_k3():
    logps, _, ref, mask = _random_rollouts()
    _, stats = grpo_loss(logps, None, ref, torch.zeros(6), mask, beta=0.1)
    torch.testing.assert_close(stats["kl"], masked_mean(kl_k3(logps.detach(), ref), mask))
