"""One forward pass of a causal LM turned into the log-probabilities of labelled tokens."""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F
from torch import nn

from alignkit.ops.logprobs import entropy_from_logits, token_logprobs

IGNORE_INDEX = -100


def shifted_labels(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels aligned with the logits that predict them: logits[:, t] predicts labels[:, t+1]."""
    targets = labels[:, 1:]
    return targets, (targets != IGNORE_INDEX)


@functools.cache
def _forward_takes_logits_to_keep(model_class: type) -> bool:
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def supports_logits_to_keep(model: nn.Module) -> bool:
    """Whether the (possibly DDP- or PEFT-wrapped) causal LM can skip the vocabulary
    projection for leading positions."""
    inner = getattr(model, "network", model)  # ReferencePolicy
    inner = getattr(inner, "module", inner)  # DistributedDataParallel
    if hasattr(inner, "get_base_model"):  # peft.PeftModel
        inner = inner.get_base_model()
    return _forward_takes_logits_to_keep(type(inner))


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
    """
    targets, mask = shifted_labels(labels)
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
