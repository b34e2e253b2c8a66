"""A trained reward model r_ψ(x, y) as a reward function."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from alignkit.data.tokenization import encode_pair, truncate
from alignkit.models.heads import ScalarHeadModel
from alignkit.rewards.base import Prompt, RewardOutput, check_batch, single_part


class RewardModelScorer:
    """Scores prompt + response with a `ScalarHeadModel`, in batches, without gradients.

    Each pair is tokenized exactly as reward-model training tokenized it (`encode_pair`: the
    chat template for message-list prompts, ``prompt + response + eos`` for plain text), cut
    to ``max_length`` (the prompt keeps its end, the response loses its tail) and right-padded.
    The score is the head at the last real token. Rows are batched in order of length so a
    batch carries little padding; scores come back in the input order.
    """

    name = "reward_model"

    def __init__(
        self,
        model: ScalarHeadModel,
        tokenizer,
        *,
        batch_size: int = 8,
        max_length: int | None = None,
        name: str = "reward_model",
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model = model.eval()  # frozen during RL: no dropout, deterministic scores
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.name = name
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else (tokenizer.eos_token_id or 0)

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        *,
        batch_size: int = 8,
        max_length: int | None = None,
        dtype: str = "float32",
        device: str | torch.device | None = None,
        name: str = "reward_model",
    ) -> RewardModelScorer:
        """Load a folder written by `ScalarHeadModel.save_pretrained` (e.g. `alignkit rm`)."""
        from alignkit.models.heads import load_scalar_model

        model, tokenizer = load_scalar_model(str(path), kind="reward", dtype=dtype)
        if device is not None:
            model.to(device)
        return cls(model, tokenizer, batch_size=batch_size, max_length=max_length, name=name)

    def encode(self, prompt: Prompt, response: str) -> list[int]:
        """Token ids of prompt + response, truncated like training data."""
        return self.encode_with_prompt_length(prompt, response)[0]

    def encode_with_prompt_length(self, prompt: Prompt, response: str) -> tuple[list[int], int]:
        """`encode`'s ids and how many of them are the prompt's."""
        as_message = (
            response if isinstance(prompt, str) else [{"role": "assistant", "content": response}]
        )
        prompt_ids, response_ids = encode_pair(prompt, as_message, self.tokenizer)
        keep, max_response = truncate(prompt_ids, [len(response_ids)], self.max_length, None)
        return prompt_ids[len(prompt_ids) - keep :] + response_ids[:max_response], keep

    @torch.no_grad()
    def score_ids(
        self, sequences: Sequence[Sequence[int]], prompt_lengths: Sequence[int] | None = None
    ) -> torch.Tensor:
        """One score per token sequence, float32 [N] on the CPU. With `prompt_lengths`,
        rows that open with the same prompt are batched together and the network reads
        that prompt once (G samples of a prompt, several policies' answers to it)."""
        if prompt_lengths is None:
            order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]), reverse=True)
        else:
            order = sorted(
                range(len(sequences)),
                key=lambda i: (tuple(sequences[i][: prompt_lengths[i]]), -len(sequences[i])),
            )
        scores = torch.zeros(len(sequences), dtype=torch.float32)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            length = max(len(sequences[i]) for i in rows)
            input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
            for j, i in enumerate(rows):
                input_ids[j, : len(sequences[i])] = torch.as_tensor(sequences[i])
                attention_mask[j, : len(sequences[i])] = 1
            device = self.model.device
            shared = (
                None
                if prompt_lengths is None
                else torch.tensor([prompt_lengths[i] for i in rows], device=device)
            )
            batch_scores = self.model.score(
                input_ids.to(device), attention_mask.to(device), prompt_lengths=shared
            )
            scores[rows] = batch_scores.float().cpu()
        return scores

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> RewardOutput:
        check_batch(prompts, responses)
        encoded = [
            self.encode_with_prompt_length(p, r) for p, r in zip(prompts, responses, strict=True)
        ]
        sequences = [ids for ids, _ in encoded]
        return single_part(self.name, self.score_ids(sequences, [n for _, n in encoded]))
