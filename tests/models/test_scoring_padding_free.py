"""Padding-free scoring: a padded batch scored as one packed row gives the padded result."""

import sys
from pathlib import Path

import pytest
import torch

from alignkit.models import apply_lora, tiny_random_llama
from alignkit.models.reference import ReferencePolicy
from alignkit.models.scoring import (
    labelled_token_logprobs,
    labelled_token_logprobs_and_entropy,
    pack_batch,
    supports_padding_free,
)
from alignkit.ops.logprobs import entropy_from_logits

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grad_helpers import assert_same_gradients


def _padded_reference(model, ids, mask, labels):
    """log-probs from the plain padded forward with the full log-softmax (position ids as
    the padded forward computes them; RoPE makes the offset of left padding irrelevant)."""
    logp = model(input_ids=ids, attention_mask=mask).logits[:, :-1].log_softmax(-1)
    targets = labels[:, 1:]
    keep = targets != -100
    return logp.gather(2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep


def _batch(left: bool = False):
    """Three rows of different lengths: prompt then labelled response, padded with id 2."""
    rows = [([5, 6, 7], [8, 9, 2]), ([5, 11], [10, 2]), ([12, 13, 14, 15], [16, 17, 18, 19, 2])]
    length = max(len(p) + len(r) for p, r in rows)
    ids = torch.full((len(rows), length), 2)
    attn = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), -100)
    for i, (p, r) in enumerate(rows):
        n = len(p) + len(r)
        start = length - n if left else 0
        ids[i, start : start + n] = torch.tensor(p + r)
        attn[i, start : start + n] = 1
        labels[i, start + len(p) : start + n] = torch.tensor(r)
    return ids, attn, labels


@pytest.mark.parametrize("left", [False, True])
def test_packed_scores_equal_the_padded_forward(left):
    model, _ = tiny_random_llama(seed=3)
    ids, attn, labels = _batch(left)
    assert supports_padding_free(model)
    assert pack_batch(model, ids, attn) is not None
    logps, keep = labelled_token_logprobs(model, ids, attn, labels)
    assert logps.shape == keep.shape == (3, ids.shape[1] - 1)
    assert torch.allclose(logps, _padded_reference(model, ids, attn, labels), atol=1e-5)
    assert bool((logps[~keep] == 0).all())


def test_no_attention_across_packed_sequences():
    model, _ = tiny_random_llama(seed=3)
    ids, attn, labels = _batch()
    together, _ = labelled_token_logprobs(model, ids, attn, labels)
    for i in range(ids.shape[0]):
        n = int(attn[i].sum())
        alone = _padded_reference(
            model, ids[i : i + 1, :n], attn[i : i + 1, :n], labels[i : i + 1, :n]
        )
        assert torch.allclose(together[i, : n - 1], alone[0], atol=1e-5)


def test_packed_gradients_match_the_padded_forward():
    model, _ = tiny_random_llama(seed=3)
    ids, attn, labels = _batch()
    assert_same_gradients(
        model,
        lambda: labelled_token_logprobs(model, ids, attn, labels)[0].sum(),
        lambda: _padded_reference(model, ids, attn, labels).sum(),
    )


def test_packed_through_peft_and_reference():
    model, _ = tiny_random_llama(seed=3)
    ids, attn, labels = _batch()
    expected = _padded_reference(model, ids, attn, labels)
    reference = ReferencePolicy(model)
    assert supports_padding_free(reference)
    with torch.no_grad():
        ref_logps, _ = labelled_token_logprobs(reference, ids, attn, labels)
    assert torch.allclose(ref_logps, expected, atol=1e-5)
    wrapped = apply_lora(model, r=2, alpha=4)
    assert supports_padding_free(wrapped)
    logps, _ = labelled_token_logprobs(wrapped, ids, attn, labels)
    assert torch.allclose(logps, expected, atol=1e-5)


def test_packing_refused_without_padding_or_with_holes():
    model, _ = tiny_random_llama(seed=3)
    ids, attn, _ = _batch()
    assert pack_batch(model, ids, torch.ones_like(attn)) is None  # nothing to remove
    holes = attn.clone()
    holes[0, 1] = 0
    assert pack_batch(model, ids, holes) is None  # a row whose real tokens are not contiguous


def test_packed_entropy_and_its_gradient_equal_the_padded_forward():
    model, _ = tiny_random_llama(seed=3)
    ids, attn, labels = _batch()
    logps, mask, entropy = labelled_token_logprobs_and_entropy(
        model, ids, attn, labels, with_entropy=True
    )
    assert entropy.shape == logps.shape
    assert torch.allclose(logps, _padded_reference(model, ids, attn, labels), atol=1e-5)
    padded = entropy_from_logits(model(input_ids=ids, attention_mask=attn).logits[:, :-1])
    assert torch.allclose(entropy[mask], padded[mask], atol=1e-5)
    assert bool((entropy[~mask] == 0).all())

    def packed_entropy():
        return labelled_token_logprobs_and_entropy(model, ids, attn, labels, with_entropy=True)[2][
            mask
        ].sum()

    def padded_entropy():
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
        return entropy_from_logits(logits)[mask].sum()

    assert_same_gradients(model, packed_entropy, padded_entropy)
