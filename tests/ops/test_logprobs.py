import math

import pytest
import torch

from alignkit.ops import entropy_from_logits, sequence_logprobs, token_logprobs


def _reference_logps(logits, labels, ignore_index=-100, temperature=1.0):
    """Naive full log_softmax (upcast) + gather: what token_logprobs must equal."""
    upcast = logits.double() if logits.dtype == torch.float64 else logits.float()
    logps = torch.log_softmax(upcast / temperature, dim=-1)
    valid = labels != ignore_index
    picked = logps.gather(-1, labels.masked_fill(~valid, 0).unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(~valid, 0.0)


def _reference_entropy(logits):
    logps = torch.log_softmax(logits.float(), dim=-1)
    return -(logps.exp() * logps).sum(-1)


# ---------------------------------------------------------------------------- hand-computed


def test_token_logprobs_hand_computed():
    # softmax([0, 0, ln 2]) = [1/4, 1/4, 1/2]
    logits = torch.tensor([[[0.0, 0.0, math.log(2)]] * 3])
    labels = torch.tensor([[2, 0, -100]])
    out = token_logprobs(logits, labels)
    torch.testing.assert_close(out, torch.tensor([[math.log(0.5), math.log(0.25), 0.0]]))


def test_token_logprobs_temperature_hand_computed():
    # At τ = 2 the logits [0, 2 ln 3] become [0, ln 3]: softmax = [1/4, 3/4].
    logits = torch.tensor([[[0.0, 2 * math.log(3)]]])
    out = token_logprobs(logits, torch.tensor([[1]]), temperature=2.0)
    torch.testing.assert_close(out, torch.tensor([[math.log(0.75)]]))


def test_entropy_hand_computed():
    # H([1/4, 1/4, 1/2]) = 2·(1/4)·ln 4 + (1/2)·ln 2 = 1.5 ln 2; uniform over 4 = ln 4.
    logits = torch.tensor([[[0.0, 0.0, math.log(2), -1e4], [1.0, 1.0, 1.0, 1.0]]])
    out = entropy_from_logits(logits)
    torch.testing.assert_close(out, torch.tensor([[1.5 * math.log(2), math.log(4)]]))


def test_sequence_logprobs_sum_and_average():
    token_logps = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, float("nan"), float("-inf")]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # Padding may hold NaN/-inf: it must not leak into the result.
    torch.testing.assert_close(sequence_logprobs(token_logps, mask), torch.tensor([-3.0, -0.5]))
    torch.testing.assert_close(
        sequence_logprobs(token_logps, mask, average=True), torch.tensor([-1.5, -0.5])
    )
    empty = sequence_logprobs(torch.ones(1, 3), torch.zeros(1, 3), average=True)
    torch.testing.assert_close(empty, torch.tensor([0.0]))


# ---------------------------------------------------------------------------- properties


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("time", "chunk_size"), [(7, 3), (5, 64), (6, 1)])
def test_token_logprobs_matches_log_softmax_gather(dtype, time, chunk_size):
    vocab = 37
    logits = (torch.randn(3, time, vocab) * 4).to(dtype).requires_grad_()
    labels = torch.randint(0, vocab, (3, time))
    labels[0, 1] = -100
    labels[2, -1] = -100
    ref_logits = logits.detach().clone().requires_grad_()

    out = token_logprobs(logits, labels, chunk_size=chunk_size)
    ref = _reference_logps(ref_logits, labels)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert (out[labels == -100] == 0).all()

    weights = torch.randn(3, time)
    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    assert logits.grad.dtype == dtype
    # Both gradients are computed in float32 and rounded once to the logits' dtype.
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(logits.grad.float(), ref_logits.grad.float(), atol=tol, rtol=tol)
    assert (logits.grad[0, 1] == 0).all()  # ignored positions receive no gradient


def test_token_logprobs_gradcheck_float64_with_temperature():
    logits = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 6, (2, 5))
    labels[1, 2] = -100
    assert torch.autograd.gradcheck(
        lambda z: token_logprobs(z, labels, temperature=0.7, chunk_size=3), (logits,)
    )


def test_token_logprobs_non_contiguous_and_2d_inputs():
    logits = torch.randn(2, 6, 11)
    labels = torch.randint(0, 11, (2, 6))
    sliced = logits[:, :-1]  # the usual shift: non-contiguous
    torch.testing.assert_close(
        token_logprobs(sliced, labels[:, 1:], chunk_size=2),
        _reference_logps(sliced, labels[:, 1:]),
    )
    torch.testing.assert_close(
        token_logprobs(logits[0], labels[0]), _reference_logps(logits, labels)[0]
    )


def test_token_logprobs_large_vocab_stable():
    # The default model's vocabulary, and logits large enough to overflow a naive exp().
    vocab = 49_152
    logits = (torch.randn(2, 3, vocab) * 30).to(torch.bfloat16)
    labels = torch.randint(0, vocab, (2, 3))
    out = token_logprobs(logits, labels, chunk_size=2)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, _reference_logps(logits, labels), atol=1e-4, rtol=1e-5)


def test_token_logprobs_rejects_bad_shapes():
    with pytest.raises(ValueError):
        token_logprobs(torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError):
        token_logprobs(torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.long), temperature=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_entropy_matches_naive_and_gradient(dtype):
    logits = (torch.randn(2, 5, 13) * 3).to(dtype).requires_grad_()
    ref_logits = logits.detach().clone().requires_grad_()
    out = entropy_from_logits(logits, chunk_size=3)
    ref = _reference_entropy(ref_logits)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    weights = torch.randn(2, 5)
    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(logits.grad.float(), ref_logits.grad.float(), atol=tol, rtol=tol)


def test_entropy_gradcheck_float64():
    logits = torch.randn(2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda z: entropy_from_logits(z, temperature=1.3, chunk_size=3), (logits,)
    )


# ---------------------------------------------------------------------------- TRL 1.16.0 parity


def test_token_logprobs_matches_trl_selective_log_softmax():
    pytest.importorskip("trl")
    # Mirrors trl/trainer/utils.py::selective_log_softmax (non-Triton path on CPU).
    from trl.trainer.utils import selective_log_softmax

    logits = torch.randn(4, 9, 50) * 5
    labels = torch.randint(0, 50, (4, 9))
    torch.testing.assert_close(
        token_logprobs(logits, labels, chunk_size=4),
        selective_log_softmax(logits, labels),
        atol=1e-5,
        rtol=1e-5,
    )
    torch.testing.assert_close(
        token_logprobs(logits, labels, temperature=0.6),
        selective_log_softmax(logits, labels, temperature=0.6),
        atol=1e-5,
        rtol=1e-5,
    )
    # TRL reduces bf16 logits in bf16 (its log_softmax fallback); we reduce in float32, so
    # compare against TRL on the upcast logits, which is what we compute.
    bf16 = logits.to(torch.bfloat16)
    torch.testing.assert_close(
        token_logprobs(bf16, labels),
        selective_log_softmax(bf16.float(), labels),
        atol=1e-5,
        rtol=1e-5,
    )


def test_entropy_matches_trl_entropy_from_logits():
    pytest.importorskip("trl")
    # Mirrors trl/trainer/utils.py::entropy_from_logits.
    from trl.trainer.utils import entropy_from_logits as trl_entropy

    logits = torch.randn(3, 7, 40) * 3
    torch.testing.assert_close(
        entropy_from_logits(logits, chunk_size=5), trl_entropy(logits), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("fn", ["token_logprobs", "entropy_from_logits"])
def test_no_full_vocabulary_float32_allocation(fn):
    # Forward + backward on bf16 logits: no single allocation may reach the size of a float32
    # [B, T, V] tensor (the naive upcast log_softmax); the largest one is the bf16 gradient.
    from torch.profiler import ProfilerActivity, profile

    batch, time, vocab = 1, 256, 4096
    logits = torch.randn(batch, time, vocab).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, vocab, (batch, time))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        if fn == "token_logprobs":
            out = token_logprobs(logits, labels, chunk_size=32)
        else:
            out = entropy_from_logits(logits, chunk_size=32)
        out.sum().backward()
    largest = max(e.cpu_memory_usage for e in prof.events())
    full_float32 = batch * time * vocab * 4
    assert largest < full_float32 * 0.75, largest
