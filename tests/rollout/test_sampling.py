import torch

from alignkit.models.tiny import tiny_random_llama
from alignkit.rollout.sampling import (
    SamplingConfig,
    left_pad,
    response_mask_until_eos,
    sample,
)

PROMPTS = ["hello there, how are you?", "hi", [{"role": "user", "content": "2+2?"}]]


def test_left_pad_puts_tokens_on_the_right():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_token_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_response_mask_until_first_eos():
    ids = torch.tensor([[5, 2, 2, 2], [5, 6, 7, 8], [2, 9, 9, 9]])
    assert response_mask_until_eos(ids, eos_token_id=2).tolist() == [
        [1, 1, 0, 0],
        [1, 1, 1, 1],
        [1, 0, 0, 0],
    ]


def test_response_mask_drops_trailing_pad_when_pad_is_not_eos():
    ids = torch.tensor([[5, 6, 0, 0], [5, 2, 0, 0]])
    assert response_mask_until_eos(ids, eos_token_id=2, pad_token_id=0).tolist() == [
        [1, 1, 0, 0],
        [1, 1, 0, 0],
    ]


def test_deterministic_given_seed():
    model, tok = tiny_random_llama(seed=1)
    cfg = SamplingConfig(max_new_tokens=10, temperature=1.0)
    a = sample(model, tok, PROMPTS, cfg, seed=7)
    b = sample(model, tok, PROMPTS, cfg, seed=7)
    c = sample(model, tok, PROMPTS, cfg, seed=8)
    assert torch.equal(a.response_ids, b.response_ids)
    assert not torch.equal(a.response_ids, c.response_ids)


def test_shared_prefill_matches_separate_prompts_greedy():
    model, tok = tiny_random_llama(seed=1)
    cfg = SamplingConfig(max_new_tokens=12, do_sample=False)
    shared = sample(model, tok, PROMPTS, cfg, num_samples=3)
    repeated = sample(model, tok, [p for p in PROMPTS for _ in range(3)], cfg)
    assert shared.response_ids.shape[0] == 9
    assert torch.equal(shared.response_ids, repeated.response_ids)
    assert torch.equal(shared.prompt_ids, repeated.prompt_ids)


def test_batching_does_not_change_greedy_answers():
    model, tok = tiny_random_llama(seed=1)
    cfg = SamplingConfig(max_new_tokens=12, do_sample=False)
    together = sample(model, tok, PROMPTS, cfg)
    for i, prompt in enumerate(PROMPTS):
        alone = sample(model, tok, [prompt], cfg)
        assert together.texts[i] == alone.texts[0]


def test_model_mode_is_restored():
    model, tok = tiny_random_llama(seed=1)
    model.train()
    sample(model, tok, ["x"], SamplingConfig(max_new_tokens=2))
    assert model.training


def test_long_prompt_keeps_its_end():
    model, tok = tiny_random_llama(seed=1)
    out = sample(
        model, tok, ["x" * 50 + "END"], SamplingConfig(max_new_tokens=2), max_prompt_length=8
    )
    assert out.prompt_ids.shape[1] == 8
    assert tok.decode(out.prompt_ids[0]).endswith("END")


def test_min_new_tokens_holds_back_eos():
    model, tok = tiny_random_llama(seed=1)
    model.generation_config.eos_token_id = None
    # make EOS the likeliest token everywhere: without min_new_tokens every answer stops at once
    bias = torch.zeros(model.lm_head.out_features)
    bias[tok.eos_token_id] = 100.0
    model.lm_head.bias = torch.nn.Parameter(bias)
    free = sample(model, tok, PROMPTS, SamplingConfig(max_new_tokens=6), seed=3)
    assert free.response_mask.sum(1).tolist() == [1, 1, 1]
    held = sample(model, tok, PROMPTS, SamplingConfig(max_new_tokens=6, min_new_tokens=6), seed=3)
    assert held.response_mask.sum(1).tolist() == [6, 6, 6]
