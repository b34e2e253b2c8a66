"""Policies compared on held-out prompts with a rule-based judge, on tiny random models."""

import pytest
import torch

from alignkit.data import demo_path, load_dataset_records
from alignkit.eval.compare import Policy, compare_policies
from alignkit.eval.kl_to_reference import sequence_kl
from alignkit.eval.text_stats import distinct_n_over, text_figures
from alignkit.models.tiny import tiny_random_llama
from alignkit.rewards.base import RewardOutput
from alignkit.rollout.sampling import SamplingConfig


def lowercase_share(prompts, responses):
    return RewardOutput(
        torch.tensor([sum(c.islower() for c in r) / max(len(r), 1) for r in responses])
    )


def test_text_figures_hand_computed():
    texts = ["the cat sat", "the cat ran", "I can't help with that"]
    # unigrams: the cat sat the cat ran i can't help with that → 11, unique 9
    assert distinct_n_over(texts, 1) == pytest.approx(9 / 11)
    figures = text_figures(texts)
    assert figures["mean_length"] == pytest.approx(11 / 3)
    assert figures["evasion_rate"] == pytest.approx(1 / 3)
    assert figures["repetition_rate"] == 0.0
    assert text_figures(["paris paris paris paris"])["repetition_rate"] == pytest.approx(2 / 3)


def test_compare_policies_on_tiny_models():
    a, tokenizer = tiny_random_llama(seed=0)
    b, _ = tiny_random_llama(seed=1)
    prompts = load_dataset_records(demo_path("prompt"), "prompt")[:10]
    result = compare_policies(
        {"a": Policy(a, tokenizer), "b": Policy(b, tokenizer)},
        prompts,
        judge=lowercase_share,
        baselines=["a"],
        reward_fn=lowercase_share,
        reference=a,
        sampling=SamplingConfig(max_new_tokens=8),
        batch_size=4,
    )
    assert result["prompts"] == 10 and result["baselines"] == ["a"]
    a_fig, b_fig = result["methods"]["a"], result["methods"]["b"]
    # against itself every prompt is a tie: the bootstrap's interval is that one point
    assert (a_fig["win_rate"], a_fig["ties"]) == (0.5, 10)
    assert a_fig["win_rate_low"] == 0.5 == a_fig["win_rate_high"]
    # the reference's own KL is 0; another model's is positive
    assert a_fig["kl"] == pytest.approx(0.0, abs=1e-6) and b_fig["kl"] > 0
    assert b_fig["kl_per_token"] > 0
    assert b_fig["wins"] + b_fig["ties"] + b_fig["losses"] == 10
    assert b_fig["gold"] == pytest.approx(b_fig["reward"])
    # the demo prompts carry user groups: every figure per group, and the gap
    assert {"concise", "detailed"} <= set(b_fig["per_group"])
    assert {"gold", "win_rate", "kl"} <= set(b_fig["per_group"]["concise"])
    assert set(b_fig["group_gap"]) == {"gold", "win_rate", "mean_length"}
    assert set(result["answers"][0]) >= {"prompt", "group", "a", "b"}


def test_sequence_kl_of_identical_models_is_zero_and_sums_the_response_positions():
    from alignkit.rollout.sampling import sample
    from alignkit.rollout.sequences import right_padded_sequences

    a, tokenizer = tiny_random_llama(seed=0)
    b, _ = tiny_random_llama(seed=2)
    rollout = sample(
        a, tokenizer, ["hello", "a longer prompt here"], SamplingConfig(max_new_tokens=5), seed=1
    )
    seqs = right_padded_sequences(rollout, tokenizer.pad_token_id, tokenizer.eos_token_id)
    kl, n = sequence_kl(a, a, seqs)
    assert torch.allclose(kl, torch.zeros(2), atol=1e-6)
    assert n.tolist() == rollout.response_mask.sum(1).tolist()
    kl_b, _ = sequence_kl(a, b, seqs)
    assert (kl_b > 0).all()


def test_baselines_must_be_policies():
    a, tokenizer = tiny_random_llama(seed=0)
    prompts = load_dataset_records(demo_path("prompt"), "prompt")[:2]
    with pytest.raises(ValueError, match="baselines"):
        compare_policies(
            {"a": Policy(a, tokenizer)}, prompts, judge=lowercase_share, baselines=["sft"]
        )


def test_the_reference_itself_is_not_sampled_for_its_kl(monkeypatch):
    """KL(π_ref ‖ π_ref) is 0 by definition: measuring it would cost a sampling pass."""
    import alignkit.eval.compare as compare

    a, tokenizer = tiny_random_llama(seed=0)
    b, _ = tiny_random_llama(seed=1)
    measured = []
    real = compare.kl_on_own_samples
    monkeypatch.setattr(
        compare,
        "kl_on_own_samples",
        lambda policy, *args, **kw: measured.append(policy.model) or real(policy, *args, **kw),
    )
    prompts = load_dataset_records(demo_path("prompt"), "prompt")[:4]
    result = compare_policies(
        {"a": Policy(a, tokenizer), "b": Policy(b, tokenizer)},
        prompts,
        judge=lowercase_share,
        baselines=["a"],
        reference=a,
        sampling=SamplingConfig(max_new_tokens=4),
        batch_size=4,
    )
    assert measured == [b]
    assert result["methods"]["a"]["kl"] == 0.0 and result["methods"]["a"]["kl_per_token"] == 0.0
    assert result["methods"]["a"]["per_group"]["concise"]["kl"] == 0.0
