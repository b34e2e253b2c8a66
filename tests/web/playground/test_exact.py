"""The exact world's steps are alignkit's functions: each step is recomputed here by
calling alignkit.ops and the KL controller directly, and must match. And the story the
page tells must hold: at a small β the policy hacks the proxy, a large β holds it back."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.guard.kl_controllers import AdaptiveKLController
from alignkit.ops.advantages import gae, group_normalized_advantages, kl_penalized_rewards
from alignkit.ops.kl_estimators import kl_from_logits, kl_k1
from alignkit.ops.losses import dpo_loss, grpo_loss, ppo_policy_loss, ppo_value_loss
from alignkit.web.playground import exact


def moved_state(seed: int = 3) -> exact.State:
    """A policy away from the reference, so that every term of the losses is non-trivial."""
    logits = exact.reference_logits() + torch.randn(
        6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    return exact.State(logits.tolist(), value=0.4, step=7)


def sgd(logits: torch.Tensor, loss_of, lr: float) -> torch.Tensor:
    theta = logits.clone().requires_grad_(True)
    loss_of(theta).backward()
    return (theta - lr * theta.grad).detach()


def test_a_dpo_step_is_the_library_dpo_loss_and_one_sgd_step():
    settings = exact.Settings(method="dpo", beta=0.3, learning_rate=2.0, label_noise=0.2)
    state = moved_state()
    result = exact.step(state, settings)
    winners = [w for w, _ in result.trace["pairs"]]
    losers = [lo for _, lo in result.trace["pairs"]]
    assert all(w != lo for w, lo in result.trace["pairs"])
    ref = torch.log_softmax(exact.reference_logits(), -1)

    def loss(theta):
        logp = torch.log_softmax(theta, -1)
        losses, _, _ = dpo_loss(logp[winners], logp[losers], ref[winners], ref[losers], beta=0.3)
        return losses.mean()

    expected = sgd(state.tensor(), loss, 2.0)
    assert torch.allclose(torch.tensor(result.state.logits, dtype=torch.float64), expected)
    assert result.trace["loss"] == pytest.approx(float(loss(state.tensor())))


def test_a_ppo_step_is_the_kl_penalised_reward_gae_and_the_clipped_losses():
    settings = exact.Settings(method="ppo", beta=0.2, learning_rate=0.7, clip_eps=0.1, ppo_epochs=3)
    state = moved_state()
    result = exact.step(state, settings)
    samples = torch.tensor(result.trace["samples"])
    logits, ref = state.tensor(), torch.log_softmax(exact.reference_logits(), -1)
    old = torch.log_softmax(logits, -1)[samples].unsqueeze(1)
    mask = torch.ones_like(old, dtype=torch.bool)
    kl = kl_k1(old, ref[samples].unsqueeze(1))
    scores = exact.proxy_rewards(settings.proxy_flaw)[samples]
    rewards = kl_penalized_rewards(scores, kl, mask, 0.2)
    values = torch.full_like(old, state.value)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    theta = logits.clone().requires_grad_(True)
    v = torch.tensor(state.value, dtype=torch.float64, requires_grad=True)
    for _ in range(3):
        logp = torch.log_softmax(theta, -1)[samples].unsqueeze(1)
        policy_loss, _ = ppo_policy_loss(logp, old, advantages, mask, clip_eps=0.1)
        value_loss, _ = ppo_value_loss(v.expand_as(old), values, returns, mask, clip_range=None)
        theta.grad, v.grad = None, None
        (policy_loss + value_loss).backward()
        with torch.no_grad():
            theta -= 0.7 * theta.grad
            v -= 0.7 * v.grad
    assert torch.allclose(torch.tensor(result.state.logits, dtype=torch.float64), theta.detach())
    assert result.state.value == pytest.approx(float(v.detach()))
    assert result.trace["advantages"] == pytest.approx(advantages.squeeze(1).tolist())


def test_a_grpo_step_is_the_group_advantages_and_the_grpo_loss():
    settings = exact.Settings(method="grpo", beta=0.4, learning_rate=0.9, group_size=6)
    state = moved_state()
    result = exact.step(state, settings)
    samples = torch.tensor(result.trace["samples"])
    assert len(samples) == 6
    ref = torch.log_softmax(exact.reference_logits(), -1)[samples].unsqueeze(1)
    scores = exact.proxy_rewards(settings.proxy_flaw)[samples]
    advantages = group_normalized_advantages(scores, 6)

    def loss(theta):
        logp = torch.log_softmax(theta, -1)[samples].unsqueeze(1)
        value, _ = grpo_loss(
            logp,
            None,
            ref,
            advantages,
            torch.ones_like(logp, dtype=torch.bool),
            clip_eps=0.2,
            beta=0.4,
        )
        return value

    expected = sgd(state.tensor(), loss, 0.9)
    assert torch.allclose(torch.tensor(result.state.logits, dtype=torch.float64), expected)


def test_adaptive_beta_is_the_library_controller_fed_the_exact_kl():
    settings = exact.Settings(
        method="ppo", beta=0.05, adaptive_beta=True, kl_target=0.1, kl_horizon=40
    )
    state = moved_state()
    state.beta = 0.08
    result = exact.step(state, settings)
    assert result.trace["beta_used"] == 0.08
    new_logits = torch.tensor(result.state.logits, dtype=torch.float64)
    kl = float(kl_from_logits(new_logits[None], exact.reference_logits()[None])[0])
    expected = AdaptiveKLController(0.08, 0.1, 40).update(kl, settings.batch_size)
    assert result.state.beta == pytest.approx(expected) and result.metrics["kl"] == pytest.approx(
        kl
    )


def test_same_seed_same_samples_so_beta_alone_changes_the_outcome():
    small = exact.run(exact.initial_state(), exact.Settings(beta=0.05), 20)
    again = exact.run(exact.initial_state(), exact.Settings(beta=0.05), 20)
    large = exact.run(exact.initial_state(), exact.Settings(beta=1.0), 20)
    assert small[-1].state.logits == again[-1].state.logits
    assert small[0].trace["samples"] == large[0].trace["samples"]  # the same first draw
    assert small[-1].state.logits != large[-1].state.logits


@pytest.mark.parametrize(
    "method,lr,steps", [("ppo", 0.5, 100), ("grpo", 0.5, 100), ("dpo", 5.0, 200)]
)
def test_small_beta_hacks_the_proxy_and_a_large_beta_holds_gold(method, lr, steps):
    start = exact.world(exact.Settings())["metrics"]
    small = exact.run(
        exact.initial_state(), exact.Settings(method=method, beta=0.05, learning_rate=lr), steps
    )[-1].metrics
    large = exact.run(
        exact.initial_state(), exact.Settings(method=method, beta=1.0, learning_rate=lr), steps
    )[-1].metrics
    padded = [a.key for a in exact.ANSWERS].index("padded")
    assert small["probs"][padded] > 0.8  # the policy ran to the padded answer
    assert small["proxy"] > start["proxy"] + 1.0 and small["gold"] < start["gold"] - 0.1
    assert large["gold"] > small["gold"] + 0.25 and large["kl"] < small["kl"]


def test_the_adaptive_controller_rescues_a_small_beta_in_ppo():
    settings = exact.Settings(method="ppo", beta=0.05, adaptive_beta=True, kl_target=0.3)
    last = exact.run(exact.initial_state(), settings, 200)[-1].metrics
    fixed = exact.run(exact.initial_state(), exact.Settings(method="ppo", beta=0.05), 200)[
        -1
    ].metrics
    assert last["beta"] > 0.5 and last["gold"] > fixed["gold"] + 0.4


def test_a_flawless_proxy_is_the_gold_reward():
    assert torch.equal(exact.proxy_rewards(0.0), exact.gold_rewards())
    helpful = [a.key for a in exact.ANSWERS].index("helpful")
    last = exact.run(exact.initial_state(), exact.Settings(beta=0.05, proxy_flaw=0.0), 150)[-1]
    assert last.metrics["probs"][helpful] > 0.8


@pytest.mark.parametrize(
    "bad", [{"beta": 0}, {"clip_eps": 1.5}, {"label_noise": 0.7}, {"method": "sft"}]
)
def test_settings_out_of_range_are_refused(bad):
    with pytest.raises(ValueError):
        exact.Settings(**bad)


def test_each_method_offers_only_learning_rates_that_converge():
    """PPO's critic update v ← v − lr·(v − R) overshoots past lr = 2 (issue 26, item 6):
    the offered range stops below it, and a rate past a method's range is one clear error."""
    for method, (_low, high) in exact.LEARNING_RATES.items():
        for seed in range(3):
            for epochs in (1, 4, 8):
                settings = exact.Settings(
                    method=method, learning_rate=high, seed=seed, ppo_epochs=epochs
                )
                last = exact.run(exact.initial_state(), settings, 200)[-1].state
                assert all(math.isfinite(x) for x in [*last.logits, last.value]), method
    with pytest.raises(ValueError, match=r"learning_rate for ppo must be in \(0, 1.5\]"):
        exact.Settings(method="ppo", learning_rate=20)


def test_a_run_that_diverges_stops_at_its_last_finite_step():
    settings = exact.Settings(method="ppo", learning_rate=1.0)
    settings.learning_rate = 20.0  # past the offered range, as a bug or an old page might
    with pytest.raises(exact.Diverged) as stopped:
        exact.run(exact.initial_state(), settings, 300)
    finished = stopped.value.results
    assert finished and all(math.isfinite(x) for r in finished for x in r.state.logits)
    assert "diverged at step" in str(stopped.value) and "learning rate" in str(stopped.value)
