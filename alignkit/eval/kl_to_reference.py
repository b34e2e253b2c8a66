"""KL(π ‖ π_ref) of a policy from its reference, measured on the policy's own samples."""

from __future__ import annotations

import torch
from torch import nn

from alignkit.data.tokenization import IGNORE_INDEX
from alignkit.ops.kl_estimators import kl_from_logits
from alignkit.rollout.sequences import Sequences


@torch.no_grad()
def sequence_kl(
    policy: nn.Module, reference: nn.Module, sequences: Sequences, *, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence, Σ_t KL(π(·|y_<t) ‖ π_ref(·|y_<t)) over the response's positions, and
    the response's token count ([N] each).

    With the responses sampled from π this is an unbiased estimate of each prompt's
    KL(π(·|x) ‖ π_ref(·|x)) (the chain rule), with the exact next-token KL at each position
    (:func:`~alignkit.ops.kl_estimators.kl_from_logits`) instead of a one-sample log-ratio.
    Both models must share the tokenizer."""
    kwargs = {"input_ids": sequences.input_ids, "attention_mask": sequences.attention_mask}
    logits = policy(**kwargs).logits[:, :-1]
    ref_logits = reference(**kwargs).logits[:, :-1]
    mask = sequences.labels[:, 1:] != IGNORE_INDEX
    per_position = kl_from_logits(logits, ref_logits, temperature=temperature)
    return (per_position * mask).sum(dim=1), mask.sum(dim=1)
