"""Packed (varlen) attention: per-sequence causal SDPA over a packed row."""

import json

import torch
import torch.nn.functional as F

from alignkit.models import attention, tiny_random_llama
from alignkit.models.attention import PACKED_SDPA, packed_attention_kwargs, packed_sdpa_attention
from alignkit.models.scoring import labelled_token_logprobs, pack_rows


class _Layer(torch.nn.Module):
    num_key_value_groups = 3
    is_causal = True


def _block_causal_reference(q, k, v, lengths):
    """softmax over keys of the same sequence at or before the query, through a dense mask."""
    seq = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    pos = torch.arange(len(seq))
    allowed = (seq[:, None] == seq[None, :]) & (pos[None, :] <= pos[:, None])
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    return out.transpose(1, 2)


def test_equals_block_diagonal_attention_values_and_gradients():
    torch.manual_seed(0)
    lengths = [5, 1, 9, 3]
    n = sum(lengths)
    q = torch.randn(1, 6, n, 8, requires_grad=True)
    k = torch.randn(1, 2, n, 8, requires_grad=True)
    v = torch.randn(1, 2, n, 8, requires_grad=True)
    boundaries = torch.tensor([0, 5, 6, 15, 18], dtype=torch.int32)
    layer = _Layer().eval()
    out, _ = packed_sdpa_attention(layer, q, k, v, None, cu_seq_lens_q=boundaries)
    expected = _block_causal_reference(q, k, v, lengths)
    assert out.shape == (1, n, 6, 8)
    assert torch.allclose(out, expected, atol=1e-6)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    expected_grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
    for got, want in zip(grads, expected_grads, strict=True):
        assert torch.allclose(got, want, atol=1e-5)


def test_kwargs_switch_sdpa_and_mark_sequence_starts():
    model, _ = tiny_random_llama(seed=0)
    assert model.config._attn_implementation == "sdpa"
    position_ids = torch.tensor([[0, 1, 2, 0, 0, 1]])
    kwargs = packed_attention_kwargs(model.config, position_ids)
    assert model.config._attn_implementation == PACKED_SDPA
    assert kwargs["cu_seq_lens_q"].tolist() == [0, 3, 4, 6]
    assert kwargs["max_length_q"] == 3


def test_eager_models_keep_the_mask_path():
    model, _ = tiny_random_llama(seed=0)
    model.config._attn_implementation = "eager"
    assert packed_attention_kwargs(model.config, torch.tensor([[0, 1, 0]])) == {}
    assert model.config._attn_implementation == "eager"


def test_switched_model_is_plain_sdpa_without_boundaries():
    model, _ = tiny_random_llama(seed=0)
    ids = torch.tensor([[2, 2, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    before = model(input_ids=ids, attention_mask=mask).logits
    greedy_before = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    packed_attention_kwargs(model.config, torch.tensor([[0, 1]]))
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, before)
    greedy_after = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    assert torch.equal(greedy_after, greedy_before)


def test_packed_scoring_runs_one_attention_per_sequence(monkeypatch):
    model, _ = tiny_random_llama(seed=0)
    ids = torch.tensor([[5, 6, 7, 8, 2, 2], [5, 9, 10, 11, 12, 13]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100
    seen = []
    real_sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        seen.append((q.shape[2], k.shape[2], kwargs.get("attn_mask") is None))
        return real_sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    labelled_token_logprobs(model, ids, mask, labels)
    layers = model.config.num_hidden_layers
    assert seen == [(4, 4, True), (6, 6, True)] * layers


def test_saved_config_does_not_name_the_packed_implementation(tmp_path):
    model, _ = tiny_random_llama(seed=0)
    packed_ids, position_ids, _ = pack_rows(torch.tensor([[5, 6, 2]]), torch.tensor([[1, 1, 0]]))
    model(
        input_ids=packed_ids,
        position_ids=position_ids,
        **packed_attention_kwargs(model.config, position_ids),
    )
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert PACKED_SDPA not in json.dumps(saved)
