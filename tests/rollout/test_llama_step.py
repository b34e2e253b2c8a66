"""The written-out Llama decoding step: the model's own logits, for the decoders it covers."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

from alignkit.data.tokenization import encode_prompt
from alignkit.models.tiny import tiny_random_llama, tiny_tokenizer
from alignkit.rollout import llama_step
from alignkit.rollout.decoding import CachedForward, prefill_positions
from alignkit.rollout.llama_step import LlamaDecodeStep
from alignkit.rollout.sampling import SamplingConfig, left_pad, sample

PROMPTS = ["hello there, how are you?", "hi", "2+2?"]
SMALL = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def tiny_qwen2(**overrides):
    """Qwen2: Llama's layer plus biases on q, k and v (made non-zero here)."""
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), **{**SMALL, **overrides}))
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    return model, tok


def llama3_rope():
    rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0}
    rope |= {"low_freq_factor": 1.0, "high_freq_factor": 4.0}
    return tiny_random_llama(
        seed=3, rope_parameters={**rope, "original_max_position_embeddings": 16}
    )


def llama_with_biases():
    model, tok = tiny_random_llama(seed=5, attention_bias=True, mlp_bias=True)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0, 0.5)
    return model, tok


MODELS = {
    "llama": lambda: tiny_random_llama(seed=1),
    "llama-biases": llama_with_biases,
    "llama-no-gqa": lambda: tiny_random_llama(seed=2, num_key_value_heads=4),
    "llama3-rope-scaling": llama3_rope,
    "qwen2-biases": tiny_qwen2,
}


def prefill(model, tok, samples):
    ids, mask = left_pad([encode_prompt(p, tok) for p in PROMPTS], tok.pad_token_id)
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=prefill_positions(mask), use_cache=True
    )
    out.cache.batch_repeat_interleave(samples)
    return out.cache, mask.repeat_interleave(samples, dim=0)


@pytest.mark.parametrize("packed", [True, False], ids=["prepacked", "plain"])
@pytest.mark.parametrize("name", list(MODELS))
def test_logits_match_the_models_own_forward_step_by_step(name, packed, monkeypatch):
    if not packed:
        monkeypatch.setattr(llama_step, "prepacking_available", lambda model: False)
    model, tok = MODELS[name]()
    model.eval()
    assert LlamaDecodeStep.supports(model)
    steps, samples = 6, 2
    with torch.no_grad():
        cache, mask = prefill(model, tok, samples)
        theirs = CachedForward(model, cache, mask)
        cache, mask = prefill(model, tok, samples)
        ours = LlamaDecodeStep(model, cache, mask, max_new_tokens=steps)
        tokens = torch.randint(3, len(tok), (steps, mask.shape[0]), generator=torch.Generator())
        for token in tokens:
            expected, got = theirs(token), ours(token)
            assert got.shape == expected.shape
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_a_full_cache_is_an_error_not_a_silent_overwrite():
    model, tok = tiny_random_llama(seed=1)
    with torch.no_grad():
        cache, mask = prefill(model, tok, 1)
        step = LlamaDecodeStep(model, cache, mask, max_new_tokens=1)
        token = torch.full((mask.shape[0],), 5)
        step(token)
        with pytest.raises(RuntimeError, match="full"):
            step(token)


def test_only_decoders_of_exactly_this_shape_are_covered():
    llama, tok = tiny_random_llama(seed=1)
    assert LlamaDecodeStep.supports(llama)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2))
    assert not LlamaDecodeStep.supports(gpt2)
    sliding = tiny_qwen2(use_sliding_window=True, sliding_window=8, max_window_layers=0)[0]
    assert not LlamaDecodeStep.supports(sliding)
    lora = get_peft_model(tiny_random_llama(seed=1)[0], LoraConfig(r=2, target_modules=["q_proj"]))
    assert LlamaDecodeStep.supports(lora)  # LoRA layers are merged for decoding
    dora = LoraConfig(r=2, target_modules=["q_proj"], use_dora=True)
    assert not LlamaDecodeStep.supports(get_peft_model(tiny_random_llama(seed=1)[0], dora))


def test_sampling_takes_the_written_out_step_and_draws_the_same_tokens(monkeypatch):
    model, tok = tiny_random_llama(seed=4)
    cfg = SamplingConfig(max_new_tokens=10, do_sample=False)
    calls = []
    real_call = LlamaDecodeStep.__call__
    monkeypatch.setattr(
        LlamaDecodeStep, "__call__", lambda self, t: calls.append(1) or real_call(self, t)
    )
    ours = sample(model, tok, PROMPTS, cfg, num_samples=2)
    assert calls
    monkeypatch.setattr(LlamaDecodeStep, "supports", staticmethod(lambda model: False))
    theirs = sample(model, tok, PROMPTS, cfg, num_samples=2)
    assert torch.equal(ours.response_ids, theirs.response_ids)
    assert ours.texts == theirs.texts


def lora_model(seed=1):
    model, tok = tiny_random_llama(seed=seed)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:  # peft starts B at 0: make the adapter do something
                parameter.normal_(0, 0.3)
    return lora.eval(), tok


def compare_steps(model, tok, steps=5, samples=2, **step_options):
    with torch.no_grad():
        cache, mask = prefill(model, tok, samples)
        theirs = CachedForward(model, cache, mask)
        cache, mask = prefill(model, tok, 1)
        ours = LlamaDecodeStep(model, cache, mask, steps, repeats=samples, **step_options)
        tokens = torch.randint(3, len(tok), (steps, mask.shape[0] * samples))
        return [(ours(t), theirs(t)) for t in tokens]


@pytest.mark.parametrize("packed", [True, False], ids=["prepacked", "plain"])
def test_lora_adapters_are_merged_into_the_same_function(packed, monkeypatch):
    if not packed:
        monkeypatch.setattr(llama_step, "prepacking_available", lambda model: False)
    model, tok = lora_model()
    for got, expected in compare_steps(model, tok):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    with model.disable_adapter():  # the reference: the base weights alone
        for got, expected in compare_steps(model, tok):
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_selected_rows_continue_as_in_the_whole_batch():
    model, tok = tiny_random_llama(seed=1)
    with torch.no_grad():
        cache, mask = prefill(model, tok, 1)
        whole = LlamaDecodeStep(model, cache, mask, 4)
        part = LlamaDecodeStep(model, cache, mask, 4)
        first, second = torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10])
        whole(first), part(first)
        part.select(torch.tensor([0, 2]))
        torch.testing.assert_close(part(second[[0, 2]]), whole(second)[[0, 2]])


def test_bfloat16_step_stays_close_to_float32():
    model, tok = tiny_random_llama(seed=1)
    for got, expected in compare_steps(model, tok, dtype=torch.bfloat16):
        assert got.dtype == torch.float32
        assert (got - expected).abs().max() < 0.1 * expected.abs().max()


def test_an_optimizer_step_between_two_rollouts_is_seen_by_the_next_one():
    """torch's fused AdamW updates the weights in place without bumping their version
    counters: a rollout after it must decode the updated weights all the same."""
    model, tok = tiny_random_llama(seed=1)
    model.eval()
    compare_steps(model, tok)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)
    model(input_ids=torch.tensor([[5, 6, 7]])).logits.sum().backward()
    optimizer.step()
    for got, expected in compare_steps(model, tok):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_frozen_weights_are_prepared_once(monkeypatch):
    model, tok = tiny_random_llama(seed=1)
    prepared = []
    real = llama_step._prepare_weights
    monkeypatch.setattr(llama_step, "_prepare_weights", lambda *a: prepared.append(1) or real(*a))
    compare_steps(model, tok)
    compare_steps(model, tok)
    assert len(prepared) == 2  # weights may have changed between the two
    with llama_step.frozen_weights(model):
        compare_steps(model, tok)
        compare_steps(model, tok)
    assert len(prepared) == 3
