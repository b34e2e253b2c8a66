"""The decoding loop: draws from exactly the shaped model distribution, matches `generate`."""

import torch

from alignkit.data.tokenization import encode_prompt
from alignkit.models.tiny import tiny_random_llama
from alignkit.rollout.decoding import CachedForward, decode, inverse_cdf_sample, prefill_positions
from alignkit.rollout.sampling import SamplingConfig, left_pad, sample

PROMPTS = ["hello there, how are you?", "hi", [{"role": "user", "content": "2+2?"}]]


def test_inverse_cdf_sample_draws_each_index_with_its_probability():
    torch.manual_seed(0)
    probs = torch.tensor([0.5, 0.0, 0.2, 0.3, 0.0]).repeat(40_000, 1)
    drawn = inverse_cdf_sample(probs, torch.rand(probs.shape[0]))
    freq = torch.bincount(drawn, minlength=5).float() / drawn.numel()
    assert torch.allclose(freq, probs[0], atol=0.01)
    assert freq[1] == 0 and freq[4] == 0  # probability 0: never drawn


def test_inverse_cdf_sample_edges_skip_zero_probability_entries():
    probs = torch.tensor([[0.0, 0.25, 0.0, 0.75, 0.0]] * 3)
    uniform = torch.tensor([0.0, 0.25, 1.0 - 2**-24])
    assert inverse_cdf_sample(probs, uniform).tolist() == [1, 3, 3]
    # unnormalised rows are drawn in proportion
    assert inverse_cdf_sample(probs * 7, uniform).tolist() == [1, 3, 3]


def first_token_probs(model, tok, prompt, temperature=1.0, top_k=0):
    ids = torch.tensor([encode_prompt(prompt, tok)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1] / temperature
    if top_k:
        kth = logits.topk(top_k).values[-1]
        logits = logits.masked_fill(logits < kth, -float("inf"))
    return torch.softmax(logits, -1)


def test_first_tokens_follow_the_shaped_model_distribution():
    model, tok = tiny_random_llama(seed=1)
    with torch.no_grad():  # a peaked distribution: a few tokens carry most of the mass
        model.lm_head.weight.mul_(6.0)
    n = 6000
    for temperature, top_k in [(1.0, 0), (0.7, 5)]:
        cfg = SamplingConfig(max_new_tokens=1, temperature=temperature, top_k=top_k)
        out = sample(model, tok, ["hello"], cfg, num_samples=n, seed=3)
        expected = first_token_probs(model, tok, "hello", temperature, top_k)
        freq = torch.bincount(out.response_ids[:, 0], minlength=expected.numel()).float() / n
        assert 0.5 * (freq - expected).abs().sum() < 0.05  # total variation
        if top_k:
            assert set(out.response_ids[:, 0].tolist()) <= set(
                expected.topk(top_k).indices.tolist()
            )


def test_greedy_answers_equal_transformers_generate():
    model, tok = tiny_random_llama(seed=1)
    model.eval()
    ours = sample(model, tok, PROMPTS, SamplingConfig(max_new_tokens=12, do_sample=False))
    ids, mask = left_pad([encode_prompt(p, tok) for p in PROMPTS], tok.pad_token_id)
    with torch.no_grad():
        theirs = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )[:, ids.shape[1] :]
    theirs = theirs.masked_fill(ours.response_mask[:, : theirs.shape[1]] == 0, tok.pad_token_id)
    assert torch.equal(ours.response_ids[:, : theirs.shape[1]], theirs)


def test_a_generation_config_penalty_does_not_change_the_samples():
    model, tok = tiny_random_llama(seed=1)
    cfg = SamplingConfig(max_new_tokens=10)
    plain = sample(model, tok, PROMPTS, cfg, seed=5)
    model.generation_config.repetition_penalty = 5.0
    model.generation_config.top_k = 3
    assert torch.equal(sample(model, tok, PROMPTS, cfg, seed=5).response_ids, plain.response_ids)


def test_stopped_rows_are_padded_and_the_loop_ends_when_all_are_done():
    model, tok = tiny_random_llama(seed=1)
    model.generation_config.eos_token_id = None
    ids, mask = left_pad([encode_prompt(p, tok) for p in PROMPTS[:2]], tok.pad_token_id)
    calls = []

    def stopped(tokens):  # row 0 after its 2nd token, row 1 after its 4th
        calls.append(tokens.shape[1])
        return torch.tensor([tokens.shape[1] >= 2, tokens.shape[1] >= 4])

    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=prefill_positions(mask))
        tokens = decode(
            CachedForward(model, out.cache, mask),
            out.logits[:, -1],
            SamplingConfig(max_new_tokens=10),
            eos_token_id=None,
            pad_token_id=tok.pad_token_id,
            stopped=stopped,
        ).tokens
    assert tokens.shape == (2, 4)
    assert (tokens[0, 2:] == tok.pad_token_id).all()
    assert calls == [1, 2, 3, 4]


def test_stop_strings_end_the_response():
    model, tok = tiny_random_llama(seed=1)
    free = sample(model, tok, ["hello"], SamplingConfig(max_new_tokens=16), seed=2).texts[0]
    stop = free[3:5]  # appears in the free answer: the stopped one ends before it
    cut = sample(
        model, tok, ["hello"], SamplingConfig(max_new_tokens=16, stop_strings=(stop,)), seed=2
    )
    assert stop not in cut.texts[0]
    assert free.startswith(cut.texts[0])
    assert int(cut.response_mask.sum()) < 16


def test_decode_leaves_the_callers_logits_alone():
    model, tok = tiny_random_llama(seed=1)
    ids, mask = left_pad([encode_prompt("hello", tok)], tok.pad_token_id)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=prefill_positions(mask))
    logits = out.logits[:, -1].clone()
    kept = logits.clone()
    decode(
        CachedForward(model, out.cache, mask),
        logits,
        SamplingConfig(max_new_tokens=2, min_new_tokens=2),  # EOS masked in both steps
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    assert torch.equal(logits, kept)
