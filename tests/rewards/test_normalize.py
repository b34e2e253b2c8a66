import numpy as np
import pytest
import torch

from alignkit.rewards import RewardNormalizer


def batches(seed=0, sizes=(4, 7, 1, 16, 3)):
    rng = np.random.default_rng(seed)
    return [rng.normal(3.0, 2.0, size=n) for n in sizes]


def test_running_stats_match_numpy_over_all_rewards():
    norm = RewardNormalizer()
    seen = []
    for batch in batches():
        norm.update(torch.tensor(batch))
        seen.extend(batch)
        assert norm.mean == pytest.approx(np.mean(seen), rel=1e-12)
        assert norm.std == pytest.approx(np.std(seen), rel=1e-12)
        assert norm.count == len(seen)


def test_normalise_uses_stats_including_the_batch_and_clips():
    norm = RewardNormalizer(clip=1.0)
    values = torch.tensor([0.0, 2.0, 4.0, 10.0])
    out = norm(values)
    expected = (values.numpy() - values.numpy().mean()) / values.numpy().std()
    assert out.tolist() == pytest.approx(np.clip(expected, -1, 1).tolist(), rel=1e-5)


def test_options_scale_only_or_centre_only():
    values = torch.tensor([1.0, 3.0])  # mean 2, std 1
    assert RewardNormalizer(subtract_mean=False)(values).tolist() == pytest.approx([1.0, 3.0])
    assert RewardNormalizer(scale_by_std=False)(values.clone() * 4).tolist() == pytest.approx(
        [-4.0, 4.0]
    )
    frozen = RewardNormalizer()
    frozen(values)
    assert frozen(torch.tensor([4.0]), update=False).tolist() == pytest.approx([2.0])
    assert frozen.count == 2


def test_exponential_moving_stats_by_hand():
    norm = RewardNormalizer(momentum=0.5)
    norm.update(torch.tensor([0.0, 2.0]))  # mean 1, var 1
    norm.update(torch.tensor([5.0, 5.0]))  # batch mean 5, var 0
    assert norm.mean == pytest.approx(3.0)  # 1 + 0.5·4
    assert norm.var == pytest.approx(0.5 * 1 + 0.5 * 0 + 0.25 * 16)


def test_state_round_trip_resumes_exactly():
    first, second = batches(1, (5, 5)), batches(2, (6,))
    full = RewardNormalizer(clip=3.0)
    for b in first:
        full(torch.tensor(b))
    resumed = RewardNormalizer(clip=3.0)
    resumed.load_state_dict(full.state_dict())
    a = full(torch.tensor(second[0]))
    b = resumed(torch.tensor(second[0]))
    assert torch.equal(a, b)
    assert resumed.state_dict() == full.state_dict()


def test_bad_options():
    with pytest.raises(ValueError):
        RewardNormalizer(clip=0)
    with pytest.raises(ValueError):
        RewardNormalizer(momentum=1.5)
