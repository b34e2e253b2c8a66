"""Gradient comparison shared by the scoring tests."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def assert_same_gradients(
    model: nn.Module,
    loss: Callable[[], torch.Tensor],
    expected_loss: Callable[[], torch.Tensor],
    *,
    atol: float = 1e-5,
) -> None:
    """Each loss backpropagated from zero gradients gives every parameter of `model` the
    same gradient, to `atol`."""
    model.zero_grad(set_to_none=True)
    loss().backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    expected_loss().backward()
    for grad, p in zip(got, model.parameters(), strict=True):
        assert torch.allclose(grad, p.grad, atol=atol)
