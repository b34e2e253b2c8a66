"""Decoding on the CPU with the linear layers' weights prepacked for the decode batch.

Each decoding step multiplies a handful of rows (the batch, one new token each) by every
weight matrix of the model. At that shape the plain float32 GEMM spends most of its time
re-reading and re-packing the weights; weights reordered once by oneDNN for that batch
size skip that work, with the same greedy tokens (benchmarks/README.md has the figures).

:func:`prepacked_linears` reorders every `nn.Linear` weight once for a given number of rows
and, while the context is open, routes inputs of exactly that many rows through oneDNN's
packed kernel; anything else (the prompt prefill, other shapes, autograd) takes the usual
path. The packed copies (one more copy of the weights) are dropped on exit, so the weights
may change between contexts. Only for float32 weights on the CPU with oneDNN; elsewhere the
context changes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


def prepacking_available(model: nn.Module) -> bool:
    """float32 weights on the CPU and a PyTorch built with oneDNN's packed linear ops."""
    parameter = next(model.parameters(), None)
    return (
        parameter is not None
        and parameter.device.type == "cpu"
        and parameter.dtype == torch.float32
        and prepacking_ops_available()
    )


def packed_linear(x: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None):
    """y = x Wᵀ + b for x [rows, in] with W reordered by `_reorder_linear_weight`."""
    return torch.ops.mkldnn._linear_pointwise(x, packed_weight, bias, "none", [], "")


def pack_weight(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """W [out, in] reordered by oneDNN for products with `rows` rows."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, rows)


def prepacking_ops_available() -> bool:
    """A PyTorch built with oneDNN's packed linear ops."""
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def epilogues_available() -> bool:
    """oneDNN's linear with a fused elementwise epilogue (`_linear_pointwise.binary`)."""
    return prepacking_ops_available() and hasattr(torch.ops.mkldnn._linear_pointwise, "binary")


def packed_linear_silu(x: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None):
    """silu(x Wᵀ + b), the activation applied by the GEMM's epilogue."""
    return torch.ops.mkldnn._linear_pointwise(x, packed_weight, bias, "swish", [], "")


def packed_linear_add(
    x: torch.Tensor, other: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None
):
    """x Wᵀ + b + other (a residual added by the GEMM's epilogue)."""
    return torch.ops.mkldnn._linear_pointwise.binary(x, other, packed_weight, bias, "add")


def packed_linear_mul(
    x: torch.Tensor, other: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None
):
    """(x Wᵀ + b) ⊙ other (a gate multiplied by the GEMM's epilogue)."""
    return torch.ops.mkldnn._linear_pointwise.binary(x, other, packed_weight, bias, "mul")


@contextlib.contextmanager
def prepacked_linears(model: nn.Module, rows: int) -> Iterator[bool]:
    """Within the context, `model`'s linear layers multiply inputs of `rows` rows (all
    leading dimensions together) with weights prepacked for that batch size. Yields whether
    prepacking is in effect."""
    if not prepacking_available(model):
        yield False
        return
    patched: list[nn.Linear] = []
    try:
        for module in model.modules():
            if type(module) is not nn.Linear:
                continue
            weight = module.weight.detach()
            packed = pack_weight(weight, rows)
            module.forward = _packed_forward(module, packed, rows)
            patched.append(module)
        yield True
    finally:
        for module in patched:
            del module.forward  # back to nn.Linear.forward


def _packed_forward(module: nn.Linear, packed: torch.Tensor, rows: int):
    def forward(x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        if torch.is_grad_enabled() or lead.numel() != rows or x.dtype != torch.float32:
            return F.linear(x, module.weight, module.bias)
        bias = None if module.bias is None else module.bias.detach()
        out = packed_linear(x.reshape(rows, x.shape[-1]), packed, bias)
        return out.view(*lead, out.shape[-1])

    return forward
