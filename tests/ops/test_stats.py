import math

import pytest
import torch

from alignkit.ops import masked_mean, masked_sum, masked_var, masked_whiten

X = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
M = torch.tensor([[1, 1, 1, 0]])


def test_hand_computed_reductions():
    torch.testing.assert_close(masked_sum(X, M), torch.tensor(6.0))
    torch.testing.assert_close(masked_mean(X, M), torch.tensor(2.0))
    torch.testing.assert_close(masked_var(X, M), torch.tensor(1.0))  # (1 + 0 + 1) / 2
    torch.testing.assert_close(masked_var(X, M, unbiased=False), torch.tensor(2.0 / 3.0))


def test_along_dim_and_empty_rows():
    x = torch.tensor([[1.0, 3.0, 5.0], [2.0, 4.0, 6.0]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    torch.testing.assert_close(masked_sum(x, mask, dim=-1), torch.tensor([4.0, 0.0]))
    # Empty rows give 0, not NaN.
    torch.testing.assert_close(masked_mean(x, mask, dim=-1), torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(masked_mean(x, torch.zeros_like(mask)), torch.tensor(0.0))


def test_padding_nan_does_not_leak():
    x = torch.tensor([1.0, float("nan"), float("inf"), 3.0], requires_grad=True)
    mask = torch.tensor([1, 0, 0, 1])
    out = masked_mean(x, mask)
    out.backward()
    torch.testing.assert_close(out.detach(), torch.tensor(2.0))
    torch.testing.assert_close(x.grad, torch.tensor([0.5, 0.0, 0.0, 0.5]))


def test_whiten_hand_computed():
    out = masked_whiten(X, M)
    torch.testing.assert_close(out, torch.tensor([[-1.0, 0.0, 1.0, 0.0]]), atol=1e-6, rtol=0)
    out = masked_whiten(X, M, shift_mean=False)
    torch.testing.assert_close(out, torch.tensor([[1.0, 2.0, 3.0, 0.0]]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_whiten_gives_zero_mean_unit_variance_on_mask(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 9, generator=gen) * 7 + 3
    mask = torch.rand(4, 9, generator=gen) > 0.3
    x = x.masked_fill(~mask, 1e6)  # padding values must not affect the statistics
    out = masked_whiten(x, mask)
    assert abs(masked_mean(out, mask).item()) < 1e-5
    assert math.isclose(masked_var(out, mask).item(), 1.0, rel_tol=1e-4)
    assert (out[~mask] == 0).all()


def test_var_of_single_element_is_finite():
    x = torch.tensor([5.0, 7.0])
    mask = torch.tensor([1, 0])
    torch.testing.assert_close(masked_var(x, mask), torch.tensor(0.0))
    torch.testing.assert_close(masked_whiten(x, mask), torch.tensor([0.0, 0.0]))
