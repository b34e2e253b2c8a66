"""How likely a model finds given responses to a prompt."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignkit.data.records import Text
from alignkit.data.tokenization import IGNORE_INDEX, encode_pair
from alignkit.models.scoring import labelled_token_logprobs


@dataclass
class ResponseLikelihood:
    response: Text
    logprob: float  # Σ_t log π(y_t | x, y_<t), including the end-of-turn token
    num_tokens: int

    @property
    def mean_logprob(self) -> float:
        return self.logprob / max(self.num_tokens, 1)


@torch.no_grad()
def response_likelihoods(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: Text,
    responses: Sequence[Text],
) -> list[ResponseLikelihood]:
    """Score each response to `prompt` with one batched forward pass."""
    rows = [encode_pair(prompt, response, tokenizer) for response in responses]
    length = max(len(p) + len(r) for p, r in rows)
    input_ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    attention_mask = torch.zeros_like(input_ids)
    for i, (p, r) in enumerate(rows):
        input_ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        labels[i, len(p) : len(p) + len(r)] = torch.tensor(r)
        attention_mask[i, : len(p) + len(r)] = 1
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        logps, mask = labelled_token_logprobs(
            model, input_ids.to(device), attention_mask.to(device), labels.to(device)
        )
    finally:
        model.train(was_training)
    sums = (logps * mask).sum(dim=1).tolist()
    counts = mask.sum(dim=1).tolist()
    return [
        ResponseLikelihood(resp, s, int(n))
        for resp, s, n in zip(responses, sums, counts, strict=True)
    ]
