import sys
from pathlib import Path

import torch

from alignkit.models import ReferencePolicy, ScalarHeadModel, apply_lora, load_scalar_model
from alignkit.models.heads import last_token_index
from alignkit.models.tiny import tiny_random_llama

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grad_helpers import assert_same_gradients


def test_last_token_index_either_padding_side():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 3, 0]
    assert last_token_index(left).tolist() == [3, 3]


def test_score_ignores_padding():
    lm, _ = tiny_random_llama()
    rm = ScalarHeadModel.from_causal_lm(lm).eval()
    ids = torch.tensor([[5, 6, 7, 2, 2]])
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    padded = rm.score(ids, mask)
    alone = rm.score(ids[:, :3], mask[:, :3])
    assert torch.allclose(padded, alone, atol=1e-5)
    assert rm(ids, mask).shape == (1, 5) and rm(ids, mask).dtype == torch.float32


def test_scalar_head_save_load(tmp_path):
    lm, tok = tiny_random_llama()
    rm = ScalarHeadModel.from_causal_lm(lm)
    rm.metadata = {"reward_mean": 0.5}
    rm.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, tok2 = load_scalar_model(str(tmp_path))
    ids = torch.tensor([[3, 4, 5]])
    mask = torch.ones_like(ids)
    assert torch.allclose(rm.score(ids, mask), again.score(ids, mask), atol=1e-6)
    assert again.metadata == {"reward_mean": 0.5}
    assert len(tok2) == len(tok)


def test_reference_is_frozen_copy_without_lora():
    lm, _ = tiny_random_llama()
    ref = ReferencePolicy(lm)
    ids = torch.tensor([[3, 4, 5]])
    before = ref(input_ids=ids).logits.clone()
    with torch.no_grad():
        for p in lm.parameters():
            p.add_(0.1)
    assert torch.equal(ref(input_ids=ids).logits, before)
    assert not any(p.requires_grad for p in ref.model.parameters())


def test_reference_with_lora_is_adapter_disabled_base():
    lm, _ = tiny_random_llama()
    ids = torch.tensor([[3, 4, 5]])
    base_logits = lm(input_ids=ids).logits.detach().clone()
    policy = apply_lora(lm, r=4, alpha=8)
    ref = ReferencePolicy(policy)
    assert ref.shares_policy_weights
    # Move the adapter away from its zero init so policy and base differ.
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    assert not torch.allclose(policy(input_ids=ids).logits, base_logits)
    assert torch.allclose(ref(input_ids=ids).logits, base_logits, atol=1e-6)
    policy.train()
    ref(input_ids=ids)
    assert policy.training  # the reference pass restores the policy's mode


def test_load_weights_in_place(tmp_path):
    lm, _ = tiny_random_llama(seed=0)
    saved = ScalarHeadModel.from_causal_lm(lm)
    saved.save_pretrained(tmp_path)
    other = ScalarHeadModel.from_causal_lm(tiny_random_llama(seed=5)[0])
    ids = torch.tensor([[3, 4, 5]])
    mask = torch.ones_like(ids)
    assert not torch.allclose(saved.score(ids, mask), other.score(ids, mask))
    other.load_weights(tmp_path)
    assert torch.allclose(saved.score(ids, mask), other.score(ids, mask), atol=1e-6)


def test_fresh_head_depends_on_seed_not_on_global_rng():
    torch.manual_seed(1)
    a, _ = load_scalar_model("tiny-random-llama", seed=3)
    torch.manual_seed(2)
    b, _ = load_scalar_model("tiny-random-llama", seed=3)
    c, _ = load_scalar_model("tiny-random-llama", seed=4)
    assert torch.equal(a.head.weight, b.head.weight)
    assert not torch.equal(a.head.weight, c.head.weight)


def test_packed_scoring_matches_the_padded_forward_and_its_gradients():
    from alignkit.models.scoring import pack_batch

    lm, _ = tiny_random_llama(seed=4)
    rm = ScalarHeadModel.from_causal_lm(lm)
    ids = torch.tensor([[5, 6, 7, 8, 2], [9, 10, 2, 2, 2], [11, 12, 13, 2, 2]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    assert pack_batch(rm.backbone, ids, mask) is not None
    packed = rm.score(ids, mask)
    padded = rm(ids, mask).gather(1, last_token_index(mask).unsqueeze(1)).squeeze(1)
    assert torch.allclose(packed, padded, atol=1e-5)
    assert_same_gradients(
        rm,
        lambda: rm.score(ids, mask).sum(),
        lambda: rm(ids, mask).gather(1, last_token_index(mask).unsqueeze(1)).sum(),
    )
