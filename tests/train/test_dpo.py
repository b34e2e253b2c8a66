import math

import pytest
import torch

from alignkit.data import PreferenceExample, tokenize_preference
from alignkit.models import ReferencePolicy, tiny_random_llama
from alignkit.train.dpo import (
    DPOConfig,
    ReferenceAwareCollator,
    dpo_batch_loss,
    pair_logps,
    precompute_reference_logps,
)

PAIRS = [
    PreferenceExample(prompt="2+2?", chosen="4.", rejected="I can't answer that."),
    PreferenceExample(prompt="Capital of France?", chosen="Paris.", rejected="Rome, Rome, Rome."),
    PreferenceExample(prompt="Say hi", chosen="Hi!", rejected="No."),
]


@pytest.fixture
def setup():
    model, tokenizer = tiny_random_llama(seed=3)
    features = [tokenize_preference(p, tokenizer, 128, 64) for p in PAIRS]
    return model, tokenizer, features, ReferenceAwareCollator(tokenizer.pad_token_id)


def test_concatenated_pass_equals_separate_passes(setup):
    model, _, features, collator = setup
    batch = collator(features)
    chosen, rejected = pair_logps(model, batch)
    for i, f in enumerate(features):
        for key, expected in (("chosen", chosen[i]), ("rejected", rejected[i])):
            ids = torch.tensor([f[f"{key}_input_ids"]])
            labels = torch.tensor([f[f"{key}_labels"]])
            logits = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
            target = labels[0, 1:]
            keep = target != -100
            direct = logits[keep].gather(1, target[keep, None]).sum()
            assert torch.allclose(expected, direct, atol=1e-4)


def test_loss_is_log2_at_start_with_precomputed_reference(setup):
    model, _, features, collator = setup
    precompute_reference_logps(
        model, features, collator, batch_size=2, average=False, device=torch.device("cpu")
    )
    batch = collator(features)
    assert batch["ref_chosen_logps"].shape == (3,)
    loss, metrics = dpo_batch_loss(model, batch, DPOConfig(dataset="x"))
    assert math.isclose(loss.item(), math.log(2), abs_tol=1e-5)
    assert abs(metrics["rewards/margins"].item()) < 1e-5


def test_precomputed_reference_equals_live_reference(setup):
    model, _, features, collator = setup
    reference = ReferencePolicy(model)
    with torch.no_grad():  # move the policy so policy != reference
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    live_loss, live = dpo_batch_loss(model, collator(features), DPOConfig(dataset="x"), reference)
    precompute_reference_logps(
        reference, features, collator, batch_size=3, average=False, device=torch.device("cpu")
    )
    pre_loss, pre = dpo_batch_loss(model, collator(features), DPOConfig(dataset="x"))
    assert torch.allclose(live_loss, pre_loss, atol=1e-5)
    assert not math.isclose(live_loss.item(), math.log(2), abs_tol=1e-4)
    assert torch.allclose(live["rewards/margins"], pre["rewards/margins"], atol=1e-5)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "simpo"])
def test_each_loss_type_gives_finite_loss_and_gradient(setup, loss_type):
    model, _, features, collator = setup
    cfg = DPOConfig(dataset="x", loss_type=loss_type)
    average = loss_type in ("ipo", "simpo")
    precompute_reference_logps(
        model, features, collator, batch_size=3, average=average, device=torch.device("cpu")
    )
    loss, metrics = dpo_batch_loss(model, collator(features), cfg)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() for g in grads)
    assert set(metrics) >= {
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
    }
