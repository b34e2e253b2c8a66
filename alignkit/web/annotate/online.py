"""The loop closed: consensus labels become DPO steps on the policy, as they arrive.

Every ``every`` new consensus pairs (items whose ``overlap`` labels are all in and agree
by strict majority on a or b), the learner runs ``steps`` passes of DPO over them on a
LoRA policy, with the adapter-free base as π_ref. The loss is the library's own:
``alignkit.train.dpo.dpo_batch_loss`` (which calls ``alignkit.ops.losses.dpo_loss``) on
batches made by the trainer's own tokenizer and collator, with the reference
log-probabilities precomputed by the trainer's ``precompute_reference_logps``.

For each trained pair the store keeps the margin log π(chosen) − log π(rejected) before
and after the update, so the page can show a labeller what their label did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from alignkit.data.records import PreferenceExample, Text
from alignkit.data.tokenization import tokenize_records
from alignkit.feedback.consensus import consensus
from alignkit.models.reference import ReferencePolicy
from alignkit.train.dpo import (
    DPOConfig,
    ReferenceAwareCollator,
    dpo_batch_loss,
    pair_logps,
    precompute_reference_logps,
)
from alignkit.web.store import Item, Store


@dataclass
class OnlineDPOSettings:
    """``serve --online-dpo`` options."""

    every: int = 8  # K: new consensus pairs per update
    steps: int = 2  # passes over those pairs per update
    beta: float = 0.1
    learning_rate: float = 5e-5
    batch_size: int = 4
    max_length: int = 512
    lora_r: int = 8
    max_grad_norm: float = 1.0


@dataclass(frozen=True)
class TrainingPair:
    item_id: int
    prompt: Text
    chosen: str
    rejected: str
    chosen_side: str  # "a" or "b"

    def record(self) -> PreferenceExample:
        """As the trainers read it: message lists stay message lists."""
        if isinstance(self.prompt, str):
            return PreferenceExample(self.prompt, self.chosen, self.rejected)
        as_message = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
        return PreferenceExample(self.prompt, as_message(self.chosen), as_message(self.rejected))


def new_consensus_pairs(store: Store, overlap_of: dict[int, int]) -> list[TrainingPair]:
    """Items fully labelled (``overlap`` labels) with a strict a/b majority, not yet trained."""
    labels = store.labels()
    per_item: dict[int, int] = {}
    for label in labels:
        per_item[label.item_id] = per_item.get(label.item_id, 0) + 1
    trained = store.trained_items()
    decided = consensus([label.as_feedback_label() for label in labels])
    pairs = []
    for item_key, side in decided.items():
        item_id = int(item_key)
        if item_id in trained:
            continue
        item = store.item(item_id)
        if per_item[item_id] < overlap_of.get(item.project_id, 1):
            continue
        pairs.append(_pair(item, side))
    return sorted(pairs, key=lambda pair: pair.item_id)


def _pair(item: Item, side: str) -> TrainingPair:
    chosen, rejected = (
        (item.answer_a, item.answer_b) if side == "a" else (item.answer_b, item.answer_a)
    )
    return TrainingPair(item.id, item.prompt, chosen, rejected, side)


class OnlineDPOLearner:
    """DPO steps on a LoRA policy, pair set by pair set (its optimiser state carries over)."""

    def __init__(self, policy: torch.nn.Module, tokenizer, settings: OnlineDPOSettings):
        self.policy = policy
        self.tokenizer = tokenizer
        self.settings = settings
        self.config = DPOConfig(beta=settings.beta, learning_rate=settings.learning_rate)
        self.collator = ReferenceAwareCollator(tokenizer.pad_token_id)
        self.reference = ReferencePolicy(policy)  # the policy with its adapter off
        trainable = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate)
        self.device = next(policy.parameters()).device

    def _features(self, pairs: Sequence[TrainingPair]) -> list[dict]:
        max_length = self.settings.max_length
        features = tokenize_records(
            [pair.record() for pair in pairs], self.tokenizer, max_length, max_length // 2
        )
        precompute_reference_logps(
            self.reference,
            features,
            self.collator,
            batch_size=self.settings.batch_size,
            average=False,
            device=self.device,
            desc="online reference log-probs",
        )
        return features

    def _batches(self, features: Sequence[dict]):
        size = self.settings.batch_size
        for start in range(0, len(features), size):
            batch = self.collator(features[start : start + size])
            yield {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    @torch.no_grad()
    def _evaluate(self, features: Sequence[dict]) -> tuple[float, list[float]]:
        """Mean DPO loss and each pair's margin log π(chosen) − log π(rejected)."""
        was_training = self.policy.training
        self.policy.eval()
        losses, margins = [], []
        for batch in self._batches(features):
            loss, _ = dpo_batch_loss(self.policy, batch, self.config)
            chosen, rejected = pair_logps(self.policy, batch)
            losses.append(loss.item() * len(chosen))
            margins.extend((chosen - rejected).tolist())
        self.policy.train(was_training)
        return sum(losses) / len(margins), margins

    def update(self, pairs: Sequence[TrainingPair]) -> dict:
        """``steps`` passes of DPO over ``pairs``; the loss and margins before and after."""
        features = self._features(pairs)
        loss_before, margins_before = self._evaluate(features)
        self.policy.train()
        steps = 0
        for _ in range(self.settings.steps):
            for batch in self._batches(features):
                loss, _ = dpo_batch_loss(self.policy, batch, self.config)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(
                    [p for p in self.policy.parameters() if p.requires_grad],
                    self.settings.max_grad_norm,
                )
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                steps += 1
        loss_after, margins_after = self._evaluate(features)
        return {
            "steps": steps,
            "loss_before": loss_before,
            "loss_after": loss_after,
            "moves": [
                (pair.item_id, pair.chosen_side, before, after)
                for pair, before, after in zip(pairs, margins_before, margins_after, strict=True)
            ],
        }

    def save(self, directory: Path) -> None:
        """The adapter (peft ``save_pretrained``) and tokenizer, for ``--model`` later."""
        directory.mkdir(parents=True, exist_ok=True)
        self.policy.save_pretrained(str(directory))
        self.tokenizer.save_pretrained(str(directory))
