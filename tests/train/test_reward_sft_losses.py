import math

import torch

from alignkit.data import PreferenceCollator, PreferenceExample, tokenize_preference
from alignkit.models import ScalarHeadModel, tiny_random_llama
from alignkit.train.reward import RewardConfig, reward_batch_loss
from alignkit.train.sft import sft_batch_loss


def _pairs(tokenizer, margins=(None, None)):
    pairs = [
        PreferenceExample(prompt="a", chosen="good", rejected="bad", margin=margins[0]),
        PreferenceExample(prompt="b", chosen="fine", rejected="awful answer", margin=margins[1]),
    ]
    return PreferenceCollator(tokenizer.pad_token_id)(
        [tokenize_preference(p, tokenizer, 64) for p in pairs]
    )


def test_reward_loss_is_log2_with_a_zero_head():
    lm, tok = tiny_random_llama()
    rm = ScalarHeadModel.from_causal_lm(lm)
    torch.nn.init.zeros_(rm.head.weight)
    loss, metrics = reward_batch_loss(rm, _pairs(tok), RewardConfig(dataset="x"))
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-6)
    assert metrics["accuracy"].item() == 0.0  # ties count as wrong


def test_reward_margin_and_centering_enter_the_loss():
    lm, tok = tiny_random_llama()
    rm = ScalarHeadModel.from_causal_lm(lm)
    torch.nn.init.zeros_(rm.head.weight)
    with torch.no_grad():
        rm.head.bias.fill_(0.5)  # r_w = r_l = 0.5 for every sequence
    batch = _pairs(tok, margins=(1.0, None))
    plain, _ = reward_batch_loss(rm, batch, RewardConfig(dataset="x", use_margin=False))
    with_margin, _ = reward_batch_loss(rm, batch, RewardConfig(dataset="x"))
    expected = (-math.log(1 / (1 + math.exp(1.0))) + math.log(2)) / 2  # pair 1: −log σ(−1)
    assert math.isclose(plain.item(), math.log(2), rel_tol=1e-6)
    assert math.isclose(with_margin.item(), expected, rel_tol=1e-5)
    centered, _ = reward_batch_loss(
        rm, batch, RewardConfig(dataset="x", use_margin=False, center_rewards_coefficient=0.1)
    )
    assert math.isclose(centered.item(), math.log(2) + 0.1 * 1.0, rel_tol=1e-5)  # (0.5+0.5)²


def test_sft_loss_counts_only_completion_tokens():
    lm, _ = tiny_random_llama()
    ids = torch.tensor([[5, 6, 7, 8, 2]])
    labels = torch.tensor([[-100, -100, 7, 8, 2]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    loss, metrics = sft_batch_loss(lm, batch)
    logp = lm(input_ids=ids).logits[0, :-1].log_softmax(-1)
    expected = -(logp[1, 7] + logp[2, 8] + logp[3, 2]) / 3
    assert torch.allclose(loss, expected, atol=1e-5)
    assert metrics["num_tokens"].item() == 3
