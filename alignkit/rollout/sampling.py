"""Batched sampling from a policy: left-padded prompts, KV cache, stop at EOS.

Prompts are prefilled once into a KV cache and decoded by alignkit's loop
(:mod:`alignkit.rollout.decoding`), all rows of the batch together; this module owns the
parts around it that alignment needs: left padding, the response mask, and determinism from
a seed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignkit.data.records import Text
from alignkit.data.tokenization import encode_prompt, pad_sequences
from alignkit.rollout.decoding import (
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


@torch.no_grad()
def sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Text],
    config: SamplingConfig | None = None,
    *,
    num_samples: int = 1,
    seed: int | None = None,
    max_prompt_length: int | None = None,
) -> Rollout:
    """Sample `num_samples` responses per prompt (prompts are strings or message lists).

    Rows of the result are grouped by prompt: rows i·G .. i·G+G−1 answer prompt i. The
    prompts are encoded and prefilled once each: the prefill fills the KV cache, which is
    then repeated G times, so the G samples share it instead of each re-reading the prompt,
    and its last position gives every sample's first-token logits. Decoding is
    :func:`~alignkit.rollout.decoding.decode` (the configured temperature, top-k, top-p and
    `min_new_tokens`, nothing from the model's `generation_config`). A prompt longer than
    `max_prompt_length` keeps its end. Each decoding step is :func:`decoding_step`'s: written
    out for Llama-family decoders, the model's own forward otherwise.
    """
    config = config or SamplingConfig()
    encoded = [encode_prompt(p, tokenizer) for p in prompts]
    if max_prompt_length is not None:
        encoded = [ids[-max_prompt_length:] for ids in encoded]
    unique_ids, unique_mask = left_pad(encoded, tokenizer.pad_token_id)
    prompt_ids = unique_ids.repeat_interleave(num_samples, dim=0)
    prompt_mask = unique_mask.repeat_interleave(num_samples, dim=0)
    device = next(model.parameters()).device
    stopped = _stop_string_check(tokenizer, config.stop_strings) if config.stop_strings else None
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            prefill = model(
                input_ids=unique_ids.to(device),
                attention_mask=unique_mask.to(device),
                position_ids=prefill_positions(unique_mask).to(device),
                use_cache=True,
                logits_to_keep=1,
            )
            cache = prefill.cache
            if num_samples > 1:
                cache.batch_repeat_interleave(num_samples)
            first_logits = prefill.logits[:, -1].repeat_interleave(num_samples, dim=0)
            with decoding_step(model, cache, prompt_mask.to(device), config) as step:
                response_ids = decode(
                    step,
                    first_logits,
                    config,
                    eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id,
                    stopped=stopped,
                ).cpu()
    finally:
        model.train(was_training)
    response_mask = response_mask_until_eos(
        response_ids, tokenizer.eos_token_id, tokenizer.pad_token_id
    )
    response_ids = response_ids.masked_fill(response_mask == 0, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(response_ids, skip_special_tokens=True)
    if config.stop_strings:
        texts = [_cut_at_stop(t, config.stop_strings) for t in texts]
    return Rollout(prompt_ids, prompt_mask, response_ids, response_mask, texts)


@contextlib.contextmanager
def decoding_step(
    model: PreTrainedModel, cache, attention_mask: torch.Tensor, config: SamplingConfig
) -> Iterator[DecodeStep]:
    """The fastest exact decoding step for `model`: Llama-family decoders run
    :class:`~alignkit.rollout.llama_step.LlamaDecodeStep`; any other model its own forward,
    with its linear layers prepacked for the batch on the CPU (every decoding step multiplies
    one token per row by each weight matrix)."""
    if LlamaDecodeStep.supports(model):
        yield LlamaDecodeStep(model, cache, attention_mask, config.max_new_tokens)
        return
    with prepacked_linears(model, rows=attention_mask.shape[0]):
        yield CachedForward(model, cache, attention_mask)


def _stop_string_check(tokenizer: PreTrainedTokenizerBase, stop_strings: Sequence[str]):
    """Rows whose response so far contains one of `stop_strings` (decoded text)."""
    wanted = [s for s in stop_strings if s]

    def stopped(tokens: torch.Tensor) -> torch.Tensor:
        texts = tokenizer.batch_decode(tokens.cpu(), skip_special_tokens=True)
        return torch.tensor([any(s in t for s in wanted) for t in texts], device=tokens.device)

    return stopped
