"""One forward pass of a causal LM turned into the log-probabilities of labelled tokens."""

from __future__ import annotations

import torch
from torch import nn

from alignkit.ops.logprobs import token_logprobs

IGNORE_INDEX = -100


def shifted_labels(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels aligned with the logits that predict them: logits[:, t] predicts labels[:, t+1]."""
    targets = labels[:, 1:]
    return targets, (targets != IGNORE_INDEX)


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
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    targets, mask = shifted_labels(labels)
    logps = token_logprobs(logits, targets, ignore_index=IGNORE_INDEX, temperature=temperature)
    return logps, mask
