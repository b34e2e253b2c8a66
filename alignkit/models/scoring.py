"""One forward pass of a causal LM turned into the log-probabilities of labelled tokens."""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F
from torch import nn

from alignkit.models.attention import packed_attention_kwargs
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


def _packable(attention_mask: torch.Tensor, mask: torch.Tensor) -> bool:
    """Padding to remove, each row's real tokens contiguous, every label on a real token."""
    if not bool(mask.any()) or not _padded_and_contiguous(attention_mask):
        return False
    real = attention_mask.bool()
    # position t predicts token t+1: both must be real
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


def _padded_and_contiguous(attention_mask: torch.Tensor) -> bool:
    """Some padding to remove, and each row's real tokens in one contiguous run."""
    real = attention_mask.bool()
    if bool(real.all()):
        return False
    starts = (real[:, 1:] & ~real[:, :-1]).sum(1) + real[:, 0].long()
    return not bool((starts > 1).any())


def can_pack(model: nn.Module, attention_mask: torch.Tensor) -> bool:
    """Whether a batch for this decoder (no LM head needed) can run as one packed row."""
    return _padded_and_contiguous(attention_mask) and packs_sequences(model)


def _padding_free_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Score a right/left-padded batch as ONE packed row of its real tokens.

    Position ids restart at 0 for each sequence and no attention mask is passed, so the model
    masks attention block-diagonally (no token attends across sequences) and no pad token
    goes through any layer. The vocabulary projection runs only on the positions that predict
    a label (`logits_to_keep` as an index tensor). Returns token log-probs [B, T-1].
    """
    packed_ids, position_ids, packed_index = pack_rows(input_ids, attention_mask)
    keep = packed_index[:, :-1][mask]  # packed positions that predict a label, row-major
    logits = model(
        input_ids=packed_ids,
        position_ids=position_ids,
        logits_to_keep=keep,
        use_cache=False,
        **packed_attention_kwargs(unwrap_model(model).config, position_ids),
    ).logits
    logps = token_logprobs(
        logits, targets[mask].unsqueeze(0), ignore_index=IGNORE_INDEX, temperature=temperature
    )[0]
    return logps.new_zeros(mask.shape).masked_scatter(mask, logps)


def labelled_token_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(y_t | y_<t) for every labelled token, in one forward pass.

    Returns `(token_logps [B, T-1], mask [B, T-1])`, where position t scores `input_ids[:, t+1]`
    and the mask is 1 where the label is not -100 (prompt and padding are 0).
    """
    logps, mask, _ = labelled_token_stats(
        model, input_ids, attention_mask, labels, temperature=temperature
    )
    return logps, mask


def labelled_token_stats(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Like :func:`labelled_token_logprobs`, plus the policy's entropy at each position
    (H(π(·|y_<t)) at temperature τ, [B, T-1], 0 before the first labelled column) when asked.

    The vocabulary projection is the most expensive layer of a small model (49,152 × 576
    for SmolLM2-135M) and prompts carry no labels, so the logits are only computed from the
    first position that predicts a label in any row onwards (`logits_to_keep`).

    Padding-free: when the batch is padded and the model allows it (Llama-family decoders,
    see :func:`supports_padding_free`), the real tokens of all rows are packed into one row
    with restarting position ids, so no pad token goes through the network, and the
    vocabulary projection runs only on the positions that predict a label (DPO pairs on the
    demo data: 35% of a padded batch is padding, and 1 position in 3 after the prompt
    predicts a label). Same values up to float rounding; the entropy path keeps the padded
    layout.
    """
    targets, mask = shifted_labels(labels)
    if not with_entropy and supports_padding_free(model) and _packable(attention_mask, mask):
        logps = _padding_free_logprobs(model, input_ids, attention_mask, targets, mask, temperature)
        return logps, mask, None
    width = targets.shape[1]
    labelled_columns = mask.any(dim=0)
    first = int(labelled_columns.float().argmax()) if bool(labelled_columns.any()) else width - 1
    kwargs = {}
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
