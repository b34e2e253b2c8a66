"""Prepacked linear weights for decoding: same outputs, used only where they apply."""

import pytest
import torch

from alignkit.models.tiny import tiny_random_llama
from alignkit.rollout import prepacked
from alignkit.rollout.llama_step import LlamaDecodeStep
from alignkit.rollout.prepacked import prepacked_linears, prepacking_available
from alignkit.rollout.sampling import SamplingConfig, sample


def test_linear_outputs_match_for_the_packed_row_count_only(monkeypatch):
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 24)
    calls = []
    real = prepacked.packed_linear
    monkeypatch.setattr(prepacked, "packed_linear", lambda *a: calls.append(1) or real(*a))
    x, other = torch.randn(4, 1, 16), torch.randn(3, 16)
    with torch.no_grad():
        expected, expected_other = layer(x), layer(other)
        with prepacked_linears(layer, rows=4) as active:
            assert active == prepacking_available(layer)
            got, got_other = layer(x), layer(other)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.equal(got_other, expected_other)  # 3 rows: the usual path
    assert len(calls) == (1 if active else 0)
    assert "forward" not in vars(layer)  # restored on exit


def test_autograd_takes_the_usual_path():
    layer = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8, requires_grad=True)
    with prepacked_linears(layer, rows=2):
        layer(x).sum().backward()
    assert layer.weight.grad is not None and x.grad is not None


def test_sampling_with_prepacked_weights_gives_the_same_tokens(monkeypatch):
    model, tok = tiny_random_llama(seed=2)
    # the model's own forward, as for decoders without a written-out step
    monkeypatch.setattr(LlamaDecodeStep, "supports", staticmethod(lambda model: False))
    prompts = ["hello there", "hi"]
    cfg = SamplingConfig(max_new_tokens=8, do_sample=False)
    calls = []
    real = prepacked.packed_linear
    monkeypatch.setattr(prepacked, "packed_linear", lambda *a: calls.append(1) or real(*a))
    packed = sample(model, tok, prompts, cfg, num_samples=3)
    assert calls or not prepacking_available(model)
    monkeypatch.setattr(prepacked, "prepacking_available", lambda model: False)
    plain = sample(model, tok, prompts, cfg, num_samples=3)
    assert torch.equal(packed.response_ids, plain.response_ids)


def test_fused_epilogues_equal_the_separate_ops():
    if not (prepacked.prepacking_ops_available() and prepacked.epilogues_available()):
        pytest.skip("no oneDNN packed linear in this PyTorch build")
    torch.manual_seed(0)
    w, b = torch.randn(24, 16), torch.randn(24)
    x, other = torch.randn(4, 16), torch.randn(4, 24)
    packed = prepacked.pack_weight(w, 4)
    y = torch.nn.functional.linear(x, w, b)
    torch.testing.assert_close(prepacked.packed_linear(x, packed, b), y)
    torch.testing.assert_close(
        prepacked.packed_linear_silu(x, packed, b), torch.nn.functional.silu(y)
    )
    torch.testing.assert_close(prepacked.packed_linear_add(x, other, packed, b), y + other)
    torch.testing.assert_close(prepacked.packed_linear_mul(x, other, packed, b), y * other)
