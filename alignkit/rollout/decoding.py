"""The decoding loop: one token per row per step from the policy's KV cache.

alignkit samples with its own loop instead of transformers' `generate` so that what is drawn
is exactly the distribution the trainers score: the model's next-token logits shaped by the
configured temperature, top-k and top-p and by nothing else (no processors picked up from a
model's `generation_config`, such as a repetition penalty, which would make the samples
come from a policy other than π_θ). It also draws each token with one uniform number per
row (:func:`inverse_cdf_sample`) where `torch.multinomial` draws one exponential per
vocabulary entry, and feeds each prompt once: the prefill's last position gives the first
token's logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import LogitsProcessorList
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

DECODE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class SamplingConfig:
    """What `decode` draws: token budget, EOS hold-back, shaping, stop strings."""

    max_new_tokens: int = 64
    min_new_tokens: int = 0  # EOS is held back until this many tokens were sampled
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    do_sample: bool = True
    stop_strings: tuple[str, ...] = ()
    # "bfloat16": the written-out decoding step multiplies in bfloat16 (faster on CPUs with
    # AVX-512 BF16; the samples come from a slightly different distribution than float32's)
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in DECODE_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DECODE_DTYPES)}, got {self.dtype!r}")


CDF_BLOCK = 256  # vocabulary entries per block of the two-level inverse CDF


def inverse_cdf_sample(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """One index per row of `probs` [B, V], drawn with that row's probabilities.

    Inverse-transform sampling: with u ~ U[0, 1) and cumulative sums c_j = Σ_{i ≤ j} p_i,
    the index is the first j with c_j > u·c_V, which is j with probability p_j / Σp.
    One uniform number per row (`uniform` [B]) instead of one per vocabulary entry. The sums
    are taken in float64, so a 49k vocabulary loses no probability to rounding; an entry of
    probability 0 is never drawn.

    The search runs in two levels, which is the same draw: the blocks of `CDF_BLOCK`
    entries are summed (a vectorised sum, where a cumulative sum over 49k entries is one
    long sequential chain a row), the block whose cumulative total first exceeds u·c_V is
    found, and the index inside it by that block's own cumulative sums.
    """
    batch, vocab = probs.shape
    blocks = -(-vocab // CDF_BLOCK)
    if blocks * CDF_BLOCK != vocab:
        probs = torch.nn.functional.pad(probs, (0, blocks * CDF_BLOCK - vocab))
    probs = probs.view(batch, blocks, CDF_BLOCK)
    block_cdf = probs.sum(-1, dtype=torch.float64).cumsum(-1)  # [B, blocks]
    total = block_cdf[:, -1:]
    target = uniform.to(torch.float64).unsqueeze(-1) * total
    # u < 1, but u·total can round up to total: stay strictly below it
    target = torch.minimum(target, torch.nextafter(total, torch.zeros_like(total)))
    block = torch.searchsorted(block_cdf, target, right=True).clamp_(max=blocks - 1)  # [B, 1]
    before = torch.where(block > 0, block_cdf.gather(1, (block - 1).clamp(min=0)), 0.0)
    inner_probs = probs.gather(1, block.unsqueeze(-1).expand(-1, -1, CDF_BLOCK)).squeeze(1)
    inner_cdf = inner_probs.to(torch.float64).cumsum(-1)
    # the block's own sums can differ from its total in the last bit: stay inside it
    last = inner_cdf[:, -1:]
    inner_target = torch.minimum(target - before, torch.nextafter(last, torch.zeros_like(last)))
    inner = torch.searchsorted(inner_cdf, inner_target, right=True)
    return (block * CDF_BLOCK + inner).squeeze(-1)


def logits_shaper(temperature: float, top_k: int, top_p: float) -> LogitsProcessorList:
    """Temperature, then top-k (0: off), then top-p (1.0: off): the order `generate` uses."""
    shapers = LogitsProcessorList()
    if temperature != 1.0:
        shapers.append(TemperatureLogitsWarper(temperature))
    if top_k > 0:
        shapers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        shapers.append(TopPLogitsWarper(top_p))
    return shapers


def prefill_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch: 0 at each row's first real token (pads get 0)."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Each row's last prompt position [B, 1] under :func:`prefill_positions`; the next
    token goes one past it."""
    return attention_mask.long().sum(-1, keepdim=True) - 1


# the tokens just drawn [B] -> the logits of the next ones [B, V]
DecodeStep = Callable[[torch.Tensor], torch.Tensor]

# a decoding step may also offer `select(rows)`: keep only those rows from now on
COMPACT_FRACTION = 0.25  # drop finished rows once this share of the batch has finished


class CachedForward:
    """A decoding step through the model's own forward: one token per row appended to
    `cache`, which holds the prefilled prompts (left-padded, `attention_mask` [B, P])."""

    def __init__(self, model: torch.nn.Module, cache, attention_mask: torch.Tensor) -> None:
        self.model = model
        self.cache = cache
        self.attention_mask = attention_mask
        self.positions = last_positions(attention_mask)

    @torch.no_grad()
    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        mask = self.attention_mask
        self.attention_mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        self.positions = self.positions + 1
        output = self.model(
            input_ids=token.unsqueeze(1),
            attention_mask=self.attention_mask,
            position_ids=self.positions,
            cache=self.cache,
            use_cache=True,
        )
        return output.logits[:, -1]

    def select(self, rows: torch.Tensor) -> None:
        """Keep only `rows` of the batch (finished rows dropped)."""
        self.cache.batch_select_indices(rows)
        self.attention_mask = self.attention_mask[rows]
        self.positions = self.positions[rows]


@dataclass
class Decoded:
    """What `decode` drew: the new tokens [B, T] and, when asked, the unshaped next-token
    logits each one was drawn from [B, T, V] (float32; zeros after a row's end)."""

    tokens: torch.Tensor
    logits: torch.Tensor | None = None


@torch.no_grad()
def decode(
    step: DecodeStep,
    next_logits: torch.Tensor,
    config: SamplingConfig,
    *,
    eos_token_id: int | None,
    pad_token_id: int,
    stopped: Callable[[torch.Tensor], torch.Tensor] | None = None,
    keep_logits: bool = False,
) -> Decoded:
    """Up to `config.max_new_tokens` tokens per row, continuing from `next_logits` [B, V].

    `next_logits` is the model's output at each prompt's last position, and `step(tokens)`
    feeds the tokens just drawn [B] to the model and returns the next logits
    (:class:`CachedForward`, or :class:`~alignkit.rollout.llama_step.LlamaDecodeStep`). Each
    step draws one token per row (greedy when `config.do_sample` is False) after
    temperature, top-k and top-p, EOS is held back until `config.min_new_tokens` tokens
    were drawn, and a row is done after its EOS or when `stopped(tokens so far)` marks it
    (`config.stop_strings` are the caller's to check: they need the tokenizer); done rows
    get `pad_token_id` from then on, and the loop ends when every row is done. Returns the
    new tokens [B, T], T ≤ `max_new_tokens` (and their logits with `keep_logits`).

    Finished rows leave the batch: once a quarter of the rows still decoding are done, a
    step that offers `select(rows)` keeps only the others, so answers that end early stop
    costing compute. Random numbers come from torch's global generator, one uniform per row
    of the whole batch and step whether the row is still decoding or not, so which tokens
    are drawn does not depend on when rows leave.
    """
    if config.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {config.max_new_tokens}")
    batch = next_logits.shape[0]
    device = next_logits.device
    max_new_tokens, min_new_tokens = config.max_new_tokens, config.min_new_tokens
    do_sample = config.do_sample
    shapers = (
        logits_shaper(config.temperature, config.top_k, config.top_p)
        if do_sample
        else LogitsProcessorList()
    )
    can_select = hasattr(step, "select")
    tokens = torch.full((batch, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    kept = (
        next_logits.new_zeros(batch, max_new_tokens, next_logits.shape[-1], dtype=torch.float32)
        if keep_logits
        else None
    )
    rows = torch.arange(batch, device=device)  # the batch rows still in the step
    done = torch.zeros(batch, dtype=torch.bool, device=device)  # over `rows`
    finished_since_select = 0
    logits = next_logits
    drawn = 0
    for drawn in range(max_new_tokens):
        uniform = torch.rand(batch, device=device) if do_sample else None
        scores = logits.float()
        if kept is not None:
            kept[rows, drawn] = scores
        if eos_token_id is not None and drawn < min_new_tokens:
            if drawn == 0:
                scores = scores.clone()  # the caller's logits; the steps' own are fresh
            scores[:, eos_token_id] = -float("inf")
        if do_sample:
            scores = shapers(None, scores)
            probs = torch.softmax(scores, dim=-1)
            token = inverse_cdf_sample(probs, uniform[rows])
        else:
            token = scores.argmax(dim=-1)
        token = token.masked_fill(done, pad_token_id)
        tokens[rows, drawn] = token
        newly = torch.zeros_like(done)
        if eos_token_id is not None:
            newly |= token == eos_token_id
        if stopped is not None:
            newly |= stopped(tokens[:, : drawn + 1])[rows]
        newly &= ~done
        done |= newly
        finished_since_select += int(newly.sum())
        if bool(done.all()) or drawn == max_new_tokens - 1:
            break
        if can_select and finished_since_select >= max(1, COMPACT_FRACTION * rows.numel()):
            keep = (~done).nonzero().squeeze(-1)
            step.select(keep)
            rows, done, token = rows[keep], done[keep], token[keep]
            finished_since_select = 0
        logits = step(token)
    length = drawn + 1
    return Decoded(tokens[:, :length], None if kept is None else kept[:, :length])


__all__ = [
    "CachedForward",
    "DecodeStep",
    "Decoded",
    "SamplingConfig",
    "decode",
    "inverse_cdf_sample",
    "last_positions",
    "logits_shaper",
    "prefill_positions",
]
