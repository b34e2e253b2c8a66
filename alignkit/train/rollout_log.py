"""`rollouts.jsonl`: a few samples of an online run written token by token, so a person (or
the run dashboard) can see which tokens moved away from the reference and why a response
scored what it did."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

ROLLOUTS_FILE = "rollouts.jsonl"


def token_rows(
    tokenizer: PreTrainedTokenizerBase,
    labels: torch.Tensor,
    mask: torch.Tensor,
    **per_token: torch.Tensor,
) -> list[dict[str, Any]]:
    """One dict per response token of one row: its text and each named figure there.

    `labels` [T] is the row's labels; `mask` [T-1] and every figure [T-1] are indexed by the
    position that predicts the token (position t scores labels[t+1])."""
    positions = mask.nonzero().squeeze(1).tolist()
    token_ids = labels[1:][positions].tolist()
    return [
        {"token": tokenizer.decode([token_id])}
        | {name: float(values[p]) for name, values in per_token.items()}
        for token_id, p in zip(token_ids, positions, strict=True)
    ]


def append_rollouts(output_dir: str | Path, records: Sequence[dict[str, Any]]) -> None:
    """Append `records` to the run's rollouts.jsonl (call on the main process only)."""
    if not records:
        return
    with open(Path(output_dir) / ROLLOUTS_FILE, "a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
