"""Each offline trainer learns on a small task with a tiny random model."""

import json
import math
import random

import pytest
import torch

from alignkit.models import load_scalar_model
from alignkit.train.dpo import DPOConfig, DPOTrainer
from alignkit.train.reward import RewardConfig, RewardTrainer
from alignkit.train.run_dir import read_jsonl
from alignkit.train.sft import SFTConfig, SFTTrainer

GOOD = "abcdefgh"
BAD = "01234567"


def _text(rng, alphabet, n):
    return " ".join("".join(rng.choice(alphabet) for _ in range(3)) for _ in range(n))


def write_preferences(path, n=96, seed=0):
    """Separable pairs: chosen answers use letters, rejected ones digits; two groups."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            row = {
                "prompt": f"q{_text(rng, 'xyz', 2)}?",
                "chosen": _text(rng, GOOD, rng.randint(2, 4)),
                "rejected": _text(rng, BAD, rng.randint(2, 4)),
                "group": "even" if i % 2 == 0 else "odd",
            }
            f.write(json.dumps(row) + "\n")
    return path


def write_sft(path, n=64, seed=0):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            word = _text(rng, GOOD, 1)
            f.write(json.dumps({"prompt": f"repeat {word}", "completion": f"{word} {word}"}) + "\n")
    return path


def common(tmp_path, data, **overrides):
    params = dict(
        model="tiny-random-llama",
        dataset=str(data),
        output_dir=str(tmp_path / "run"),
        eval_fraction=0.25,
        batch_size=8,
        gradient_accumulation_steps=1,
        warmup_ratio=0.0,
        lr_scheduler="constant",
        log_every=5,
        eval_every=0,
        save_every=0,
        max_length=64,
        max_prompt_length=32,
        report_to_tensorboard=False,
    )
    params.update(overrides)
    return params


def eval_records(output_dir):
    return [
        r
        for r in read_jsonl(f"{output_dir}/metrics.jsonl")
        if any(k.startswith("eval_") for k in r)
    ]


def test_reward_model_separates_synthetic_preferences(tmp_path):
    data = write_preferences(tmp_path / "prefs.jsonl")
    cfg = RewardConfig(**common(tmp_path, data, max_steps=40, learning_rate=1e-3))
    result = RewardTrainer(cfg).train()
    first, last = eval_records(cfg.output_dir)[0], eval_records(cfg.output_dir)[-1]
    assert first["step"] == 0 and last["step"] == 40
    assert last["eval_accuracy"] > 0.9, last
    assert "eval_accuracy/even" in last and "eval_accuracy/group_gap" in last
    # The saved folder is a reward model again, scoring like the trained one.
    model, _ = load_scalar_model(str(result.model_dir))
    assert model.kind == "reward"


def test_reward_model_with_a_frozen_trunk_learns_and_leaves_the_trunk_alone(tmp_path):
    data = write_preferences(tmp_path / "prefs.jsonl")
    cfg = RewardConfig(**common(tmp_path, data, max_steps=40, learning_rate=1e-3), frozen_layers=1)
    trainer = RewardTrainer(cfg)
    before = {k: v.clone() for k, v in trainer.model.backbone.state_dict().items()}
    result = trainer.train()
    assert eval_records(cfg.output_dir)[-1]["eval_accuracy"] > 0.9
    after = load_scalar_model(str(result.model_dir))[0].backbone.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("layers.1.", "norm.")) for k in changed), changed


def test_frozen_trunk_scores_equal_the_full_forward():
    from alignkit.models.heads import ScalarHeadModel, score_from_trunk, trunk_states
    from alignkit.models.tiny import tiny_random_llama

    lm, tok = tiny_random_llama(seed=3)
    model = ScalarHeadModel.from_causal_lm(lm).eval()
    sequences = [tok.encode("hello there"), tok.encode("a much longer text to score"), [5]]
    states = trunk_states(model, sequences, 1)
    length = max(len(s) for s in sequences)
    padded = torch.zeros(3, length, states[0].shape[1])
    mask = torch.zeros(3, length, dtype=torch.long)
    ids = torch.zeros(3, length, dtype=torch.long)
    for i, s in enumerate(sequences):
        padded[i, : len(s)], mask[i, : len(s)], ids[i, : len(s)] = states[i], 1, torch.tensor(s)
    with torch.no_grad():
        torch.testing.assert_close(
            score_from_trunk(model, padded, mask, 1), model.score(ids, mask), atol=1e-5, rtol=1e-4
        )


def test_dpo_widens_held_out_margin(tmp_path):
    data = write_preferences(tmp_path / "prefs.jsonl")
    cfg = DPOConfig(**common(tmp_path, data, max_steps=30, learning_rate=5e-4, beta=0.1))
    DPOTrainer(cfg).train()
    evals = eval_records(cfg.output_dir)
    first, last = evals[0], evals[-1]
    assert first["step"] == 0 and abs(first["eval_rewards/margins"]) < 1e-4  # policy == reference
    assert last["eval_rewards/margins"] > first["eval_rewards/margins"] + 0.5, (first, last)
    assert last["eval_rewards/accuracies"] > 0.8
    train = [r for r in read_jsonl(f"{cfg.output_dir}/metrics.jsonl") if "rewards/margins" in r]
    assert {"rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"} <= set(
        train[-1]
    )


@pytest.mark.parametrize("loss_type", ["ipo", "simpo"])
def test_dpo_variants_train(tmp_path, loss_type):
    data = write_preferences(tmp_path / "prefs.jsonl", n=48)
    cfg = DPOConfig(**common(tmp_path, data, max_steps=15, learning_rate=5e-4, loss_type=loss_type))
    DPOTrainer(cfg).train()
    evals = eval_records(cfg.output_dir)
    assert evals[-1]["eval_rewards/margins"] > evals[0]["eval_rewards/margins"]


def test_dpo_with_lora_uses_adapter_free_reference(tmp_path):
    data = write_preferences(tmp_path / "prefs.jsonl", n=48)
    cfg = DPOConfig(
        **common(
            tmp_path,
            data,
            max_steps=15,
            learning_rate=5e-3,
            use_lora=True,
            lora_r=8,
            lora_target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
        )
    )
    result = DPOTrainer(cfg).train()
    evals = eval_records(cfg.output_dir)
    assert evals[-1]["eval_rewards/margins"] > evals[0]["eval_rewards/margins"]
    assert (result.model_dir / "config.json").is_file()  # merged: loadable by name


def test_sft_lowers_held_out_loss(tmp_path):
    data = write_sft(tmp_path / "sft.jsonl")
    cfg = SFTConfig(**common(tmp_path, data, max_steps=30, learning_rate=2e-3))
    SFTTrainer(cfg).train()
    evals = eval_records(cfg.output_dir)
    assert evals[-1]["eval_loss"] < 0.7 * evals[0]["eval_loss"], (evals[0], evals[-1])


def test_dpo_trains_in_bfloat16(tmp_path):
    data = write_preferences(tmp_path / "prefs.jsonl", n=24)
    cfg = DPOConfig(**common(tmp_path, data, max_steps=3, learning_rate=5e-4, dtype="bfloat16"))
    result = DPOTrainer(cfg).train()
    assert result.nonfinite_skips == 0
    assert math.isfinite(result.train_metrics["loss"])


def test_sft_with_packing_trains(tmp_path):
    data = write_sft(tmp_path / "sft.jsonl", n=32)
    cfg = SFTConfig(**common(tmp_path, data, max_steps=3, learning_rate=1e-3, packing=True))
    result = SFTTrainer(cfg).train()
    assert math.isfinite(result.train_metrics["loss"])


def test_packed_sft_examples_do_not_see_each_other():
    """A packed block scores each example exactly as that example alone: no attention
    across the seam (position ids restart, and so must the attention)."""
    from alignkit.data import SFTCollator, SFTExample, pack_sequences, tokenize_sft
    from alignkit.models import tiny_random_llama
    from alignkit.train.sft import sft_batch_loss

    model, tok = tiny_random_llama(seed=7)
    feats = [tokenize_sft(SFTExample("q" * n, "answer " * n), tok) for n in (2, 3, 1)]
    collate = SFTCollator(tok.pad_token_id)
    packed = collate(pack_sequences(feats, max_length=200))
    assert packed["input_ids"].shape[0] == 1  # one block holds all three
    alone = [sft_batch_loss(model, collate([f])) for f in feats]
    # sum of per-token losses: the block's mean × its tokens = Σ each example's mean × tokens
    expected = sum(loss * m["num_tokens"] for loss, m in alone)
    expected_tokens = sum(m["num_tokens"] for _, m in alone)
    loss, metrics = sft_batch_loss(model, packed)
    # pack_sequences masks each example's first label; alone, the first label is a prompt
    # token (masked too), so the labelled tokens are the same
    assert metrics["num_tokens"] == expected_tokens
    assert torch.allclose(loss * metrics["num_tokens"], expected, atol=1e-4)


@pytest.mark.parametrize("kind", ["dpo", "rm"])
def test_gradient_checkpointing_changes_memory_not_results(tmp_path, kind):
    """Activation checkpointing recomputes each layer in the backward pass (the packed,
    prompt-sharing attention included): same losses and the same weights after training."""
    data = write_preferences(tmp_path / "prefs.jsonl", n=24)
    trainer_cls, config_cls = {"dpo": (DPOTrainer, DPOConfig), "rm": (RewardTrainer, RewardConfig)}[
        kind
    ]
    runs = {}
    for on in (False, True):
        cfg = config_cls(
            **common(
                tmp_path / str(on),
                data,
                max_steps=3,
                learning_rate=1e-3,
                log_every=1,
                gradient_checkpointing=on,
            )
        )
        trainer = trainer_cls(cfg)
        trainer.train()
        assert (
            any(getattr(m, "is_gradient_checkpointing", False) for m in trainer.model.modules())
            == on
        )
        losses = [r["loss"] for r in read_jsonl(f"{cfg.output_dir}/metrics.jsonl") if "loss" in r]
        runs[on] = (losses, [p.detach().clone() for p in trainer.model.parameters()])
    (losses_off, params_off), (losses_on, params_on) = runs[False], runs[True]
    assert losses_on == pytest.approx(losses_off, abs=1e-5)
    for a, b in zip(params_off, params_on, strict=True):
        assert (a - b).abs().max() < 1e-5
