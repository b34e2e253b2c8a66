import math

import pytest
import torch

from alignkit.ops import (
    gae,
    group_normalized_advantages,
    kl_penalized_rewards,
    rloo_advantages,
    segment_weights,
)

# ---------------------------------------------------------------------------- per-token rewards


def test_kl_penalized_rewards_put_the_score_on_the_last_response_token():
    # β = 0.5; row 0 right-padded (response at 1..2), row 1 left-padded (response at 2..3).
    kl = torch.tensor([[0.0, 0.2, 0.4, 0.0], [0.0, 0.0, 1.0, -0.2]])
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]])
    scores = torch.tensor([2.0, -1.0])
    rewards = kl_penalized_rewards(scores, kl, mask, beta=0.5)
    expected = torch.tensor([[0.0, -0.1, -0.2 + 2.0, 0.0], [0.0, 0.0, -0.5, 0.1 - 1.0]])
    torch.testing.assert_close(rewards, expected)
    # Σ_t r_t = score − β·Σ_t KL_t, the objective each episode contributes
    torch.testing.assert_close(rewards.sum(1), scores - 0.5 * kl.sum(1))
    assert kl[0, 2] == 0.4  # the KL tensor is not written into


# ---------------------------------------------------------------------------- user segments


def test_segment_weights_favour_the_lagging_segment():
    scores = torch.tensor([1.0, 1.0, 0.0, 0.0])
    segments = torch.tensor([0, 0, 1, 1])
    weights = segment_weights(scores, segments, strength=1.0)
    assert weights[2] > weights[0] and torch.isclose(weights.mean(), torch.tensor(1.0))
    assert torch.equal(segment_weights(scores, segments, 0.0), torch.ones(4))


def test_segment_weights_hand_computed_with_rows_outside_any_segment():
    # r̄ = 0.5, σ = std([1, 0, 0.5]) = 0.5; segment 0 (r̄_0 = 1): exp(−1); segment 1: exp(1).
    scores = torch.tensor([1.0, 0.0, 0.5])
    weights = segment_weights(scores, torch.tensor([0, 1, -1]), strength=1.0)
    raw = torch.tensor([math.exp(-1.0), math.exp(1.0), 1.0])
    torch.testing.assert_close(weights, raw / raw.mean())
    assert torch.equal(segment_weights(scores, torch.tensor([-1, -1, -1]), 1.0), torch.ones(3))


# ---------------------------------------------------------------------------- GAE


def test_gae_hand_computed():
    # γ = 0.9, λ = 0.8, V past the end = 0:
    # δ2 = 1 − 0.7 = 0.3                 A2 = 0.3
    # δ1 = 0.9·0.7 − 0.6 = 0.03          A1 = 0.03 + 0.72·0.3   = 0.246
    # δ0 = 0.9·0.6 − 0.5 = 0.04          A0 = 0.04 + 0.72·0.246 = 0.21712
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, torch.tensor([[0.21712, 0.246, 0.3]]))
    torch.testing.assert_close(ret, torch.tensor([[0.71712, 0.846, 1.0]]))


def test_gae_skips_padding_and_gaps():
    expected_adv = torch.tensor([0.21712, 0.246, 0.3])
    # Right padding with garbage rewards/values: ignored, and the bootstrap past the last
    # response token is 0 (not the value of the pad position).
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0, 5.0]])
    values = torch.tensor([[0.5, 0.6, 0.7, 9.0, float("nan")]])
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv[0, :3], expected_adv)
    assert (adv[0, 3:] == 0).all() and (ret[0, 3:] == 0).all()
    # Left padding and a masked gap inside the response (e.g. tool output) are passed through.
    rewards = torch.tensor([[7.0, 0.0, 3.0, 0.0, 1.0]])
    values = torch.tensor([[9.0, 0.5, 99.0, 0.6, 0.7]])
    mask = torch.tensor([[0, 1, 0, 1, 1]])
    adv, _ = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv[0, [1, 3, 4]], expected_adv)
    assert adv[0, 0] == 0 and adv[0, 2] == 0


def test_gae_lambda_one_gamma_one_gives_reward_to_go():
    rewards = torch.randn(3, 6)
    values = torch.randn(3, 6)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False
    rewards_kept = rewards * mask
    reward_to_go = rewards_kept.flip(-1).cumsum(-1).flip(-1) * mask
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(ret, reward_to_go)
    torch.testing.assert_close(adv, (reward_to_go - values) * mask)


def test_gae_lambda_zero_is_one_step_td():
    rewards = torch.randn(2, 4)
    values = torch.randn(2, 4)
    next_values = torch.cat([values[:, 1:], torch.zeros(2, 1)], dim=1)
    adv, _ = gae(rewards, values, torch.ones(2, 4), gamma=0.95, lam=0.0)
    torch.testing.assert_close(adv, rewards + 0.95 * next_values - values)


def test_gae_matches_legacy_trl_ppo_loop():
    # Reproduces the GAE loop of TRL's legacy PPOTrainer (trl/trainer/ppo_trainer.py before it
    # moved to trl.experimental and then out of TRL 1.x): right-padded responses, values and
    # rewards zeroed on padding, V past the end = 0.
    rewards = torch.randn(4, 7)
    values = torch.randn(4, 7)
    lengths = torch.tensor([7, 5, 1, 3])
    mask = torch.arange(7)[None] < lengths[:, None]
    rewards, values = rewards * mask, values * mask
    gamma, lam = 0.99, 0.95

    lastgaelam = 0
    advantages_reversed = []
    gen_length = rewards.shape[1]
    for t in reversed(range(gen_length)):
        nextvalues = values[:, t + 1] if t < gen_length - 1 else 0.0
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        advantages_reversed.append(lastgaelam)
    trl_adv = torch.stack(advantages_reversed[::-1], dim=1)
    trl_ret = trl_adv + values

    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    torch.testing.assert_close(adv, trl_adv * mask, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ret, trl_ret * mask, atol=1e-5, rtol=1e-5)


def test_gae_does_not_propagate_gradients():
    values = torch.randn(1, 3, requires_grad=True)
    adv, ret = gae(torch.randn(1, 3), values, torch.ones(1, 3))
    assert not adv.requires_grad and not ret.requires_grad


# ---------------------------------------------------------------------------- group baselines


def test_group_normalized_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    # Group 1: mean 0.5, unbiased std sqrt(1/3); group 2: constant → 0.
    std = math.sqrt(1 / 3)
    a = 0.5 / (std + 1e-4)
    torch.testing.assert_close(
        group_normalized_advantages(rewards, 4), torch.tensor([a, -a, -a, a, 0, 0, 0, 0])
    )
    # Dr. GRPO: centring only.
    torch.testing.assert_close(
        group_normalized_advantages(rewards, 4, scale_by_std=False),
        torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]),
    )
    torch.testing.assert_close(group_normalized_advantages(rewards, 1), torch.zeros(8))


@pytest.mark.parametrize("scale_by_std", [True, False])
def test_group_advantages_zero_mean_per_group(scale_by_std):
    rewards = torch.randn(24)
    adv = group_normalized_advantages(rewards, 6, scale_by_std=scale_by_std)
    torch.testing.assert_close(adv.view(-1, 6).mean(1), torch.zeros(4), atol=1e-6, rtol=0)
    if scale_by_std:
        stds = adv.view(-1, 6).std(1)
        torch.testing.assert_close(stds, torch.ones(4), atol=1e-3, rtol=0)


def test_rloo_hand_computed():
    rewards = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 6.0])
    # Group 1 baselines: 2.5, 2, 1.5. Group 2 baselines: 3, 3, 0.
    torch.testing.assert_close(
        rloo_advantages(rewards, 3), torch.tensor([-1.5, 0.0, 1.5, -3.0, -3.0, 6.0])
    )


def test_rloo_is_scaled_centring_and_zero_mean():
    rewards = torch.randn(20)
    k = 5
    adv = rloo_advantages(rewards, k)
    centred = group_normalized_advantages(rewards, k, scale_by_std=False)
    torch.testing.assert_close(adv, centred * k / (k - 1))
    torch.testing.assert_close(adv.view(-1, k).mean(1), torch.zeros(4), atol=1e-6, rtol=0)


def test_group_shape_errors():
    with pytest.raises(ValueError):
        group_normalized_advantages(torch.zeros(7), 4)
    with pytest.raises(ValueError):
        rloo_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError):
        rloo_advantages(torch.zeros(2, 2), 2)


# ---------------------------------------------------------------------------- TRL 1.16.0 parity


@pytest.mark.parametrize("scale_rewards", ["group", "none"])
def test_group_advantages_match_trl_grpo(scale_rewards):
    pytest.importorskip("trl")
    from trl.trainer.utils import nanstd

    # Exact lines of trl/trainer/grpo_trainer.py::GRPOTrainer._generate_and_score_completions
    # (advantage block, scale_rewards in {"group", "none"}); the method itself needs generation.
    num_generations = 4
    rewards = torch.randn(16)
    rewards[4:8] = 1.0  # a zero-std group
    mean_grouped_rewards = torch.nanmean(rewards.view(-1, num_generations), dim=1)
    mean_grouped_rewards = mean_grouped_rewards.repeat_interleave(num_generations, dim=0)
    std_rewards = nanstd(rewards.view(-1, num_generations), dim=1)
    std_rewards = std_rewards.repeat_interleave(num_generations, dim=0)
    advantages = rewards - mean_grouped_rewards
    if scale_rewards != "none":
        advantages = advantages / (std_rewards + 1e-4)

    ours = group_normalized_advantages(
        rewards, num_generations, scale_by_std=scale_rewards != "none"
    )
    torch.testing.assert_close(ours, advantages, atol=1e-5, rtol=1e-5)


def test_rloo_matches_trl_rloo():
    pytest.importorskip("trl")
    # Exact lines of trl/trainer/rloo_trainer.py::RLOOTrainer._generate_and_score_completions
    # (leave-one-out baseline, all rewards scorable, normalize_advantages=False).
    num_generations = 3
    rewards = torch.randn(12)
    grouped_rewards = rewards.view(-1, num_generations)
    scorable_counts = (~torch.isnan(grouped_rewards)).sum(dim=1, keepdim=True)
    grouped_sum = torch.nansum(grouped_rewards, dim=1, keepdim=True)
    baselines = (grouped_sum - grouped_rewards) / (scorable_counts - 1)
    advantages = rewards - baselines.view(-1)
    torch.testing.assert_close(rloo_advantages(rewards, num_generations), advantages)
