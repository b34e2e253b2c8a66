"""Rows that open with the same prompt (preference pairs, GRPO groups) run it once."""

import sys
from pathlib import Path

import pytest
import torch

from alignkit.models import ScalarHeadModel, last_token_index, tiny_random_llama
from alignkit.models.scoring import (
    labelled_token_logprobs,
    pack_batch,
    pack_shared_prompts,
    prompt_lengths_from_labels,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grad_helpers import assert_same_gradients

# (prompt, chosen response, rejected response)
PAIRS = [([5, 6, 7], [8, 9, 2], [20, 2]), ([5, 11], [10, 2], [30, 31, 32, 33, 2])]


def _pair_batch(left: bool = False):
    """Chosen rows then rejected rows, padded with id 2, labels on the responses."""
    rows = [p + c for p, c, _ in PAIRS] + [p + r for p, _, r in PAIRS]
    prompts = [len(p) for p, _, _ in PAIRS] * 2
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), 2)
    attn = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, row in enumerate(rows):
        start = width - len(row) if left else 0
        ids[i, start : start + len(row)] = torch.tensor(row)
        attn[i, start : start + len(row)] = 1
        labels[i, start + prompts[i] : start + len(row)] = torch.tensor(row[prompts[i] :])
    return ids, attn, labels, torch.tensor(prompts)


def _padded_logps(model, ids, attn, labels):
    logp = model(input_ids=ids, attention_mask=attn).logits[:, :-1].log_softmax(-1)
    targets = labels[:, 1:]
    return logp.gather(2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (targets != -100)


def test_pack_pairs_layout():
    ids, attn, _, prompts = _pair_batch()
    packed_ids, positions, index, segments = pack_shared_prompts(ids, attn, prompts)
    assert packed_ids[0].tolist() == [5, 6, 7, 8, 9, 2, 20, 2, 5, 11, 10, 2, 30, 31, 32, 33, 2]
    assert positions[0].tolist() == [0, 1, 2, 3, 4, 5, 3, 4, 0, 1, 2, 3, 2, 3, 4, 5, 6]
    assert segments == [(3, (3, 2)), (2, (2, 5))]
    # the rejected row of pair 0 reads the shared prompt, then its own response
    assert index[2, :5].tolist() == [0, 1, 2, 6, 7]
    assert torch.equal(packed_ids[0][index[attn.bool()]], ids[attn.bool()])


def test_prompt_lengths_come_from_the_labels():
    for left in (False, True):
        _ids, attn, labels, prompts = _pair_batch(left)
        assert torch.equal(prompt_lengths_from_labels(attn, labels), prompts)


def test_rows_whose_prompts_differ_are_not_grouped():
    ids, attn, _, prompts = _pair_batch()
    ids[2, 0] = 99  # pair 0's rejected row opens differently
    _, _, _, segments = pack_shared_prompts(ids, attn, prompts)
    assert segments == [(3, (3,)), (2, (2, 5)), (3, (2,))]
    ids[3, 0] = 98
    assert pack_shared_prompts(ids, attn, prompts) is None  # nothing shared


def test_groups_of_any_size_in_any_order():
    """A GRPO batch: three samples of one prompt and one of another, interleaved."""
    model, _ = tiny_random_llama(seed=5)
    rows = [[5, 6, 7, 40, 2], [9, 9, 41, 42, 43], [5, 6, 7, 44, 45], [5, 6, 7, 46]]
    prompt = [3, 2, 3, 3]
    width = max(map(len, rows))
    ids = torch.full((4, width), 2)
    attn = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        attn[i, : len(row)] = 1
        labels[i, prompt[i] : len(row)] = torch.tensor(row[prompt[i] :])
    packed = pack_batch(model, ids, attn, prompt_lengths=torch.tensor(prompt))
    assert packed.forward_kwargs["shared_prompt_segments"] == [(3, (2, 2, 1)), (2, (3,))]
    got, _ = labelled_token_logprobs(model, ids, attn, labels)
    assert torch.allclose(got, _padded_logps(model, ids, attn, labels), atol=1e-5)


@pytest.mark.parametrize("left", [False, True])
def test_shared_prompt_logprobs_and_gradients_equal_the_padded_forward(left):
    model, _ = tiny_random_llama(seed=3)
    ids, attn, labels, prompts = _pair_batch(left)
    assert pack_batch(model, ids, attn, prompt_lengths=prompts).forward_kwargs[
        "shared_prompt_segments"
    ]
    shared, keep = labelled_token_logprobs(model, ids, attn, labels)
    expected = _padded_logps(model, ids, attn, labels)
    assert torch.allclose(shared, expected, atol=1e-5)
    assert bool((shared[~keep] == 0).all())
    assert_same_gradients(
        model,
        lambda: labelled_token_logprobs(model, ids, attn, labels)[0].sum(),
        lambda: _padded_logps(model, ids, attn, labels).sum(),
    )


def test_shared_prompt_runs_each_prompt_once(monkeypatch):
    model, _ = tiny_random_llama(seed=3)
    ids, attn, labels, _prompts = _pair_batch()
    lengths = []
    hook = model.model.embed_tokens.register_forward_hook(
        lambda module, args, out: lengths.append(out.shape[1])
    )
    labelled_token_logprobs(model, ids, attn, labels)
    model.config._attn_implementation = "eager"  # no prompt sharing: plain packing
    labelled_token_logprobs(model, ids, attn, labels)
    hook.remove()
    assert lengths == [17, int(attn.sum())]  # 22 real tokens, two prompts of 3 and 2 shared


def test_mismatched_prompts_fall_back_to_plain_packing():
    model, _ = tiny_random_llama(seed=3)
    ids, attn, labels, _prompts = _pair_batch()
    ids[2, 0] = 99
    got, _ = labelled_token_logprobs(model, ids, attn, labels)
    assert torch.allclose(got, _padded_logps(model, ids, attn, labels), atol=1e-5)


def test_eager_attention_does_not_share_but_still_scores_right():
    model, _ = tiny_random_llama(seed=3)
    model.config._attn_implementation = "eager"
    ids, attn, labels, prompts = _pair_batch()
    packed = pack_batch(model, ids, attn, prompt_lengths=prompts)
    assert "shared_prompt_segments" not in packed.forward_kwargs
    got, _ = labelled_token_logprobs(model, ids, attn, labels)
    assert torch.allclose(got, _padded_logps(model, ids, attn, labels), atol=1e-5)


def test_reward_scores_and_gradients_with_shared_prompts():
    lm, _ = tiny_random_llama(seed=4)
    rm = ScalarHeadModel.from_causal_lm(lm)
    ids, attn, _, prompts = _pair_batch()
    shared = rm.score(ids, attn, prompt_lengths=prompts)
    padded = rm(ids, attn).gather(1, last_token_index(attn).unsqueeze(1)).squeeze(1)
    assert torch.allclose(shared, padded, atol=1e-5)
    assert_same_gradients(
        rm,
        lambda: rm.score(ids, attn, prompt_lengths=prompts).sum(),
        lambda: rm(ids, attn).gather(1, last_token_index(attn).unsqueeze(1)).sum(),
    )
