import pytest
import torch

from alignkit.rewards import CompositeReward, RewardEnsemble, RewardOutput


class Constant:
    """A reward giving fixed scores (one per response, cycling)."""

    def __init__(self, values, name="c"):
        self.values, self.name = values, name

    def __call__(self, prompts, responses):
        return RewardOutput(
            [self.values[i] for i in range(len(responses))], {self.name: self.values}
        )


P, R = ["p1", "p2"], ["r1", "r2"]


def test_composite_sums_weighted_parts():
    composite = CompositeReward(
        [("reward_model", Constant([1.0, 2.0]), 1.0), ("length", Constant([-1.0, 0.0]), 0.5)]
    )
    out = composite(P, R)
    assert out.scores.tolist() == pytest.approx([0.5, 2.0])
    assert out.parts["reward_model"].tolist() == [1.0, 2.0]
    assert out.parts["length"].tolist() == [-0.5, 0.0]
    assert torch.allclose(sum(out.parts.values()), out.scores)


def test_composite_rejects_duplicates_and_empty():
    with pytest.raises(ValueError, match="duplicate"):
        CompositeReward([("a", Constant([0.0, 0.0]), 1.0), ("a", Constant([0.0, 0.0]), 1.0)])
    with pytest.raises(ValueError):
        CompositeReward([])


# members × responses: response 0 scores 1, 3; response 1 scores 2, 2
MEMBERS = [Constant([1.0, 2.0]), Constant([3.0, 2.0])]


@pytest.mark.parametrize(
    ("combine", "k", "expected"),
    [
        ("mean", 1.0, [2.0, 2.0]),
        ("min", 1.0, [1.0, 2.0]),
        # population std of (1, 3) is 1, of (2, 2) is 0
        ("mean_minus_std", 1.0, [1.0, 2.0]),
        ("mean_minus_std", 0.5, [1.5, 2.0]),
    ],
)
def test_ensemble_combinations_by_hand(combine, k, expected):
    out = RewardEnsemble(MEMBERS, combine, k)(P, R)
    assert out.scores.tolist() == pytest.approx(expected)
    assert out.parts["member_0"].tolist() == [1.0, 2.0]
    assert out.parts["member_1"].tolist() == [3.0, 2.0]
    assert out.parts["std"].tolist() == pytest.approx([1.0, 0.0])


def test_ensemble_rejects_unknown_rule():
    with pytest.raises(ValueError, match="combine"):
        RewardEnsemble(MEMBERS, "median")
