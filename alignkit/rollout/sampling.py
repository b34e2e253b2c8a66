"""Batched sampling from a policy: left-padded prompts, KV cache, stop at EOS.

Prompts are prefilled once into a KV cache and decoded by alignkit's loop
(:mod:`alignkit.rollout.decoding`), all rows of the batch together; this module owns the
parts around it that alignment needs: left padding, the response mask, and determinism from
a seed.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignkit.data.records import Text
from alignkit.data.tokenization import encode_prompt, pad_sequences
from alignkit.host_memory import keep_freed_host_memory
from alignkit.rollout.decoding import (
    DECODE_DTYPES,
    CachedForward,
    DecodeStep,
    SamplingConfig,
    decode,
    prefill_positions,
)
from alignkit.rollout.llama_step import LlamaDecodeStep
from alignkit.rollout.prepacked import prepacked_linears


@dataclass
class Rollout:
    """Prompts (left-padded) and the responses sampled for them, as one batch."""

    prompt_ids: torch.Tensor  # [B, P], left-padded; with G samples per prompt, rows repeat G times
    prompt_mask: torch.Tensor  # [B, P]
    response_ids: torch.Tensor  # [B, R], right-padded with pad_token_id after EOS
    response_mask: torch.Tensor  # [B, R], 1 up to and including the EOS token
    texts: list[str]  # decoded responses, special tokens removed
    # with `keep_logits`: each response token's unshaped next-token logits [B, R, V]
    logits: torch.Tensor | None = None


def left_pad(seqs: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts left-padded for generation, and their attention mask."""
    length = max(len(s) for s in seqs)
    ids = pad_sequences(seqs, pad_token_id, length, left=True)
    mask = pad_sequences([[1] * len(s) for s in seqs], 0, length, left=True)
    return ids, mask


def response_mask_until_eos(
    response_ids: torch.Tensor, eos_token_id: int, pad_token_id: int | None = None
) -> torch.Tensor:
    """1 for every token up to and including the first EOS of each row, 0 after it.

    When pad differs from EOS, a row that stopped otherwise (a stop string) is padded by
    `generate`; its trailing pad run is masked out too.
    """
    is_eos = response_ids == eos_token_id
    # number of EOS tokens strictly before each position
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    mask = eos_before == 0
    if pad_token_id is not None and pad_token_id != eos_token_id:
        not_pad = (response_ids != pad_token_id).long()
        # positions at or before the last non-pad token of the row
        before_last = torch.flip(torch.cummax(torch.flip(not_pad, [1]), dim=1).values, [1])
        mask &= before_last.bool()
    return mask.long()


def _cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    cuts = [text.find(s) for s in stop_strings if s and s in text]
    return text[: min(cuts)] if cuts else text


@dataclass
class Prefilled:
    """Prompts run through the model once: their KV cache and last-position logits, ready
    to be decoded any number of times (greedy, sampled, G samples a prompt)."""

    prompt_ids: torch.Tensor  # [N, P], left-padded
    prompt_mask: torch.Tensor  # [N, P]
    cache: Any  # the model's KV cache of the prompts
    last_logits: torch.Tensor  # [N, V], the first new token's logits


@torch.no_grad()
def prefill(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Text],
    *,
    max_prompt_length: int | None = None,
    response_starts: Sequence[str] | None = None,
) -> Prefilled:
    """Encode `prompts` (strings or message lists), left-pad them and run them through
    `model` once. A prompt longer than `max_prompt_length` keeps its end. With
    `response_starts` (one text a prompt, "" for none) each response is made to open with
    that text: it is encoded after the prompt, and the sampled tokens continue it."""
    encoded = [encode_prompt(p, tokenizer) for p in prompts]
    if max_prompt_length is not None:
        encoded = [ids[-max_prompt_length:] for ids in encoded]
    if response_starts is not None:
        encoded = [
            ids + (tokenizer.encode(start, add_special_tokens=False) if start else [])
            for ids, start in zip(encoded, response_starts, strict=True)
        ]
    ids, mask = left_pad(encoded, tokenizer.pad_token_id)
    device = next(model.parameters()).device
    with _eval_mode(model):
        output = model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=prefill_positions(mask).to(device),
            use_cache=True,
            logits_to_keep=1,
        )
    return Prefilled(ids, mask, output.cache, output.logits[:, -1])


@torch.no_grad()
def sample_prefilled(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prefilled: Prefilled,
    config: SamplingConfig | None = None,
    *,
    num_samples: int = 1,
    seed: int | None = None,
    keep_logits: bool = False,
) -> Rollout:
    """`num_samples` responses per prefilled prompt, rows grouped by prompt (rows i·G ..
    i·G+G−1 answer prompt i). The G samples share the prompt's cache instead of each
    re-reading the prompt, and its last position gives every sample's first-token logits.
    Decoding is :func:`~alignkit.rollout.decoding.decode` (the configured temperature,
    top-k, top-p and `min_new_tokens`, nothing from the model's `generation_config`), each
    step :func:`decoding_step`'s. `prefilled` is left as it was. With `keep_logits` the
    rollout also holds each drawn token's unshaped logits (`Rollout.logits`)."""
    config = config or SamplingConfig()
    if prefilled.last_logits.device.type == "cpu":
        keep_freed_host_memory()  # each step's buffers reuse the last step's pages
    prompt_ids = prefilled.prompt_ids.repeat_interleave(num_samples, dim=0)
    prompt_mask = prefilled.prompt_mask.repeat_interleave(num_samples, dim=0)
    device = prefilled.last_logits.device
    stopped = _stop_string_check(tokenizer, config.stop_strings) if config.stop_strings else None
    first_logits = prefilled.last_logits.repeat_interleave(num_samples, dim=0)
    with (
        _eval_mode(model),
        torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
    ):
        if seed is not None:
            torch.manual_seed(seed)
        with decoding_step(
            model, prefilled.cache, prefilled.prompt_mask.to(device), config, num_samples
        ) as step:
            decoded = decode(
                step,
                first_logits,
                config,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                stopped=stopped,
                keep_logits=keep_logits,
            )
    response_ids = decoded.tokens.cpu()
    response_mask = response_mask_until_eos(
        response_ids, tokenizer.eos_token_id, tokenizer.pad_token_id
    )
    response_ids = response_ids.masked_fill(response_mask == 0, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(response_ids, skip_special_tokens=True)
    if config.stop_strings:
        texts = [_cut_at_stop(t, config.stop_strings) for t in texts]
    return Rollout(prompt_ids, prompt_mask, response_ids, response_mask, texts, decoded.logits)


def sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Text],
    config: SamplingConfig | None = None,
    *,
    num_samples: int = 1,
    seed: int | None = None,
    max_prompt_length: int | None = None,
    keep_logits: bool = False,
    response_starts: Sequence[str] | None = None,
) -> Rollout:
    """Sample `num_samples` responses per prompt (prompts are strings or message lists):
    :func:`prefill`, then :func:`sample_prefilled`. A prompt longer than
    `max_prompt_length` keeps its end; `response_starts` makes responses open with a text
    (the rollout's texts are what was sampled after it)."""
    prefilled = prefill(
        model,
        tokenizer,
        prompts,
        max_prompt_length=max_prompt_length,
        response_starts=response_starts,
    )
    return sample_prefilled(
        model,
        tokenizer,
        prefilled,
        config,
        num_samples=num_samples,
        seed=seed,
        keep_logits=keep_logits,
    )


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def decoding_step(
    model: PreTrainedModel,
    cache: Any,
    attention_mask: torch.Tensor,
    config: SamplingConfig,
    repeats: int = 1,
) -> Iterator[DecodeStep]:
    """The fastest exact decoding step for `model` continuing `cache` (prompts with
    `attention_mask`, each decoded `repeats` times): Llama-family decoders, LoRA adapters
    included, run :class:`~alignkit.rollout.llama_step.LlamaDecodeStep`; any other model
    its own forward over a copy of the cache, with its linear layers prepacked on the CPU
    (every decoding step multiplies one token per row by each weight matrix)."""
    if LlamaDecodeStep.supports(model):
        yield LlamaDecodeStep(
            model,
            cache,
            attention_mask,
            config.max_new_tokens,
            repeats=repeats,
            dtype=DECODE_DTYPES[config.dtype],
        )
        return
    cache = copy.deepcopy(cache)
    if repeats > 1:
        cache.batch_repeat_interleave(repeats)
    mask = attention_mask.repeat_interleave(repeats, dim=0)
    with prepacked_linears(model, rows=mask.shape[0]):
        yield CachedForward(model, cache, mask)


def _stop_string_check(tokenizer: PreTrainedTokenizerBase, stop_strings: Sequence[str]):
    """Rows whose response so far contains one of `stop_strings` (decoded text)."""
    wanted = [s for s in stop_strings if s]

    def stopped(tokens: torch.Tensor) -> torch.Tensor:
        texts = tokenizer.batch_decode(tokens.cpu(), skip_special_tokens=True)
        return torch.tensor([any(s in t for s in wanted) for t in texts], device=tokens.device)

    return stopped
