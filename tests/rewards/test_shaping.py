import pytest
import torch

from alignkit.models.tiny import tiny_tokenizer
from alignkit.rewards import (
    DiversityBonus,
    EvasionPenalty,
    LengthPenalty,
    RepetitionPenalty,
)
from alignkit.rewards.base import RewardOutput

PROMPTS = ["q"] * 3


def test_length_penalty_words_linear_and_capped():
    responses = ["one two", "one two three four five six", " ".join(["w"] * 12)]
    linear = LengthPenalty(4, unit="words", weight=0.5)(PROMPTS, responses)
    # overshoot/target: 0, 2/4, 8/4 → times −0.5
    assert linear.scores.tolist() == pytest.approx([0.0, -0.25, -1.0])
    assert torch.equal(linear.parts["length"], linear.scores)
    capped = LengthPenalty(4, unit="words", mode="capped", cap=1.0)(PROMPTS, responses)
    assert capped.scores.tolist() == pytest.approx([0.0, -0.5, -1.0])


def test_length_penalty_counts_tokens_with_the_tokenizer():
    tokenizer = tiny_tokenizer()  # byte-level: one token per byte, no specials added
    out = LengthPenalty(4, tokenizer=tokenizer)(["q"], ["abcdef"])
    assert out.scores.tolist() == pytest.approx([-0.5])


def test_length_penalty_rejects_bad_options():
    with pytest.raises(ValueError, match="tokenizer"):
        LengthPenalty(10)
    with pytest.raises(ValueError):
        LengthPenalty(0, unit="words")
    with pytest.raises(ValueError):
        LengthPenalty(5, unit="words", mode="square")


def test_repetition_penalty_by_hand():
    out = RepetitionPenalty(weight=2.0, n=2)(["q", "q"], ["Paris Paris Paris Paris", "Paris."])
    assert out.scores.tolist() == pytest.approx([-4 / 3, 0.0])


def test_evasion_penalty_by_hand():
    out = EvasionPenalty(weight=0.2)(PROMPTS, ["I can't answer that", "Paris.", "AS AN AI..."])
    assert out.scores.tolist() == pytest.approx([-0.2, 0.0, -0.2])
    custom = EvasionPenalty(phrases=["pass"])(["q"], ["I pass"])
    assert custom.scores.tolist() == [-1.0]


def test_diversity_bonus_by_hand():
    out = DiversityBonus(weight=0.1)(PROMPTS, ["the cat sat", "the cat sat", "dogs run far"])
    assert out.scores.tolist() == pytest.approx([0.0, 0.0, 0.1])


def test_batch_size_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        RepetitionPenalty()(["a", "b"], ["x"])


def test_reward_output_checks_shapes_and_logs_means():
    out = RewardOutput([1.0, 3.0], {"a": [0.5, 1.5]})
    assert out.scores.dtype == torch.float32
    assert out.part_means() == {"rewards/total": 2.0, "rewards/a": 1.0}
    with pytest.raises(ValueError, match="part 'a'"):
        RewardOutput([1.0, 2.0], {"a": [1.0]})
