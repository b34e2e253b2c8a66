"""Batched sampling from a policy: left-padded prompts, KV cache, stop at EOS.

Generation goes through transformers' `generate`, which keeps a KV cache and decodes all
rows of the batch together; this module owns the parts around it that alignment needs:
left padding, the response mask, and determinism from a seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignkit.data.records import Text
from alignkit.data.tokenization import encode_prompt


@dataclass
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    do_sample: bool = True


@dataclass
class Rollout:
    """Prompts (left-padded) and the responses sampled for them, as one batch."""

    prompt_ids: torch.Tensor  # [B, P], left-padded
    prompt_mask: torch.Tensor  # [B, P]
    response_ids: torch.Tensor  # [B, R], right-padded with pad_token_id after EOS
    response_mask: torch.Tensor  # [B, R], 1 up to and including the EOS token
    texts: list[str]  # decoded responses, special tokens removed


def left_pad(seqs: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, length - len(s) :] = torch.tensor(list(s), dtype=torch.long)
            mask[i, length - len(s) :] = 1
    return ids, mask


def response_mask_until_eos(response_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 for every token up to and including the first EOS of each row, 0 after it."""
    is_eos = response_ids == eos_token_id
    # number of EOS tokens strictly before each position
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    return (eos_before == 0).long()


@torch.no_grad()
def sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Text],
    config: SamplingConfig | None = None,
    *,
    seed: int | None = None,
) -> Rollout:
    """Sample one response per prompt (prompts are strings or message lists)."""
    config = config or SamplingConfig()
    encoded = [encode_prompt(p, tokenizer) for p in prompts]
    prompt_ids, prompt_mask = left_pad(encoded, tokenizer.pad_token_id)
    device = next(model.parameters()).device
    generator_kwargs = {}
    if config.do_sample:
        generator_kwargs = dict(
            temperature=config.temperature, top_p=config.top_p, top_k=config.top_k or None
        )
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        was_training = model.training
        model.eval()
        try:
            output = model.generate(
                input_ids=prompt_ids.to(device),
                attention_mask=prompt_mask.to(device),
                max_new_tokens=config.max_new_tokens,
                do_sample=config.do_sample,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **generator_kwargs,
            )
        finally:
            model.train(was_training)
    response_ids = output[:, prompt_ids.shape[1] :].cpu()
    response_mask = response_mask_until_eos(response_ids, tokenizer.eos_token_id)
    response_ids = response_ids.masked_fill(response_mask == 0, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(response_ids, skip_special_tokens=True)
    return Rollout(prompt_ids, prompt_mask, response_ids, response_mask, texts)
