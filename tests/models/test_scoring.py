import sys
from pathlib import Path

import torch

from alignkit.models import apply_lora, tiny_random_llama
from alignkit.models.scoring import labelled_token_logprobs, supports_logits_to_keep

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grad_helpers import assert_same_gradients


def _batch():
    ids = torch.tensor([[5, 6, 7, 8, 9, 2], [5, 6, 7, 10, 2, 2]])
    labels = torch.tensor([[-100, -100, -100, 8, 9, 2], [-100, -100, -100, 10, 2, -100]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])
    return ids, mask, labels


def _reference(model, ids, mask, labels):
    logp = model(input_ids=ids, attention_mask=mask).logits[:, :-1].log_softmax(-1)
    targets = labels[:, 1:]
    keep = targets != -100
    out = logp.gather(2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return out * keep


def test_skipping_prompt_logits_changes_nothing():
    model, _ = tiny_random_llama(seed=2)
    ids, mask, labels = _batch()
    assert supports_logits_to_keep(model)
    logps, keep = labelled_token_logprobs(model, ids, mask, labels)
    assert logps.shape == keep.shape == (2, 5)
    assert torch.allclose(logps * keep, _reference(model, ids, mask, labels), atol=1e-5)


def test_gradients_match_the_full_projection():
    model, _ = tiny_random_llama(seed=2)
    ids, mask, labels = _batch()

    def fast():
        logps, keep = labelled_token_logprobs(model, ids, mask, labels)
        return (logps * keep).sum()

    assert_same_gradients(model, fast, lambda: _reference(model, ids, mask, labels).sum())


def test_works_through_peft():
    model, _ = tiny_random_llama(seed=2)
    ids, mask, labels = _batch()
    expected = _reference(model, ids, mask, labels)
    wrapped = apply_lora(model, r=2, alpha=4)
    assert supports_logits_to_keep(wrapped)
    logps, keep = labelled_token_logprobs(wrapped, ids, mask, labels)
    assert torch.allclose(logps * keep, expected, atol=1e-5)
