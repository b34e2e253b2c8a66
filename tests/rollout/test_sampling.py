import pytest
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


def reference_sample(
    model,
    tok,
    prompts,
    *,
    max_new_tokens,
    min_new_tokens=0,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    num_samples=1,
    seed=0,
):
    """The plain sampler the fast one must equal: every row on its own, no padding, no
    cache, the whole sequence through the model at every step; one uniform per row of the
    batch and step from torch's generator; the index the first with float64 c_j > u·c_V."""
    from alignkit.data.tokenization import encode_prompt

    rows = [encode_prompt(p, tok) for p in prompts for _ in range(num_samples)]
    new = [[] for _ in rows]
    done = [False] * len(rows)
    torch.manual_seed(seed)
    for t in range(max_new_tokens):
        uniform = torch.rand(len(rows))
        for i, ids in enumerate(rows):
            if done[i]:
                continue
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids + new[i]])).logits[0, -1].double()
            if t < min_new_tokens:
                logits[tok.eos_token_id] = -float("inf")
            logits = logits / temperature
            if top_k:
                logits[logits < logits.topk(top_k).values[-1]] = -float("inf")
            if top_p < 1.0:
                order = logits.argsort(descending=True)
                probs = torch.softmax(logits[order], -1)
                drop = probs.cumsum(-1) - probs > top_p  # keep the smallest set past top_p
                logits[order[drop]] = -float("inf")
            cdf = torch.softmax(logits, -1).cumsum(-1)
            token = int(torch.searchsorted(cdf, uniform[i].double() * cdf[-1], right=True))
            new[i].append(min(token, len(cdf) - 1))
            done[i] = token == tok.eos_token_id
        if all(done):
            break
    return [r for r in new]


EXACT_CASES = {
    "plain": {},
    "min-new-tokens": {"min_new_tokens": 5},
    "top-k": {"top_k": 40, "temperature": 1.3},
    "top-p": {"top_p": 0.7},
    "g-samples": {"num_samples": 3},
}


@pytest.mark.parametrize("case", list(EXACT_CASES))
def test_fast_sampler_draws_the_plain_reference_samplers_tokens(case):
    model, tok = tiny_random_llama(seed=11)
    model.eval()
    # EOS likely enough that rows end at different steps (and leave the batch early)
    bias = torch.zeros(model.lm_head.out_features)
    bias[tok.eos_token_id] = 2.5
    model.lm_head.bias = torch.nn.Parameter(bias)
    options = EXACT_CASES[case]
    sampling = {k: v for k, v in options.items() if k != "num_samples"}
    cfg = SamplingConfig(max_new_tokens=12, **sampling)
    ours = sample(model, tok, PROMPTS, cfg, num_samples=options.get("num_samples", 1), seed=4)
    theirs = reference_sample(model, tok, PROMPTS, max_new_tokens=12, seed=4, **options)
    lengths = ours.response_mask.sum(1).tolist()
    assert [len(r) for r in theirs] == lengths
    assert len(set(lengths)) > 1  # rows ended at different steps
    for row, expected in enumerate(theirs):
        assert ours.response_ids[row, : lengths[row]].tolist() == expected


def test_kept_logits_match_the_training_forward():
    from alignkit.rollout.sequences import right_padded_sequences

    model, tok = tiny_random_llama(seed=11)
    rollout = sample(
        model,
        tok,
        PROMPTS,
        SamplingConfig(max_new_tokens=8),
        seed=1,
        num_samples=2,
        keep_logits=True,
    )
    seq = right_padded_sequences(rollout, tok.pad_token_id, tok.eos_token_id)
    with torch.no_grad():
        logits = model(input_ids=seq.input_ids, attention_mask=seq.attention_mask).logits
    for row in range(seq.input_ids.shape[0]):
        positions = (seq.labels[row] != -100).nonzero().squeeze(-1) - 1  # predicting each
        n = int(rollout.response_mask[row].sum())
        expected = torch.log_softmax(logits[row, positions], -1)
        got = torch.log_softmax(rollout.logits[row, :n], -1)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_a_response_start_is_fed_after_the_prompt_and_continued():
    model, tok = tiny_random_llama(seed=1)
    cfg = SamplingConfig(max_new_tokens=4, do_sample=False)
    opened = sample(model, tok, ["hi", "yo"], cfg, response_starts=["1. First,", ""])
    start = tok.encode("1. First,", add_special_tokens=False)
    assert opened.prompt_ids[0, -len(start) :].tolist() == start
    plain = sample(model, tok, ["yo"], cfg)
    assert opened.texts[1] == plain.texts[0]  # no start: as without one
