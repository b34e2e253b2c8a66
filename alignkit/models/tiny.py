"""Tiny random models for tests and quick tries: built from a config in well under a second.

The tokenizer is byte-level (256 byte tokens plus the ChatML specials), so it needs no
download and encodes any text; the chat template is the same ChatML the default model uses.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

TINY_MODEL_NAME = "tiny-random-llama"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer: ids 0..2 are the specials, then one id per byte."""
    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(_SPECIALS)}
    for ch in sorted(byte_alphabet):
        vocab[ch] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=_SPECIALS,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tiny_config(vocab_size: int = 259, **overrides) -> LlamaConfig:
    """A Llama-style config small enough to train in seconds on a CPU."""
    params = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    params.update(overrides)
    return LlamaConfig(**params)


def tiny_random_llama(
    seed: int = 0, **config_overrides
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A randomly initialised tiny Llama and its byte-level tokenizer, deterministic in `seed`."""
    tokenizer = tiny_tokenizer()
    config = tiny_config(vocab_size=len(tokenizer), **config_overrides)
    devices_rng = torch.random.fork_rng(devices=[])
    with devices_rng:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer
