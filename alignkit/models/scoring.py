"""One forward pass of a causal LM turned into the log-probabilities of labelled tokens."""

from __future__ import annotations

import functools
import inspect
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from alignkit.models.attention import packed_attention_kwargs, shared_prompt_attention_kwargs
from alignkit.ops.logprobs import entropy_from_logits, token_logprobs

IGNORE_INDEX = -100


def shifted_labels(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels aligned with the logits that predict them: logits[:, t] predicts labels[:, t+1]."""
    targets = labels[:, 1:]
    return targets, (targets != IGNORE_INDEX)


@functools.cache
def _forward_takes_logits_to_keep(model_class: type) -> bool:
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def unwrap_model(model: nn.Module) -> nn.Module:
    """The transformers model inside ReferencePolicy, DistributedDataParallel and PEFT
    wrappers."""
    inner = getattr(model, "network", model)  # ReferencePolicy
    inner = getattr(inner, "module", inner)  # DistributedDataParallel
    if hasattr(inner, "get_base_model"):  # peft.PeftModel
        inner = inner.get_base_model()
    return inner


def supports_logits_to_keep(model: nn.Module) -> bool:
    """Whether the (possibly DDP- or PEFT-wrapped) causal LM can skip the vocabulary
    projection for leading positions."""
    return _forward_takes_logits_to_keep(type(unwrap_model(model)))


# Decoders whose forward turns restarting `position_ids` (with no attention mask and no cache)
# into a block-diagonal causal mask (transformers' packed-sequence detection) and whose
# positions are rotary, so a sequence's scores do not depend on where it sits in a batch.
_PADDING_FREE_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def packs_sequences(model: nn.Module) -> bool:
    """Whether the (possibly DDP-, PEFT- or ReferencePolicy-wrapped) decoder or causal LM
    masks packed sequences block-diagonally from restarting position ids (rotary positions,
    transformers' packed-sequence detection)."""
    inner = unwrap_model(model)
    config = getattr(inner, "config", None)
    if getattr(config, "model_type", None) not in _PADDING_FREE_MODEL_TYPES:
        return False
    peft = getattr(model, "network", model)
    peft = getattr(peft, "module", peft)
    active = getattr(peft, "active_peft_config", None)
    # prompt learning prepends virtual tokens to every row
    return active is None or not getattr(active, "is_prompt_learning", False)


def supports_padding_free(model: nn.Module) -> bool:
    """Whether the causal LM can score a batch as one packed row: packed-sequence masking
    and logits_to_keep."""
    return packs_sequences(model) and supports_logits_to_keep(model)


def _labels_on_real_tokens(attention_mask: torch.Tensor, mask: torch.Tensor) -> bool:
    """Some label, and every label predicted from a real token: position t predicts token
    t+1, both must be real."""
    if not bool(mask.any()):
        return False
    real = attention_mask.bool()
    return not bool((mask & ~(real[:, :-1] & real[:, 1:])).any())


def pack_rows(
    input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The real tokens of a padded batch as one row [1, N], position ids restarting at 0 for
    each sequence [1, N], and where each (row, column) of the batch landed in it [B, T]
    (meaningful only where the attention mask is 1)."""
    real = attention_mask.bool()
    batch, length = real.shape
    packed_ids = input_ids[real].unsqueeze(0)
    position_ids = (real.long().cumsum(1) - 1)[real].unsqueeze(0)
    packed_index = real.flatten().long().cumsum(0).view(batch, length) - 1
    return packed_ids, position_ids, packed_index


def pack_shared_prompts(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[int, tuple[int, ...]]]] | None:
    """A batch as one packed row in which rows that open with the same prompt share it.

    Row b's first `prompt_lengths[b]` real tokens are its prompt. Rows with identical prompts
    (the chosen and rejected sequences of a preference pair, the G samples of a GRPO group,
    in any order) form a group laid out as prompt, response 1, response 2, ...; each
    response's position ids continue from the prompt (P, P+1, ...) as in its own row.
    Returns the packed ids [1, N], position ids [1, N], where each real (row, column) landed
    [B, T] (a later response's prompt columns point at the shared prompt), and per group
    (P, response lengths), which the attention needs so that each response sees the prompt
    and itself only. None when the rows are not contiguous or no two rows share a prompt.
    """
    real = attention_mask.bool()
    if not _contiguous(real):
        return None
    starts = real.long().argmax(1).tolist()
    lengths = real.sum(1).tolist()
    token_rows = input_ids.tolist()  # one device-to-host copy, not one per row
    groups: dict[tuple[int, ...], list[int]] = {}
    for row, prompt in enumerate(prompt_lengths.tolist()):
        if 0 < prompt <= lengths[row]:
            key = tuple(token_rows[row][starts[row] : starts[row] + prompt])
        else:
            key = (-1 - row,)
        groups.setdefault(key, []).append(row)
    if len(groups) == len(lengths):
        return None
    pieces, positions, segments = [], [], []
    index = torch.zeros_like(input_ids)
    offset = 0
    for key, rows in groups.items():
        prompt = len(key) if key[0] >= 0 else 0
        first = rows[0]
        pieces.append(input_ids[first, starts[first] : starts[first] + prompt])
        positions.append(torch.arange(prompt))
        shared_at, offset = offset, offset + prompt
        for row in rows:
            begin, n = starts[row], lengths[row] - prompt
            pieces.append(input_ids[row, begin + prompt : begin + lengths[row]])
            positions.append(torch.arange(prompt, lengths[row]))
            index[row, begin : begin + prompt] = torch.arange(shared_at, shared_at + prompt)
            index[row, begin + prompt : begin + lengths[row]] = torch.arange(offset, offset + n)
            offset += n
        segments.append((prompt, tuple(lengths[row] - prompt for row in rows)))
    packed_ids = torch.cat(pieces).unsqueeze(0)
    position_ids = torch.cat(positions).to(input_ids.device).unsqueeze(0)
    return packed_ids, position_ids, index, segments


def prompt_lengths_from_labels(attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Real tokens before each row's first label [B] (0 where the row has no label)."""
    labelled = labels != IGNORE_INDEX
    first = labelled.long().argmax(1)
    before = (
        attention_mask.bool()
        & (torch.arange(labels.shape[1], device=labels.device) < first[:, None])
    ).sum(1)
    return torch.where(labelled.any(1), before, 0)


class PackedBatch(NamedTuple):
    """A batch as one row of its real tokens, and the keywords the forward pass needs."""

    input_ids: torch.Tensor  # [1, N]
    position_ids: torch.Tensor  # [1, N]
    index: torch.Tensor  # [B, T]: where each real (row, column) of the batch landed
    forward_kwargs: dict[str, Any]


def pack_batch(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    prompt_lengths: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> PackedBatch | None:
    """The packed form of a batch for this decoder, or None when it should run padded.

    With `position_ids` [B, T] (rows that are blocks of several examples, the positions
    restarting at each: packed SFT), the real tokens run as one row with those positions
    and every example attends to itself only. With `prompt_lengths` [B] and an attention
    that can share prompts, rows that open with the same prompt run it through the network
    once (:func:`pack_shared_prompts`); otherwise a padded batch packs its real tokens
    (:func:`pack_rows`) and each sequence attends to itself only.
    """
    if not packs_sequences(model):
        return None
    config = unwrap_model(model).config
    if position_ids is not None:
        real = attention_mask.bool()
        if not _contiguous(real):
            return None
        packed_ids, _, index = pack_rows(input_ids, attention_mask)
        positions = position_ids[real].unsqueeze(0)
        return PackedBatch(packed_ids, positions, index, packed_attention_kwargs(config, positions))
    if prompt_lengths is not None:
        shared = pack_shared_prompts(input_ids, attention_mask, prompt_lengths.cpu())
        kwargs = shared_prompt_attention_kwargs(config, shared[3]) if shared else None
        if kwargs is not None:
            return PackedBatch(*shared[:3], kwargs)
    if not _padded_and_contiguous(attention_mask):
        return None
    packed_ids, position_ids, index = pack_rows(input_ids, attention_mask)
    return PackedBatch(
        packed_ids, position_ids, index, packed_attention_kwargs(config, position_ids)
    )


def _contiguous(real: torch.Tensor) -> bool:
    """Each row's real tokens in one run (padding only before or after)."""
    starts = (real[:, 1:] & ~real[:, :-1]).sum(1) + real[:, 0].long()
    return not bool((starts > 1).any())


def _padded_and_contiguous(attention_mask: torch.Tensor) -> bool:
    """Some padding to remove, and each row's real tokens in one contiguous run."""
    real = attention_mask.bool()
    return not bool(real.all()) and _contiguous(real)


def _padding_free_logprobs(
    model: nn.Module,
    packed: PackedBatch,
    targets: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Score a batch from its packed row (:func:`pack_batch`).

    No pad token goes through any layer and no token attends across sequences. The
    vocabulary projection runs only on the positions that predict a label (`logits_to_keep`
    as an index tensor; a shared prompt's last position predicts both responses' first
    token). Returns token log-probs [B, T-1] and, when asked, the entropy at those
    positions [B, T-1] (0 elsewhere).
    """
    keep = packed.index[:, :-1][mask]  # packed positions that predict a label, row-major
    logits = model(
        input_ids=packed.input_ids,
        position_ids=packed.position_ids,
        logits_to_keep=keep,
        use_cache=False,
        **packed.forward_kwargs,
    ).logits
    logps = token_logprobs(
        logits, targets[mask].unsqueeze(0), ignore_index=IGNORE_INDEX, temperature=temperature
    )[0]
    entropy = None
    if with_entropy:
        entropy = entropy_from_logits(logits, temperature=temperature)[0]
        entropy = entropy.new_zeros(mask.shape).masked_scatter(mask, entropy)
    return logps.new_zeros(mask.shape).masked_scatter(mask, logps), entropy


def labelled_token_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    position_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(y_t | y_<t) for every labelled token, in one forward pass.

    Returns `(token_logps [B, T-1], mask [B, T-1])`, where position t scores `input_ids[:, t+1]`
    and the mask is 1 where the label is not -100 (prompt and padding are 0). `position_ids`
    [B, T]: rows are blocks of several examples whose positions restart at each (packed SFT).
    """
    logps, mask, _ = labelled_token_logprobs_and_entropy(
        model, input_ids, attention_mask, labels, temperature=temperature, position_ids=position_ids
    )
    return logps, mask


def labelled_token_logprobs_and_entropy(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    position_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Like :func:`labelled_token_logprobs`, plus the policy's entropy when asked:
    H(π(·|y_<t)) at temperature τ, [B, T-1], meaningful where the mask is 1 (mask it).

    The vocabulary projection is the most expensive layer of a small model (49,152 × 576
    for SmolLM2-135M) and prompts carry no labels, so the logits are only computed from the
    first position that predicts a label in any row onwards (`logits_to_keep`).

    Padding-free: when the batch is padded and the model allows it (Llama-family decoders,
    see :func:`supports_padding_free`), the real tokens of all rows are packed into one row
    with restarting position ids, so no pad token goes through the network, and the
    vocabulary projection runs only on the positions that predict a label. Rows that open
    with the same prompt (the real tokens before their first label) hold it once in that
    row and their responses attend to it: a preference pair's two responses, a GRPO
    group's G samples. Same values up to float rounding.
    """
    targets, mask = shifted_labels(labels)
    packed = None
    if supports_logits_to_keep(model) and _labels_on_real_tokens(attention_mask, mask):
        if position_ids is None:
            prompts = prompt_lengths_from_labels(attention_mask, labels)
            packed = pack_batch(model, input_ids, attention_mask, prompt_lengths=prompts)
        else:
            packed = pack_batch(model, input_ids, attention_mask, position_ids=position_ids)
    if packed is not None:
        logps, entropy = _padding_free_logprobs(
            model, packed, targets, mask, temperature, with_entropy
        )
        return logps, mask, entropy
    width = targets.shape[1]
    labelled_columns = mask.any(dim=0)
    first = int(labelled_columns.float().argmax()) if bool(labelled_columns.any()) else width - 1
    kwargs = {} if position_ids is None else {"position_ids": position_ids}
    if first > 0 and supports_logits_to_keep(model):
        # keep positions first .. T-1; the last one predicts nothing and is dropped below
        kwargs["logits_to_keep"] = input_ids.shape[1] - first
    else:
        first = 0
    logits = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits[:, :-1]
    logps = token_logprobs(
        logits, targets[:, first:], ignore_index=IGNORE_INDEX, temperature=temperature
    )
    entropy = None
    if with_entropy:
        entropy = F.pad(entropy_from_logits(logits, temperature=temperature), (first, 0))
    return F.pad(logps, (first, 0)), mask, entropy
