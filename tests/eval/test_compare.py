"""Policies compared on held-out prompts with a rule-based judge, on tiny random models."""

import pytest
import torch

from alignkit.data import demo_path, load_dataset_records
from alignkit.eval import compare
from alignkit.eval.compare import Policy, compare_policies
from alignkit.eval.text_stats import distinct_n_over, text_figures
from alignkit.models.tiny import tiny_random_llama
from alignkit.ops.kl_estimators import kl_from_logits
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


@torch.no_grad()
def sequence_kl(policy, reference, sequences):
    """The plain measurement: both models' full forward over prompt + response, the exact
    next-token KL summed over the response positions."""
    kwargs = {"input_ids": sequences.input_ids, "attention_mask": sequences.attention_mask}
    logits = policy(**kwargs).logits[:, :-1]
    ref_logits = reference(**kwargs).logits[:, :-1]
    mask = sequences.labels[:, 1:] != -100
    return (kl_from_logits(logits, ref_logits) * mask).sum(1), mask.sum(1)


@pytest.mark.parametrize("samples", [1, 2])
def test_kl_from_the_samplers_logits_equals_the_plain_two_forward_measurement(samples):
    """The eval's KL takes π's logits from the sampler and π_ref's from one forward that
    continues its prompt cache; the plain way runs both models over the whole sequence."""
    from alignkit.rollout.sampling import prefill, sample_prefilled
    from alignkit.rollout.sequences import right_padded_sequences

    policy, tokenizer = tiny_random_llama(seed=0)
    reference, _ = tiny_random_llama(seed=2)
    prompts = ["hello", "a longer prompt here", [{"role": "user", "content": "2+2?"}]]
    filled = prefill(policy, tokenizer, prompts)
    rollout = sample_prefilled(
        policy,
        tokenizer,
        filled,
        SamplingConfig(max_new_tokens=6),
        seed=1,
        num_samples=samples,
        keep_logits=True,
    )
    ref_logits = compare.reference_logits(
        reference, prefill(reference, tokenizer, prompts), rollout
    )
    real = rollout.response_mask.bool()
    per_position = kl_from_logits(rollout.logits[real], ref_logits)
    ours = torch.zeros(real.shape[0]).index_add_(0, real.nonzero()[:, 0], per_position)
    seqs = right_padded_sequences(rollout, tokenizer.pad_token_id, tokenizer.eos_token_id)
    expected, n = sequence_kl(policy, reference, seqs)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)
    assert n.tolist() == rollout.response_mask.sum(1).tolist()
    assert (ours > 0).all()
    itself = compare.reference_logits(policy, filled, rollout)
    self_kl = kl_from_logits(rollout.logits[real], itself)
    assert torch.allclose(self_kl, torch.zeros_like(self_kl), atol=1e-5)


def test_baselines_must_be_policies():
    a, tokenizer = tiny_random_llama(seed=0)
    prompts = load_dataset_records(demo_path("prompt"), "prompt")[:2]
    with pytest.raises(ValueError, match="baselines"):
        compare_policies(
            {"a": Policy(a, tokenizer)}, prompts, judge=lowercase_share, baselines=["sft"]
        )


def test_the_reference_itself_is_not_sampled_for_its_kl(monkeypatch):
    """KL(π_ref ‖ π_ref) is 0 by definition: measuring it would cost a sampling pass."""
    a, tokenizer = tiny_random_llama(seed=0)
    b, _ = tiny_random_llama(seed=1)
    measured = []
    real = compare.reference_logits
    monkeypatch.setattr(
        compare,
        "reference_logits",
        lambda reference, prefilled, rollout: (
            measured.append(rollout.texts) or real(reference, prefilled, rollout)
        ),
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
    assert len(measured) == 1  # b's one batch; a is the reference
    assert result["methods"]["a"]["kl"] == 0.0 and result["methods"]["a"]["kl_per_token"] == 0.0
    assert result["methods"]["a"]["per_group"]["concise"]["kl"] == 0.0
