"""PPO and GRPO on a tiny model with synthetic rewards: they learn, β adapts, the guard
catches a planted reward hack, and a resumed run continues exactly."""

import itertools

import pytest
import torch

from alignkit.errors import UserError
from alignkit.train.grpo import GRPOConfig, GRPOTrainer, segment_ids
from alignkit.train.ppo import PPOConfig, PPOTrainer
from alignkit.train.run_dir import read_jsonl

REWARDS = '''
def letters(prompts, responses):
    """Fraction of lowercase ASCII letters: learnable from random bytes."""
    return [sum(c.isascii() and c.islower() for c in r) / max(len(r), 1) for r in responses]

def words(prompts, responses):
    """A planted hack: pays for every extra word."""
    return [float(len(r.split())) for r in responses]

def concise(prompts, responses):
    """The gold check the hack breaks: fewer words are better."""
    return [-float(len(r.split())) for r in responses]
'''


@pytest.fixture
def rewards(tmp_path):
    path = tmp_path / "rewards.py"
    path.write_text(REWARDS)
    return path


def settings(tmp_path, rewards, reward="letters", **overrides):
    params = dict(
        model="tiny-random-llama",
        dataset="demo",
        output_dir=str(tmp_path / "run"),
        batch_size=8,
        max_new_tokens=16,
        learning_rate=3e-3,
        reward={"reward_functions": [f"{rewards}:{reward}"]},
        report_to_tensorboard=False,
        rollouts_every=10,
        save_every=0,
    )
    params.update(overrides)
    return params


def metrics(cfg):
    return [r for r in read_jsonl(f"{cfg.output_dir}/metrics.jsonl") if "objective/scores" in r]


def mean(rows, key):
    return sum(r[key] for r in rows) / len(rows)


def test_ppo_raises_reward_with_bounded_kl_and_adaptive_beta(tmp_path, rewards):
    cfg = PPOConfig(
        **settings(
            tmp_path,
            rewards,
            max_steps=30,
            ppo_epochs=2,
            num_minibatches=2,
            kl_coef=0.01,
            kl_target=6.0,
            kl_horizon=200,
        )
    )
    result = PPOTrainer(cfg).train()
    rows = metrics(cfg)
    assert result.steps == 30 and len(rows) == 30
    assert mean(rows[-5:], "objective/scores") > mean(rows[:5], "objective/scores") + 0.15
    assert max(r["objective/kl"] for r in rows) < 40
    # The controller moves β toward the target: up after an iteration whose KL was above
    # it, down after one below it (β is logged before that iteration's update).
    moves = [
        (r["objective/kl"] > cfg.kl_target, n["objective/beta"] - r["objective/beta"])
        for r, n in itertools.pairwise(rows)
    ]
    assert all((delta > 0) if above else (delta < 0) for above, delta in moves)
    assert any(above for above, _ in moves) and not all(above for above, _ in moves)
    assert {
        "policy/clipfrac",
        "policy/approxkl",
        "val/loss",
        "val/mean",
        "objective/entropy",
    } <= set(rows[-1])
    rollouts = read_jsonl(f"{cfg.output_dir}/rollouts.jsonl")
    assert rollouts and {"logp", "ref_logp", "kl", "value", "advantage", "entropy"} <= set(
        rollouts[0]["tokens"][0]
    )
    assert (result.model_dir / "critic" / "scalar_head.json").is_file()


def test_grpo_raises_reward_and_reports_user_groups(tmp_path, rewards):
    cfg = GRPOConfig(
        **settings(tmp_path, rewards, max_steps=25, batch_size=4, num_generations=8, kl_coef=0.05)
    )
    GRPOTrainer(cfg).train()
    rows = metrics(cfg)
    assert mean(rows[-5:], "objective/scores") > mean(rows[:5], "objective/scores") + 0.15
    assert max(r["objective/kl"] for r in rows) < 40
    # the demo prompts carry user groups: per-group scores and the gap between them
    assert {"objective/scores/concise", "objective/scores/detailed"} <= set(rows[-1])
    assert "objective/scores/group_gap" in rows[-1]
    rollouts = read_jsonl(f"{cfg.output_dir}/rollouts.jsonl")
    assert len(rollouts[0]["group_scores"]) == 8 and "advantage" in rollouts[0]
    assert {"logp", "ref_logp", "kl", "entropy"} <= set(rollouts[0]["tokens"][0])
    assert all(token["entropy"] > 0 for token in rollouts[0]["tokens"])


def test_rloo_variant_trains(tmp_path, rewards):
    cfg = GRPOConfig(
        **settings(
            tmp_path,
            rewards,
            max_steps=15,
            batch_size=4,
            num_generations=4,
            advantage_estimator="rloo",
            kl_coef=0.0,
        )
    )
    GRPOTrainer(cfg).train()
    rows = metrics(cfg)
    assert mean(rows[-4:], "objective/scores") > mean(rows[:4], "objective/scores")


def test_planted_length_hack_is_caught_and_rolled_back(tmp_path, rewards):
    guard = {
        "policy": "rollback",
        "rollback_beta_factor": 4.0,
        "max_rollbacks": 2,
        "detectors": {
            "length_drift": {
                "metric": "completions/mean_words",
                "max_relative_change": 0.5,
                "baseline_steps": 3,
            },
            "proxy_gold_divergence": {"window_steps": 8},
        },
    }
    cfg = GRPOConfig(
        **settings(
            tmp_path,
            rewards,
            reward="words",
            max_steps=30,
            batch_size=4,
            num_generations=8,
            learning_rate=5e-3,
            kl_coef=0.001,
            save_every=2,
            guard=guard,
            gold_reward={"reward_functions": [f"{rewards}:concise"]},
        )
    )
    result = GRPOTrainer(cfg).train()
    events = read_jsonl(f"{cfg.output_dir}/events.jsonl")
    caught = [e for e in events if e["event"] == "guard"]
    rollbacks = [e for e in events if e["event"] == "rollback"]
    assert caught, "the guard saw nothing"
    assert rollbacks and result.rollbacks >= 1
    assert rollbacks[0]["beta"] >= 4.0 * cfg.kl_coef - 1e-12
    assert rollbacks[0]["to_step"] < rollbacks[0]["step"]


def test_ppo_resume_matches_uninterrupted_run(tmp_path, rewards):
    common = settings(tmp_path, rewards, ppo_epochs=1, num_minibatches=2, kl_target=2.0)
    common["reward"] = {"reward_functions": [f"{rewards}:letters"], "normalize": True}
    full = PPOConfig(**{**common, "output_dir": str(tmp_path / "full"), "max_steps": 6})
    PPOTrainer(full).train()
    half = PPOConfig(
        **{**common, "output_dir": str(tmp_path / "half"), "max_steps": 6, "save_every": 3}
    )
    # stop after 3 iterations by running a shorter job into the same folder
    PPOTrainer(
        PPOConfig(**{**common, "output_dir": str(tmp_path / "half"), "max_steps": 3})
    ).train()
    half.resume = True
    PPOTrainer(half).train()
    a = [r for r in metrics(full)]
    b = [r for r in metrics(half) if r["iteration"] > 3]
    assert [r["iteration"] for r in b] == [4, 5, 6]
    for x, y in zip(a[3:], b, strict=True):
        for key in ("objective/scores", "objective/kl", "objective/beta", "loss"):
            assert x[key] == pytest.approx(y[key], abs=1e-6), key


def test_segment_ids_number_user_segments_in_order_of_first_appearance():
    assert segment_ids(["a", None, "b", "a"]).tolist() == [0, -1, 1, 0]


def test_online_run_needs_a_reward():
    with pytest.raises(UserError, match="reward"):
        from alignkit.options import load_config

        load_config(GRPOConfig, None, ["--dataset", "demo"])


def test_min_new_tokens_above_max_is_one_clear_error():
    from alignkit.options import load_config

    args = ["--dataset", "demo", "--reward-model", "rm", "--max-new-tokens", "8"]
    with pytest.raises(UserError, match="min_new_tokens"):
        load_config(GRPOConfig, None, [*args, "--min-new-tokens", "9"])
    assert load_config(GRPOConfig, None, [*args, "--min-new-tokens", "8"]).min_new_tokens == 8


def test_ppo_ptx_mixes_in_the_sft_loss(tmp_path, rewards):
    cfg = PPOConfig(
        **settings(
            tmp_path,
            rewards,
            max_steps=2,
            ppo_epochs=1,
            num_minibatches=2,
            ptx_dataset="demo",
            ptx_coef=0.5,
            entropy_coef=0.01,
        )
    )
    PPOTrainer(cfg).train()
    last = metrics(cfg)[-1]
    assert last["ptx/loss"] > 0 and "policy/entropy" in last


def test_ppo_critic_with_frozen_bottom_layers_trains_only_above_them(tmp_path, rewards):
    cfg = PPOConfig(**settings(tmp_path, rewards, max_steps=2, critic_frozen_layers=1))
    trainer = PPOTrainer(cfg)
    before = {k: v.clone() for k, v in trainer.critic.state_dict().items()}
    trainer.train()
    after = trainer.critic.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and not any(
        k.startswith(("backbone.layers.0.", "backbone.embed")) for k in changed
    )


def test_held_out_prompts_are_answered_greedily_and_scored(tmp_path, rewards):
    cfg = GRPOConfig(
        **settings(
            tmp_path,
            rewards,
            max_steps=4,
            batch_size=4,
            num_generations=2,
            eval_fraction=0.1,
            eval_every=2,
            gold_reward={"reward_functions": [f"{rewards}:concise"]},
        )
    )
    result = GRPOTrainer(cfg).train()
    evals = [
        r for r in read_jsonl(f"{cfg.output_dir}/metrics.jsonl") if "eval_objective/scores" in r
    ]
    assert [r["step"] for r in evals] == [2, 4]  # optimizer steps after iterations 2 and 4
    assert {
        "eval_gold/score",
        "eval_objective/scores/concise",
        "eval_objective/scores/group_gap",
    } <= set(evals[-1])
    assert result.eval_metrics["eval_objective/scores"] == evals[-1]["eval_objective/scores"]


def test_grpo_folded_old_policy_pass_changes_nothing(tmp_path, rewards, monkeypatch):
    """With μ = 1 and one minibatch the old log-probs come from the update's own forward
    pass; the run must equal one that takes the separate no-grad pass."""
    runs = {}
    for fold in (True, False):
        cfg = GRPOConfig(
            **settings(
                tmp_path / str(fold),
                rewards,
                max_steps=3,
                batch_size=2,
                num_generations=4,
                kl_coef=0.05,
                rollouts_every=1,
            )
        )
        monkeypatch.setattr(GRPOTrainer, "one_update_per_batch", lambda self, f=fold: f)
        trainer = GRPOTrainer(cfg)
        trainer.train()
        params = [p.detach().clone() for p in trainer.engine.unwrapped_model.parameters()]
        rollouts = read_jsonl(f"{cfg.output_dir}/rollouts.jsonl")
        runs[fold] = (metrics(cfg), params, rollouts)
    (folded, p_folded, r_folded), (separate, p_separate, r_separate) = runs[True], runs[False]
    for a, b in zip(folded, separate, strict=True):
        for key in ("objective/kl", "objective/entropy", "objective/rlhf_reward", "loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    for a, b in zip(p_folded, p_separate, strict=True):
        assert (a - b).abs().max() < 1e-5
    assert [r["response"] for r in r_folded] == [r["response"] for r in r_separate]
    assert r_folded[0]["tokens"][0]["logp"] == pytest.approx(
        r_separate[0]["tokens"][0]["logp"], abs=1e-5
    )


def test_critic_learning_rate_is_its_own_and_survives_a_rollback(tmp_path, rewards):
    """`critic_learning_rate` gives the critic's parameters their own peak learning rate;
    a guard rollback scales both rates by the same factor."""
    cfg = PPOConfig(
        **settings(
            tmp_path,
            rewards,
            max_steps=2,
            batch_size=4,
            learning_rate=1e-3,
            critic_learning_rate=4e-3,
        )
    )
    trainer = PPOTrainer(cfg)
    trainer.train()
    module = trainer.engine.unwrapped_model
    critic = {id(p) for p in module.critic.parameters()}
    rates = {
        (id(p) in critic): group["initial_lr"]
        for group in trainer.engine.optimizer.param_groups
        for p in group["params"]
    }
    assert rates == {False: 1e-3, True: 4e-3}
    trainer.engine.save_checkpoint()
    from alignkit.guard import GuardDecision

    trainer.loop.rollback(
        GuardDecision(
            "rollback",
            rollback_to=trainer.engine.state.step,
            beta_factor=1.0,
            lr_scale=0.5,
            reason="test",
        )
    )
    peaks = sorted(set(trainer.engine.scheduler.base_lrs))
    assert peaks == [5e-4, 2e-3]


def test_grpo_with_a_time_budget_fixes_its_iterations_and_schedule(tmp_path, rewards, monkeypatch):
    """An online run under --time-budget: iterations measured, then fixed; the schedule is
    laid out over them. Time is a fake clock: 5 s an iteration (one update each)."""
    from alignkit.train.engine import Engine

    start = Engine.start_time_budget

    def with_fake_clock(engine, *args, **kwargs):
        engine.run.elapsed = lambda: 5.0 * engine.state.step
        return start(engine, *args, **kwargs)

    monkeypatch.setattr(Engine, "start_time_budget", with_fake_clock)
    cfg = GRPOConfig(
        **settings(
            tmp_path,
            rewards,
            batch_size=2,
            num_generations=2,
            time_budget="100s",
            lr_scheduler="linear",
        )
    )
    result = GRPOTrainer(cfg).train()
    # fixed after iteration 4 (20 s gone, 5 s margin): 4 + floor(75 / 5) = 19 iterations
    assert result.steps == 19 and result.optimizer_steps == 19
    rows = metrics(cfg)
    assert rows[-1]["iteration"] == 19 and rows[-1]["lr"] < 0.1 * cfg.learning_rate
    events = [
        e for e in read_jsonl(f"{cfg.output_dir}/events.jsonl") if e["event"] == "time_budget"
    ]
    assert events[0]["units"] == 19 and events[0]["unit"] == "iterations"


@pytest.mark.parametrize("trainer", ["ppo", "grpo"])
def test_a_lora_run_writes_a_plain_model_folder(tmp_path, rewards, trainer):
    """Under LoRA, `model/` holds the merged policy (like SFT and DPO): it loads by name and
    answers exactly like the trained adapter, so `alignkit eval` and the next stage take it."""
    import torch

    from alignkit.models import load_causal_lm

    options = settings(tmp_path, rewards, max_steps=2, batch_size=2, use_lora=True)
    if trainer == "ppo":
        trained = PPOTrainer(PPOConfig(**options))
    else:
        trained = GRPOTrainer(GRPOConfig(**options, num_generations=2))
    result = trained.train()
    model, tokenizer = load_causal_lm(str(result.model_dir))
    ids = tokenizer("hello there", return_tensors="pt")["input_ids"]
    trained.policy.eval()  # no LoRA dropout
    with torch.no_grad():
        expected = trained.policy(input_ids=ids).logits
        assert torch.allclose(model(input_ids=ids).logits, expected, atol=1e-4)
