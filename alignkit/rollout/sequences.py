"""Sampled responses re-packed for scoring: prompt + response in one right-padded row.

Generation left-pads the prompts so that every row's next token sits in the same column;
scoring wants each row to start at position 0, exactly as the model saw it while sampling,
with labels on the response tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignkit.data.tokenization import IGNORE_INDEX, pad_sequences
from alignkit.rollout.sampling import Rollout


@dataclass
class Sequences:
    """Prompts + sampled responses, right-padded, with labels on the response tokens only."""

    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    labels: torch.Tensor  # [B, T], -100 on prompt and padding
    response_lengths: torch.Tensor  # [B], tokens including EOS
    ended: torch.Tensor  # [B] bool, the response ended with EOS or a stop string

    def to(self, device: torch.device) -> Sequences:
        """The token tensors on `device` (lengths and `ended` stay where they are)."""
        return Sequences(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.labels.to(device),
            self.response_lengths,
            self.ended,
        )

    def select(self, rows: torch.Tensor) -> Sequences:
        """The given rows (a minibatch)."""
        return Sequences(
            self.input_ids[rows],
            self.attention_mask[rows],
            self.labels[rows],
            self.response_lengths[rows],
            self.ended[rows],
        )


def right_padded_sequences(rollout: Rollout, pad_token_id: int, eos_token_id: int) -> Sequences:
    """Re-pack left-padded prompts and their responses into right-padded sequences, so
    positions count from 0 in every row exactly as at generation time. A response ended if
    it stopped before the length limit (EOS or a stop string) or its last token is EOS."""
    rows, labels, lengths, ended = [], [], [], []
    for i in range(rollout.prompt_ids.shape[0]):
        prompt = rollout.prompt_ids[i][rollout.prompt_mask[i].bool()].tolist()
        n = int(rollout.response_mask[i].sum())
        response = rollout.response_ids[i, :n].tolist()
        rows.append(prompt + response)
        labels.append([IGNORE_INDEX] * len(prompt) + response)
        lengths.append(n)
        ended.append(n < rollout.response_ids.shape[1] or (n > 0 and response[-1] == eos_token_id))
    width = max(len(r) for r in rows)
    input_ids = pad_sequences(rows, pad_token_id, width)
    label_ids = pad_sequences(labels, IGNORE_INDEX, width)
    mask = pad_sequences([[1] * len(r) for r in rows], 0, width)
    return Sequences(
        input_ids, mask, label_ids, torch.tensor(lengths), torch.tensor(ended, dtype=torch.bool)
    )
